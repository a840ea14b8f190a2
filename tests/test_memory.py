"""`tinytlc memory` (runtime/memory.py): a measurement that fails in its child process; several
artifacts measured in one process each get the figures a process of their own gives."""

import numpy as np
from conftest import NETS, TESTS

from tinytlc.pipeline import compile_model
from tinytlc.runtime.memory import measure, measure_all, step_peaks


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


def test_one_process_for_many_artifacts_measures_each_alone(tmp_path):
    """`tinytlc diff` measures all its rows in one process: an artifact measured after another must
    get the bytes it gets alone, in either order (a session left open, or counted, would show)."""
    plain = compile_model(f"{NETS}:small_net", "bias", tmp_path / "plain", resolution=32, batch_size=4, passes=[])
    lean = compile_model(f"{NETS}:small_net", "bias", tmp_path / "lean", resolution=32, batch_size=4)
    together = measure_all([plain.path, lean.path], steps=1)
    assert [r["method"] for r in together] == ["bias", "bias"] and all(r["step_seconds"] > 0 for r in together)
    peaks = [r["step_peak_bytes"] for r in together]
    assert peaks[1] < 0.8 * peaks[0]  # the two are told apart
    # within 1 KiB (CI saw 64 B apart: small allocations of the session); a session left open or
    # counted would add a whole step's hundreds of KiB
    np.testing.assert_allclose(step_peaks([lean.path, plain.path], steps=1), peaks[::-1], atol=1024, rtol=0)
    np.testing.assert_allclose(measure(lean.path, steps=1)["step_peak_bytes"], peaks[1], atol=1024, rtol=0)


def test_compiled_sessions_flush_denormals(tmp_path):
    """An artifact compiled with passes trains with denormals as zero (Swin's masked softmax makes
    1e-44s, on which the float units crawl); ORT's own graph keeps ORT's default. Checked where it
    counts, on the thread that runs the kernels: after opening the session, in a fresh process,
    that thread's numpy multiplies a denormal to zero or not."""
    import subprocess
    import sys
    probe = ("import sys, numpy as np; from tinytlc.pipeline import load_artifact; "
             "from tinytlc.runtime.session import open_session; a = load_artifact(sys.argv[1]); "
             "open_session(a.path, a.manifest, with_eval=False, with_optimizer=False); "
             "print(float(np.float32(1e-39) * np.float32(1)))")
    flushed = {}
    # (depthwise_kinds_net full carries NCHWc ops: its CPU check opens a probe session, after the artifact's)
    for label, net, method, passes in (("plain", "tiny_net", "bias", []), ("lean", "tiny_net", "bias", None),
                                       ("nchwc", "depthwise_kinds_net", "full", None)):
        art = compile_model(f"{NETS}:{net}", method, tmp_path / label, resolution=16, batch_size=2, passes=passes)
        out = subprocess.run([sys.executable, "-c", probe, str(art.path)], capture_output=True, text=True, check=True)
        flushed[label] = float(out.stdout.split()[-1]) == 0.0
    assert flushed == {"plain": False, "lean": True, "nchwc": True}
