"""`make bench` target checks: each reads the right rows and says met or MISSED with the figure."""

import json

from tinytlc.bench import main, speed_targets, targets


def row(method, variant, peak, seconds=1.0, total=None):
    return {"method": method, "variant": variant, "step_peak_bytes": peak, "step_seconds": seconds,
            "total_bytes": total if total is not None else peak + 10}


def test_targets_read_the_right_rows():
    lines = targets([row("bias", "plain", 400, 1.0), row("bias", "passes", 90, 0.7), row("last", "passes", 46),
                     row("full", "plain", 670, total=700), row("full", "passes", 700),
                     row("lite+bias", "passes", 95, total=121), row("lite+bias", "packed", 85, total=111)])
    text = "\n".join(lines)
    assert "[met] bias step peak <= 0.25 x bias without passes: 0.225" in text
    assert "[met] bias step peak <= 2 x last: 1.96x" in text
    assert "[MISSED] full step peak no worse with passes: 1.045x" in text
    assert "[MISSED] lite+bias total <= 1/6 of full without passes (default passes): 1/5.79" in text
    assert "[met] lite+bias total <= 1/6 of full without passes (with pack-masks): 1/6.31" in text


def test_speed_targets_read_the_right_ratios():
    rows = [{"method": "bias", "vs_eager": 0.79, "vs_forward": 3.2}, {"method": "lite+bias", "vs_eager": 0.81},
            {"method": "full", "vs_eager": 1.0}, {"method": "last", "vs_eager": 0.2}]
    assert speed_targets(rows) == ["[met] bias step <= 0.8x eager: 0.79x",
                                   "[MISSED] bias step <= 3x an inference forward: 3.20x",
                                   "[MISSED] lite+bias step <= 0.8x eager: 0.81x",
                                   "[met] full step <= 1.0x eager: 1.00x"]


def test_speed_bench_times_all_four_runtimes(tmp_path, capsys):
    """One round, one method, a small size: every runtime timed in its own process, memory beside."""
    out = tmp_path / "speed.json"
    assert main(["--speed", "--models", "mobilenetv2", "--methods", "bias", "--resolution", "32", "--rounds", "1",
                 "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["mobilenetv2"]
    for k in ("tinytlc", "plain", "eager", "forward"):
        assert len(row["seconds"][k]) == 1 and row[f"{k}_seconds"] > 0
    assert row["vs_eager"] == row["tinytlc_seconds"] / row["eager_seconds"]
    assert row["memory"]["tinytlc"]["total_bytes"] < row["memory"]["plain"]["total_bytes"]
    assert "bias step <= 0.8x eager" in capsys.readouterr().out


def test_speed_bench_on_your_own_module(tmp_path, capsys):
    """A file.py:function model: eager runs where the method has no lite modules; with them (placed on
    zoo models' blocks only) the row says so and keeps tinytlc against plain ORT."""
    from conftest import TESTS
    out = tmp_path / "speed.json"
    source = f"{TESTS}/families.py:resnet_basic"
    assert main(["--speed", "--models", source, "--methods", "lite+bias", "--resolution", "32", "--rounds", "1",
                 "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())[source]
    assert row["eager_seconds"] is None and row["vs_eager"] is None and row["memory"]["eager"] is None
    assert row["vs_plain"] == row["tinytlc_seconds"] / row["plain_seconds"]
    assert "no eager baseline (lite modules: zoo models only)" in capsys.readouterr().out


def test_a_model_that_does_not_load_is_one_line(tmp_path, capsys):
    """--families and --speed report a model they cannot compile as one line naming it, not a
    traceback (the memory table instead gives such a method a "not compiled" row and goes on)."""
    missing = str(tmp_path / "nets.py") + ":net"
    for mode in (["--families", missing], ["--speed", "--models", missing, "--methods", "bias"]):
        assert main([*mode, "--resolution", "32"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tinytlc: error: ") and "nets.py: no such file" in err and len(err.splitlines()) == 1
