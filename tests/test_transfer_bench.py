"""`tinytlc bench`: accuracy against measured memory, with the PyTorch eager baseline."""

import json

import numpy as np
import pytest
from conftest import TESTS

from tinytlc.methods import METHODS
from tinytlc.pipeline import compile_model

from tinytlc.data import random_resized_crop
from tinytlc.torch_baseline import eager_model, measure_torch


def test_random_resized_crop_stays_inside_and_varies():
    img = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    rng = np.random.default_rng(0)
    crops = [random_resized_crop(img, rng) for _ in range(20)]
    for c in crops:
        assert 0 < c.shape[0] <= 28 and 0 < c.shape[1] <= 28
        assert c.size >= 0.3 * img.size
    assert len({c.shape for c in crops}) > 3


def test_pytorch_baseline_trains_what_tinytlc_trains():
    """Eager bias-only trains the norm shifts and the classifier: as many parameters as tinytlc's
    bias method (the shifts become the biases of BN-folded convs)."""
    r = measure_torch("mobilenetv2", "bias", 32, 2)
    assert r["trainable_elements"] == 29_866  # `tinytlc compile mobilenetv2 --method bias --num-classes 10`
    assert r["step_peak_bytes"] > 0 and r["step_seconds"] > 0
    assert r["total_bytes"] == r["param_bytes"] + r["step_peak_bytes"]


@pytest.mark.parametrize("method", METHODS)
def test_eager_baseline_trains_as_many_parameters_as_tinytlc(tmp_path, method):
    """Every method's eager network (lite modules placed by the artifact's manifest) trains exactly
    as many elements as the compiled artifact."""
    art = compile_model("mobilenetv2", method, tmp_path / "a", num_classes=10, resolution=32, pretrained=False)
    _, lite, trainable = eager_model("mobilenetv2", method, 32, 10, art.manifest.get("lite_modules"))
    assert sum(p.numel() for p in trainable) == art.manifest["trainable_elements"]
    assert len(lite) == (16 if method.startswith("lite") else 0)


@pytest.mark.parametrize("family", ["resnet_basic", "convnext"])
@pytest.mark.parametrize("method", ["full", "last", "norm+last", "bias"])
def test_eager_baseline_of_your_own_module(tmp_path, family, method):
    """A file.py:function module (BatchNorm or LayerNorm, conv and linear biases) trains as many
    elements eagerly as tinytlc compiles for it."""
    source = f"{TESTS}/families.py:{family}"
    art = compile_model(source, method, tmp_path / "a", num_classes=10, resolution=32)
    _, lite, trainable = eager_model(source, method, 32, 10, None)
    assert sum(p.numel() for p in trainable) == art.manifest["trainable_elements"] and len(lite) == 0


def test_eager_lite_modules_need_a_zoo_model(tmp_path):
    from tinytlc.errors import TinyTLError
    from tinytlc.torch_baseline import has_baseline
    source = f"{TESTS}/families.py:resnet_basic"
    art = compile_model(source, "lite", tmp_path / "a", num_classes=10, resolution=32)
    assert not has_baseline(source, "lite") and has_baseline(source, "bias") and has_baseline("mobilenetv2", "lite")
    with pytest.raises(TinyTLError, match="zoo models only"):
        eager_model(source, "lite", 32, 10, art.manifest["lite_modules"])
    with pytest.raises(TinyTLError, match="neither a zoo model"):
        eager_model("resnet-9000", "bias", 32, 10, None)


def test_bench_writes_table_plot_and_json(tmp_path, cli):
    out = tmp_path / "results"
    code, stdout, err = cli("bench", "--model", "mobilenetv2", "--data", "synthetic:80", "--resolution", 32,
                            "--train-images", 0, "--few-shot", 2, "--val-images", 12, "--test-images", 16,
                            "--few-shot-epochs", 1, "--seeds", 2, "--methods", "last,lite+bias", "--out", out)
    assert code == 0, err
    report = json.loads((out / "benchmark.json").read_text())
    rows = [(r["setting"], r["method"], r["batch_size"]) for r in report["results"]]
    assert rows == [("few", "last", 8), ("few", "lite+bias", 8), ("few", "lite+bias", 1)]
    for r in report["results"]:
        assert len(r["accuracies"]) == 2 and r["accuracy"] == sum(r["accuracies"]) / 2
        assert {"0.001", "0.003", "0.01"} <= set(r["sweep"])  # (and further past an edge, if it helped)
        assert r["sweep"][f"{r['lr']:g}"] == max(r["sweep"].values())  # the best validation score chose it
        assert r["total_bytes"] > 0
    b1 = report["results"][-1]
    assert b1["step_peak_bytes"] < report["results"][1]["step_peak_bytes"]  # batch 1 takes less memory
    assert [b["method"] for b in report["pytorch_eager"]] == ["full", "bias"]
    assert "| few" in (out / "benchmark.md").read_text()
    assert (out / "accuracy_vs_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_protocol_never_chooses_on_the_test_images(monkeypatch):
    """The sweep scores on the validation split only; the test images are used by the final runs;
    validation and training images never overlap, and each seed draws its own training images."""
    from tinytlc import transfer_bench as tb
    from tinytlc.data import synthetic
    d = synthetic(300, 10)
    val, pool = tb.carve(d.train, 50)
    seen = []

    def fake_run(art, data, lr, epochs, batch_size, seed):
        seen.append((data.test is val, data.test is d.test, len(data.train), seed))
        return {0.001: 0.5, 0.003: 0.7, 0.01: 0.6}[lr] if data.test is val else 0.9 + seed / 100
    monkeypatch.setattr(tb, "_run", fake_run)
    r = tb.protocol(None, d.train, pool, val, d.test, d.classes, [0.001, 0.003, 0.01], 1, 8, 3,
                    {"per_class": 4}, log=lambda s: None)
    assert r["lr"] == 0.003 and r["accuracies"] == [0.9, 0.91, 0.92]
    assert [s[:2] for s in seen] == [(True, False)] * 3 + [(False, True)] * 3
    assert all(s[2] == 40 for s in seen)  # 4 images of each of the 10 classes
    val_images = {int(i) for i in np.random.default_rng(0).permutation(len(d.train))[:50]}
    assert not val_images & set(pool.tolist())
    a, b = (tb.draw(d.train, pool, s, per_class=4) for s in (0, 1))
    assert list(np.bincount(a.labels)) == [4] * 10
    assert [a.load(i).tobytes() for i in range(40)] != [b.load(i).tobytes() for i in range(40)]


def test_sweep_goes_past_an_edge_of_the_grid_while_it_improves(monkeypatch):
    from tinytlc import transfer_bench as tb
    from tinytlc.data import synthetic
    d = synthetic(100, 10)
    val, pool = tb.carve(d.train, 20)
    curve = {0.001: 0.5, 0.003: 0.6, 0.01: 0.7, 0.03: 0.8, 0.09: 0.75}  # best past the grid's top

    def fake_run(art, data, lr, epochs, batch_size, seed):
        return curve[round(lr, 6)] if data.test is val else 0.5
    monkeypatch.setattr(tb, "_run", fake_run)
    r = tb.protocol(None, d.train, pool, val, d.test, d.classes, [0.001, 0.003, 0.01], 1, 8, 1,
                    {"images": 30}, log=lambda s: None)
    assert [round(float(k), 6) for k in r["sweep"]] == [0.001, 0.003, 0.01, 0.03, 0.09] and round(r["lr"], 6) == 0.03
