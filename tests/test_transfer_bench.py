"""`tinytlc bench`: accuracy against measured memory, with the PyTorch eager baseline."""

import json

import numpy as np

from tinytlc.data import random_resized_crop
from tinytlc.torch_baseline import measure_torch


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


def test_bench_writes_table_plot_and_json(tmp_path, cli):
    out = tmp_path / "results"
    code, stdout, err = cli("bench", "--model", "mobilenetv2", "--data", "synthetic:48", "--resolution", 32,
                            "--train-images", 48, "--test-images", 16, "--epochs", 1, "--methods", "last,bias",
                            "--out", out)
    assert code == 0, err
    report = json.loads((out / "benchmark.json").read_text())
    assert [r["method"] for r in report["results"]] == ["last", "bias"]
    assert [b["method"] for b in report["pytorch_eager"]] == ["full", "bias"]
    assert "| bias" in (out / "benchmark.md").read_text()
    assert (out / "accuracy_vs_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
