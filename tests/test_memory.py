"""`tinytlc memory` (runtime/memory.py): a measurement that fails in its child process."""

from conftest import TESTS


def test_child_error_is_one_clean_line(tmp_path, cli):
    art = tmp_path / "a"
    code, _, err = cli("compile", f"{TESTS}/test_torch_baseline.py:tiny_net", "--method", "last", "--resolution", 16,
                       "--batch-size", 2, "--out", art)
    assert code == 0, err
    model = art / "training_model.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF  # the child's session finds it corrupt
    model.write_bytes(bytes(data))
    code, _, err = cli("memory", art)
    assert code == 2 and err.count("error:") == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("tinytlc: error: memory measurement failed: ") and "corrupt" in err, err
