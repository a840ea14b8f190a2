"""The Python API (`import tinytlc`): what the CLI does, with the same checks, from Python."""

import json
import math
import subprocess
import sys

import pytest

import tinytlc
from conftest import NETS


def quiet(_):
    pass


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A 3-class tiny_net artifact (bias, 16 px, batch 2), compiled once for this file."""
    out = tmp_path_factory.mktemp("api") / "art"
    return tinytlc.compile_model(f"{NETS}:tiny_net", "bias", str(out), num_classes=3, resolution=16, batch_size=2)


def test_compile_model_takes_a_module(tmp_path):
    import nets
    net = nets.tiny_net().train()
    art = tinytlc.compile_model(net, "bias", tmp_path / "m", num_classes=3, resolution=16, batch_size=2)
    assert net.training  # the user's module is left as it was given
    assert art.manifest["model"] == "Sequential" and "PyTorch module Sequential" in art.manifest["source"]
    record = tinytlc.train(art.path, art.manifest, tinytlc.load_data("synthetic:2", 3),
                           tinytlc.TrainConfig(batch_size=2), log=quiet)
    assert record["step"] == 1 and math.isfinite(record["history"][0]["train_loss"])


def test_compile_model_names_what_model_may_be(tmp_path):
    for model in (42, None, [f"{NETS}:tiny_net"]):
        with pytest.raises(tinytlc.TinyTLError, match="MODEL.*torch.nn.Module"):
            tinytlc.compile_model(model, "bias", tmp_path / "m", resolution=16)
    assert not (tmp_path / "m").exists()


def test_str_paths(artifact, tmp_path):
    path = str(artifact.path)
    assert tinytlc.load_artifact(path).manifest == artifact.manifest
    record = tinytlc.train(path, artifact.manifest, tinytlc.load_data("synthetic:4", 3),
                           tinytlc.TrainConfig(batch_size=2, restart=True), log=quiet)
    assert record["epoch"] == 1
    r = tinytlc.export_inference(path, artifact.manifest, str(tmp_path / "m.onnx"))
    assert r["path"] == str(tmp_path / "m.onnx") and (tmp_path / "m.onnx").is_file()


def test_evaluate_is_the_cli_eval(artifact, cli):
    code, out, _ = cli("eval", artifact.path, "--data", "synthetic:20", "--json")
    assert code == 0
    by_cli = json.loads(out)
    got = tinytlc.evaluate(str(artifact.path), "synthetic:20")
    assert got["images"] == by_cli["images"] and got["accuracy"] == by_cli["accuracy"]
    assert got["loss"] == pytest.approx(by_cli["loss"], rel=1e-6)
    # a Data object as train takes it: the same numbers
    got = tinytlc.evaluate(artifact.path, tinytlc.load_data("synthetic:20", 3))
    assert got["images"] == by_cli["images"] and got["loss"] == pytest.approx(by_cli["loss"], rel=1e-6)
    with pytest.raises(tinytlc.TinyTLError, match="--batch-size"):
        tinytlc.evaluate(artifact.path, "synthetic:20", batch_size=0)


@pytest.mark.parametrize("data_classes, cfg, message", [
    (5, {}, "--data has 5 classes, the model was compiled for 3 \\(compile with --num-classes 5\\)"),
    (3, {"lr": -1.0}, "--lr -1.0 is out of range \\(must be > 0 and <= 1\\)"),
    (3, {"lr": 0.0}, "--lr 0.0 is out of range"),
    (3, {"batch_size": 0}, "--batch-size 0 is out of range \\(must be >= 1\\)"),
    (3, {"epochs": 0}, "--epochs 0 is out of range"),
])
def test_train_checks_what_the_cli_checks(artifact, data_classes, cfg, message):
    data = tinytlc.load_data("synthetic:4", data_classes)
    with pytest.raises(tinytlc.TinyTLError, match=message):
        tinytlc.train(artifact.path, artifact.manifest, data,
                      tinytlc.TrainConfig(**{"batch_size": 2, "restart": True, **cfg}), log=quiet)


def test_api_is_documented_and_light():
    for name in ("compile_model", "load_artifact", "load_data", "train", "evaluate", "export_inference", "measure"):
        assert callable(getattr(tinytlc, name)) and getattr(tinytlc, name).__doc__, name
    code = "import sys, tinytlc; assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_load_data_takes_a_path(tmp_path):
    import numpy as np
    from PIL import Image
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((12, 12, 3), 60 * i + 20 * len(c), np.uint8)).save(tmp_path / c / f"{i}.png")
    by_path, by_str = tinytlc.load_data(tmp_path, 2), tinytlc.load_data(str(tmp_path), 2)
    assert by_path.classes == by_str.classes == ["cat", "dog"]
