"""Paper and exact accounting, rule by rule, on nets small enough to check by hand."""

import json

import pytest
from conftest import NETS

from tinytlc.accounting import analyze

# one_conv_net at 2x2 px, per sample: input 12 floats, conv/relu output 16, pooled 4, logits 2.
# Layer memory = input + output (+ stored so far): conv 48+64, relu 64+64 = 128 B, pool 64+16, ...


@pytest.mark.parametrize("method,params,peak,stored", [
    # last: frozen conv (12+4 at 8 bits), linear (8+2 at 32 bits); stores the linear's input (16 B)
    ("last", 16 + 40, 128, 16),
    # bias: conv weight 12 B, conv bias 16 B, linear 40 B; ReLU mask 16 bits = 2 B, linear input 16 B
    ("bias", 12 + 16 + 40, 128, 2 + 16),
    # full: all at 32 bits; conv input 48 B stored, so relu's layer peaks at 128 + 48
    ("full", 4 * (12 + 4 + 8 + 2), 128 + 48, 48 + 2 + 16),
])
def test_paper_rules_by_hand(method, params, peak, stored):
    r = analyze(f"{NETS}:one_conv_net", method, resolution=2, batch_size=4)
    assert r["param_bytes"] == params
    assert r["activation_bytes_per_sample"] == peak
    assert r["stored_bytes_per_sample"] == stored
    assert r["total_bytes"] == peak * 4 + params


def test_exact_keeps_what_a_frozen_scale_groupnorm_needs():
    """Bias-only training through a GroupNorm whose scale is frozen: the paper treats the norm as
    linear and stores nothing for it; an exact backward needs its normalised input (4x2x2 floats)."""
    paper = analyze(f"{NETS}:group_norm_written_net", "bias", resolution=2, accounting="paper")
    exact = analyze(f"{NETS}:group_norm_written_net", "bias", resolution=2, accounting="exact")
    assert exact["stored_bytes_per_sample"] - paper["stored_bytes_per_sample"] == 16 * 4
    assert "Div" not in paper["stored_by_op"] and exact["stored_by_op"]["Div"] == 64
    # frozen parameters: 8 bits in the paper's accounting, 32 in tinytlc's
    frozen = 12 + 4  # conv weight and norm scale (bias-only training trains the norm shift)
    assert exact["param_bytes"] - paper["param_bytes"] == frozen * 3


def test_residual_input_is_held():
    """residual_net at 2x2 px: the block input x (8 floats, 32 B) stays alive over the block, so the
    relu inside it peaks at 32 + 32 + 32 B, not at its own 64 B."""
    r = analyze(f"{NETS}:residual_net", "last", resolution=2)
    assert r["activation_bytes_per_sample"] == 96


def test_cli_json(cli):
    code, out, err = cli("analyze", f"{NETS}:one_conv_net", "--method", "bias", "--resolution", 2, "--batch-size", 4,
                         "--json")
    assert code == 0, err
    r = json.loads(out)
    assert {"param_bytes", "activation_bytes_per_sample", "total_bytes"} <= set(r)
    code, _, err = cli("analyze", f"{NETS}:one_conv_net", "--method", "bias", "--accounting", "napkin")
    assert code == 2 and "--accounting napkin" in err
