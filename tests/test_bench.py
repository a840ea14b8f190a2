"""`make bench` target checks: each reads the right rows and says met or MISSED with the figure."""

from tinytlc.bench import targets


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
