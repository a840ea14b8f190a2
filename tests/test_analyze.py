"""Paper and exact accounting, rule by rule, on nets small enough to check by hand; and the paper's
own figures (TinyTL, Table 2) and its profiler's rules on ProxylessNAS-Mobile."""

import json

import pytest
from conftest import NETS
from paper_profiler import paper_total

from tinytlc.accounting import analyze
from tinytlc.pipeline import forward_graph

# paper_rules_net at 2x2 px, per sample, in execution order (bytes):
#   conv1 1x1 3->4: temporary 48 in + 64 out;   BatchNorm: 64 in;   ReLU: 64 in (mask: 2)
#   depthwise 3x3 4->4: 64 in + 64 out / 4 groups;   GroupNorm (11 ONNX nodes, one layer): 64 in
#   ReLU6: 64 in (mask 2);   pool: nothing;   linear 4->2: 16 in + 8 out (its input: 16 stored)
# Parameters: conv1 12, BN 4+4, depthwise 36, GN 4+4, linear 8+2 = 74; trainable 4 B, frozen 1 B.


@pytest.mark.parametrize("method,params,peak,stored_by", [
    # only the classifier trains: no masks, the first conv's temporaries are the peak
    ("last", 64 + 4 * 10, 112, {"linear": 16}),
    # rule 4: `lite` stores the masks even where no module sits (this net has one block: no module)
    ("lite", 64 + 4 * 10, 112, {"relu": 4, "linear": 16}),
    # rule 7: the norm shifts train, no zero bias is added to a conv before a norm
    ("bias", 56 + 4 * 18, 112, {"relu": 4, "linear": 16}),
    # rule 3: the BatchNorm's scale trains, so it stores its input though nothing below it trains;
    # rule 2: ReLU6 layer = 64 in + stored 130 (BN 64, mask 2, GN 64); the GN counts its input once
    ("norm+last", 48 + 4 * 26, 64 + 130, {"norm": 128, "relu": 4, "linear": 16}),
    # rule 1: the depthwise conv stores its input (the ReLU's output) and the ReLU its mask: both count
    ("full", 4 * 74, 64 + 242, {"conv": 48 + 64, "norm": 128, "relu": 4, "linear": 16}),
])
def test_paper_rules_by_hand(method, params, peak, stored_by):
    r = analyze(f"{NETS}:paper_rules_net", method, resolution=2, batch_size=4)
    assert r["param_bytes"] == params
    assert r["activation_bytes_per_sample"] == peak
    assert r["stored_by"] == stored_by
    assert r["stored_bytes_per_sample"] == sum(stored_by.values())
    assert r["total_bytes"] == peak * 4 + params


def test_exact_keeps_what_a_frozen_scale_groupnorm_needs():
    """Bias-only training through a GroupNorm whose scale is frozen: the paper treats the norm as
    linear and stores nothing for it; an exact backward needs its normalised input (4x2x2 floats)."""
    paper = analyze(f"{NETS}:group_norm_written_net", "bias", resolution=2, accounting="paper")
    exact = analyze(f"{NETS}:group_norm_written_net", "bias", resolution=2, accounting="exact")
    assert exact["stored_bytes_per_sample"] - paper["stored_bytes_per_sample"] == 16 * 4
    assert "norm" not in paper["stored_by"] and exact["stored_by"]["Div"] == 64
    # frozen parameters: 8 bits in the paper's accounting, 32 in tinytlc's
    frozen = 12 + 4  # conv weight and norm scale (bias-only training trains the norm shift)
    assert exact["param_bytes"] - paper["param_bytes"] == frozen * 3


def test_residual_input_is_held():
    """residual_net at 2x2 px: the block input x (8 floats, 32 B) is held for the shortcut while the
    block runs, so the block's first conv peaks at 32 in + 32 out + 32 held (the stem: 48 + 32)."""
    r = analyze(f"{NETS}:residual_net", "last", resolution=2)
    assert r["activation_bytes_per_sample"] == 96


# TinyTL, Table 2 (ProxylessNAS-Mobile, GroupNorm, lite modules in the network, 224 px, batch 8,
# Flowers' 102 classes), and the breakdown the paper's profiler prints, in MB (10^6 bytes):
# (total, model size, activation peak per sample)
TABLE_2 = {"full": (390.8, 18.986, 46.48), "last": (30.8, 5.139, 3.211), "norm+last": (192.4, 5.264, 23.40),
           "bias": (31.7, 5.202, 3.312), "lite": (37.1, 10.588, 3.312), "lite+bias": (37.1, 10.634, 3.312)}


@pytest.mark.parametrize("method", list(TABLE_2))
def test_reproduces_table_2(method):
    r = analyze("proxylessnas-mobile", method, resolution=224, batch_size=8, num_classes=102, norm="group",
                lite_modules=True)
    total, size, act = TABLE_2[method]
    assert r["total_bytes"] / 1e6 == pytest.approx(total, rel=0.01)
    assert r["param_bytes"] / 1e6 == pytest.approx(size, abs=0.001)
    assert r["activation_bytes_per_sample"] / 1e6 == pytest.approx(act, abs=0.01)


@pytest.mark.parametrize("resolution,batch,norm,lite_modules", [(96, 1, "group", True), (320, 4, "batch", False)])
def test_matches_the_papers_profiler(resolution, batch, norm, lite_modules):
    """At settings the paper prints no figure for, with and without lite modules, with BatchNorm or
    GroupNorm: the same totals as the paper's profiler rules on the torch network (tests/paper_profiler.py)."""
    for method in TABLE_2:
        got = analyze("proxylessnas-mobile", method, resolution=resolution, batch_size=batch, num_classes=10,
                      norm=norm, lite_modules=lite_modules)["total_bytes"]
        want = paper_total(method, resolution, batch, 10, norm, lite_modules)
        assert got == pytest.approx(want, rel=1e-6), method


def _lite_report(resolution, **lite):
    from tinytlc.passes.forward import LiteOptions
    report = {}
    forward_graph("proxylessnas-mobile", "lite", 10, resolution, False, LiteOptions(**lite), report, norm="group")
    return report["lite_modules"]


def test_lite_kernels_are_fixed_by_the_128_px_reference():
    """Rule 6: the paper sizes kernels from a reference, so modules do not grow with the input:
    1,816,416 parameters at any resolution (4,746,500 - 2,930,174 in the paper's model sizes)."""
    for resolution in (96, 320):
        mods = _lite_report(resolution, crop=False)
        assert len(mods) == 19 and sum(m["params"] for m in mods) == 1_816_416
        assert [m["kernel"] for m in mods] == [5] * 15 + [3] * 4
    # compiled (crop on): at 96 px the last stage's 3x3 kernels meet 1x1 maps, so only their middle tap is made
    mods = _lite_report(96)
    assert [m["taps"] for m in mods] == [[5, 5]] * 15 + [[1, 1]] * 4
    assert sum(m["params"] for m in mods) < 1_816_416
    # by the real pooled size: 5x5 down to the last stage (at the paper's width: so large, those
    # modules would outweigh their blocks, and the budget would narrow them)
    real = _lite_report(320, reference=0, budget=0)
    assert [m["kernel"] for m in real] == [5] * 19 and sum(m["params"] for m in real) > 2_500_000


def test_bias_trains_norm_shifts_not_zero_biases_before_norms():
    """Rule 7, for the methods themselves: a conv that feeds a norm gets no zero bias; lite+bias
    keeps each module's final norm shift frozen (lite trains it)."""
    _, trainable, _, _ = forward_graph(f"{NETS}:paper_rules_net", "bias", None, 2, norm="batch")
    # conv1's bias is its folded BatchNorm's shift; the depthwise conv feeds the GroupNorm: none
    assert not any(n.startswith("3.") for n in trainable), trainable
    assert "4.bias" in trainable and "0.bias" in trainable and "8.bias" in trainable
    # nor do convs concatenated along channels before a norm; one concatenated along the height does
    mixed = forward_graph(f"{NETS}:mixed_conv_net", "bias", None, 8)[1]
    assert {n for n in mixed if n.startswith("0.")} == {"0.c.bias"}, mixed
    lite_bias = forward_graph(f"{NETS}:lite_net", "lite+bias", None, 8)[1]
    lite = forward_graph(f"{NETS}:lite_net", "lite", None, 8)[1]
    final = [n for n in lite if ".norm2.bias" in n]
    assert final and not set(final) & set(lite_bias)
    assert {n for n in lite if ".norm2.weight" in n} <= set(lite_bias)


def test_cli_json(cli):
    code, out, err = cli("analyze", f"{NETS}:one_conv_net", "--method", "bias", "--resolution", 2, "--batch-size", 4,
                         "--json")
    assert code == 0, err
    r = json.loads(out)
    assert {"param_bytes", "activation_bytes_per_sample", "total_bytes"} <= set(r)
    code, out, err = cli("analyze", f"{NETS}:lite_net", "--method", "bias", "--resolution", 8, "--lite-modules",
                         "--json")
    assert code == 0, err
    with_modules = json.loads(out)
    code, out, _ = cli("analyze", f"{NETS}:lite_net", "--method", "bias", "--resolution", 8, "--json")
    assert with_modules["lite_modules"] and with_modules["param_bytes"] > json.loads(out)["param_bytes"]
    code, _, err = cli("analyze", f"{NETS}:one_conv_net", "--method", "bias", "--accounting", "napkin")
    assert code == 2 and "--accounting napkin" in err
