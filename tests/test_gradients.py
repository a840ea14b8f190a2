"""One ORT training step (loss, logits, gradients) equals PyTorch autograd on the same batch, for
ORT's unmodified training graph and for the graph after tinytlc's memory passes."""

import numpy as np
import onnx_ir as ir
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import NETS
from nets import beit_net, bilstm_net, channels_last_net, conv_kinds_net, cosine_attention_net, grn_net, dense_net, resmlp_net, starrelu_net, gather_net, mixed_conv_net, odd_net, picks_net, pixel_patch_net, fusion_net, small_net, swinv2_net, wide_lite_net, windows_net

from tinytlc.pipeline import compile_model
from tinytlc.runtime.session import open_session

RES, BATCH = 15, 4  # odd size: stride-2 convs and pooling see odd inputs


def fold_all_bn(model: nn.Module) -> nn.Module:
    """What FoldBatchNormIntoConvPass does, done in torch: conv + BN -> conv with a bias."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return model


def torch_reference(method: str, build=small_net):
    model = build()
    if method in ("last", "bias"):
        model = fold_all_bn(model)
    named = dict(model.named_parameters())
    head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    if method == "full":
        train = set(named)
    elif method == "last":
        train = {f"{head}.weight", f"{head}.bias"}
    elif method == "norm+last":
        train = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) for n in (n + ".weight", n + ".bias")}
        train |= {f"{head}.weight", f"{head}.bias"}
    else:
        train = {n for n in named if n.endswith(".bias")} | {f"{head}.weight"}
    for n, p in named.items():
        p.requires_grad_(n in train)
    return model, train


def ort_step(art, x, y, smoothing):
    sess = open_session(art.path, art.manifest, with_eval=False, with_optimizer=False)
    sess.module.train()
    loss, logits = sess.module(*sess.feeds(x, y, smoothing))
    return loss, logits, {n: sess.state.parameters[n].grad.copy() for n in art.manifest["trainable"]}


def assert_same_step(plain, other, seed, logits_rtol, grad_atol, batch=BATCH, res=RES) -> dict:
    """One training step of `other` on a random batch equals ORT's own graph `plain` (logits and
    every gradient); returns the reference gradients."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, res, res), dtype=np.float32)
    y = rng.integers(0, 3, batch)
    _, ref_logits, ref = ort_step(plain, x, y, 0.0)
    _, logits, got = ort_step(other, x, y, 0.0)
    np.testing.assert_allclose(logits, ref_logits, rtol=logits_rtol, atol=1e-6)
    assert set(got) == set(ref)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=grad_atol, err_msg=name)
    return ref


def plain_without_lean(tmp_path, net: str, method: str, left_out: tuple[str, ...]):
    """`net` compiled three ways: ORT's own graph, the default passes but `left_out`, all of them."""
    from tinytlc.passes.training import DEFAULT_PASSES
    build = dict(resolution=RES, batch_size=BATCH)
    return (compile_model(f"{NETS}:{net}", method, tmp_path / "plain", passes=[], **build),
            compile_model(f"{NETS}:{net}", method, tmp_path / "without",
                          passes=[p for p in DEFAULT_PASSES if p not in left_out], **build),
            compile_model(f"{NETS}:{net}", method, tmp_path / "lean", **build))


@pytest.mark.parametrize("net,method,smoothing", [
    ("small_net", "full", 0.0), ("small_net", "full", 0.1), ("small_net", "last", 0.0),
    ("small_net", "norm+last", 0.0), ("small_net", "bias", 0.0), ("small_net", "bias", 0.2),
    ("odd_net", "full", 0.0), ("odd_net", "bias", 0.0), ("wide_lite_net", "bias", 0.0),
    ("wide_lite_net", "full", 0.0), ("dense_net", "bias", 0.0), ("dense_net", "full", 0.0),
    ("gather_net", "full", 0.0), ("conv_kinds_net", "full", 0.0), ("windows_net", "full", 0.0),
    ("fusion_net", "full", 0.0), ("fusion_net", "bias", 0.0), ("mixed_conv_net", "bias", 0.0),
    ("picks_net", "full", 0.0), ("picks_net", "bias", 0.0), ("beit_net", "bias", 0.0),
    ("grn_net", "bias", 0.0), ("bilstm_net", "full", 0.0), ("bilstm_net", "last", 0.0),
    ("resmlp_net", "norm+last", 0.0), ("resmlp_net", "bias", 0.0), ("starrelu_net", "bias", 0.0),
    ("cosine_attention_net", "norm+last", 0.0), ("cosine_attention_net", "bias", 0.0), ("swinv2_net", "full", 0.0),
    ("pixel_patch_net", "full", 0.0)])
def test_one_step_matches_torch_autograd(tmp_path, monkeypatch, net, method, smoothing):
    if net == "gather_net":  # at RES px every gathered copy outgrows the image: lift that rule here
        monkeypatch.setattr("tinytlc.passes.training.gather_conv.image_bytes", lambda graph: None)
    plain = compile_model(f"{NETS}:{net}", method, tmp_path / "plain", resolution=RES, batch_size=BATCH,
                          passes=[])
    lean = compile_model(f"{NETS}:{net}", method, tmp_path / "lean", resolution=RES, batch_size=BATCH)
    assert lean.manifest["passes"], "compile runs the memory passes by default"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, 3, RES, RES), dtype=np.float32)
    y = rng.integers(0, 3, BATCH)

    model, train = torch_reference(method, {"small_net": small_net, "odd_net": odd_net, "wide_lite_net": wide_lite_net,
                                      "dense_net": dense_net, "gather_net": gather_net,
                                      "conv_kinds_net": conv_kinds_net, "windows_net": windows_net, "fusion_net": fusion_net,
                                      "mixed_conv_net": mixed_conv_net, "picks_net": picks_net,
                                      "beit_net": beit_net, "grn_net": grn_net, "bilstm_net": bilstm_net,
                                      "resmlp_net": resmlp_net, "starrelu_net": starrelu_net,
                                      "cosine_attention_net": cosine_attention_net, "swinv2_net": swinv2_net,
                                      "pixel_patch_net": pixel_patch_net}[net])
    if net == "mixed_conv_net":  # the conv concatenated along the height feeds no norm: add-zero-bias gives it one
        model[0].c.bias = nn.Parameter(torch.zeros(2))
        train = train | {"0.c.bias"}
    if net == "grn_net":  # GRN's shift is a norm's shift
        model[1].grn_bias.requires_grad_(True)
        train = train | {"1.grn_bias"}
    if net == "resmlp_net":  # every Affine is a norm, the blocks' too (their input is also the residual's)
        affines = [n for n, m in model.named_modules() if type(m).__name__ == "_Affine"]
        train = train | {f"{a}.{p}" for a in affines for p in ("alpha", "beta") if method == "norm+last" or p == "beta"}
        for name, p in model.named_parameters():
            p.requires_grad_(name in train)
    if net == "cosine_attention_net" and method == "norm+last":  # its LayerNorm; not the attention's scale or bias
        model.norm.weight.requires_grad_(True), model.norm.bias.requires_grad_(True)
        train = train | {"norm.weight", "norm.bias"}
    if net == "beit_net":  # the qkv bias is concatenated from two parameters and a zero buffer
        model.attn.q_bias.requires_grad_(True), model.attn.v_bias.requires_grad_(True)
        train = train | {"attn.q_bias", "attn.v_bias"}
    assert set(plain.manifest["trainable"]) == train == set(lean.manifest["trainable"])
    logits_t = model(torch.from_numpy(x))
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(y), label_smoothing=smoothing)
    loss_t.backward()
    params = dict(model.named_parameters())

    ref_loss, ref_logits, ref_grads = ort_step(plain, x, y, smoothing)
    for art in (plain, lean):
        loss, logits, grads = ort_step(art, x, y, smoothing)
        np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-5)
        for name in train:
            np.testing.assert_allclose(grads[name], params[name].grad.numpy(), rtol=1e-4, atol=1e-6,
                                       err_msg=f"{method} {art.manifest['passes']}: gradient of {name} vs torch")
            np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{method} {art.manifest['passes']}: gradient of {name} vs plain ORT")


def test_gathers_of_one_index_become_slices_and_splits(tmp_path):
    """gather-as-slice: q, k, v picked from one tensor become a Split, a class token and a last row
    Slices; a parameter's row keeps its Gather. ORT's own graph keeps every Gather (GatherGrad)."""
    import onnx
    ops = lambda art: [n.op_type for n in onnx.load(art.path / "forward_model.onnx").graph.node]  # noqa: E731
    plain = compile_model(f"{NETS}:picks_net", "full", tmp_path / "plain", resolution=RES, batch_size=BATCH, passes=[])
    lean = compile_model(f"{NETS}:picks_net", "full", tmp_path / "lean", resolution=RES, batch_size=BATCH)
    assert ops(plain).count("Gather") == 6 and "Split" not in ops(plain)
    assert ops(lean).count("Gather") == 1 and ops(lean).count("Split") == 1 and ops(lean).count("Slice") == 2
    assert "gather-as-slice" in lean.manifest["passes"]


def _grouped_as_conv(monkeypatch):
    """frozen-conv writes a grouped conv's input gradient as a Conv where its channels fill this
    CPU's NCHWc blocks: the tests' nets are narrower, so take every grouped conv that way."""
    from tinytlc.passes.training import frozen_conv_backward as fcb
    blocked = fcb._blocked
    monkeypatch.setattr(fcb, "_blocked", lambda w, block, group=1, slack=1.0: group > 1 or blocked(w, block))


def test_passes_rewrite_what_they_claim(tmp_path, monkeypatch):
    """For bias-only training no ConvGrad (it reads the conv input) and no float-reading activation
    gradient survives; every mask is bool."""
    import onnx
    _grouped_as_conv(monkeypatch)
    lean = compile_model(f"{NETS}:small_net", "bias", tmp_path / "lean", resolution=RES, batch_size=BATCH)
    plain = compile_model(f"{NETS}:small_net", "bias", tmp_path / "plain", resolution=RES, batch_size=BATCH,
                          passes=[])
    ops = lambda art: [n.op_type for n in onnx.load(art.path / "training_model.onnx").graph.node]  # noqa: E731
    before, after = ops(plain), ops(lean)
    assert before.count("ConvGrad") == 6 and before.count("ReluGrad") == 2 and "LeakyReluGrad" in before
    assert not {"ConvGrad", "ReluGrad", "LeakyReluGrad"} & set(after)
    assert after.count("DropoutGrad") == 4  # 2 ReLU, 1 ReLU6, 1 LeakyReLU backward from bool masks
    assert "Where" not in after  # ORT's CPU Where allocates a full-size temporary
    # 5 convs + the pooling conv; the first needs no dX; the grouped ones and the 1x1 ones (over
    # Transpose(W)) become Convs; the pooling conv (kernel = stride) stays a ConvTranspose
    assert after.count("Transpose") == 2 and after.count("Conv") == before.count("Conv") + 4
    assert after.count("ConvTranspose") == 1


@pytest.mark.parametrize("method", ["bias", "norm+last"])
def test_frozen_conv_as_conv_is_exact(tmp_path, monkeypatch, method):
    """Input gradients of frozen stride-1 grouped convs (a Conv over a flipped constant weight) and
    the others (ConvTranspose) against ORT's own ConvGrad, with and without a
    bias gradient to wait for (bias; norm+last: the gradient passes every frozen conv to the first BatchNorm)."""
    import onnx
    _grouped_as_conv(monkeypatch)
    plain = compile_model(f"{NETS}:conv_kinds_net", method, tmp_path / "plain", resolution=RES, batch_size=BATCH,
                          passes=[])
    lean = compile_model(f"{NETS}:conv_kinds_net", method, tmp_path / "lean", resolution=RES, batch_size=BATCH)
    graph = onnx.load(lean.path / "training_model.onnx").graph
    flipped = [n for n in graph.node if n.op_type == "Conv" and n.input[1].endswith(".flipped")]
    assert len(flipped) == 4  # the dilated depthwise, the grouped 3x5, the strided depthwise and 5x5
    spread = [n for n in graph.node if n.op_type == "ConvTranspose" and n.input[1].startswith("tinytlc.one")]
    assert len(spread) == 2 and all(n.input[0] not in [m.output[0] for m in flipped] for n in spread)
    assert sum(n.op_type == "ConvTranspose" for n in graph.node) == 3  # + the 1x1 conv on a 2x2 map
    ref = assert_same_step(plain, lean, seed=4, logits_rtol=1e-6, grad_atol=1e-6)
    assert len(ref) > 2


@pytest.mark.parametrize("net", ["small_net", "odd_net"])
def test_packed_masks_keep_training_exact(tmp_path, net):
    """The optional pack-masks pass (1 bit per mask element) against ORT's own graph."""
    plain = compile_model(f"{NETS}:{net}", "bias", tmp_path / "plain", resolution=RES, batch_size=BATCH, passes=[])
    packed = compile_model(f"{NETS}:{net}", "bias", tmp_path / "packed", resolution=RES, batch_size=BATCH,
                           passes=["frozen-conv", "activation-masks", "pack-masks", "dce"])
    import onnx
    nodes = list(onnx.load(packed.path / "training_model.onnx").graph.node)
    assert "MatMulInteger" in [n.op_type for n in nodes]
    # A ReLU6 mask is made from X and packed before the Clip runs, so the unpacked mask never lives
    # beside both float maps: only the forward's wait (Y + 0 * m[0], or a Conv whose bias waits,
    # B + 0 * m[0]) reads a Clip's output.
    clips = {n.output[0]: i for i, n in enumerate(nodes) if n.op_type == "Clip"}
    assert clips
    made_by = {o: n for n in nodes for o in n.output}
    readers = [n for n in nodes if any(x in clips for x in n.input)]
    assert readers and all(n.op_type == "Add" or (n.op_type == "Conv" and made_by[n.input[2]].op_type == "Add")
                           for n in readers)
    for i, n in enumerate(nodes):
        if n.op_type == "MatMulInteger" and any(nodes[j].op_type == "Clip" for j in range(i + 1, len(nodes))):
            break
    else:
        raise AssertionError("no mask is packed before a Clip")
    assert_same_step(plain, packed, seed=2, logits_rtol=1e-5, grad_atol=1e-7)


def test_bias_backward_reads_no_float_activation(tmp_path):
    """After the passes, bias-only training reads from the forward only the classifier's input (its
    weight trains) and 1-byte masks; BatchNorm never becomes training-mode BatchNormInternal."""
    import onnx
    art = compile_model(f"{NETS}:small_net", "bias", tmp_path / "lean", resolution=RES, batch_size=BATCH)
    graph = onnx.load(art.path / "training_model.onnx").graph
    for plain in (False, True):
        g = graph if not plain else onnx.load(compile_model(
            f"{NETS}:small_net", "norm+last", tmp_path / "n", resolution=RES, batch_size=BATCH).path
            / "training_model.onnx").graph
        assert not any("BatchNorm" in n.op_type for n in g.node)
    is_backward = lambda n: "grad" in n.name.lower() or any("grad" in o.lower() for o in n.output)  # noqa: E731
    backward = [n for n in graph.node if is_backward(n)]
    # activations: what the forward's spatial ops make (the loss's small tensors are not in question)
    spatial = {"Conv", "Relu", "Clip", "LeakyRelu", "Add", "GlobalAveragePool", "Flatten"}
    weights = {t.name for t in graph.initializer}
    activations = {o for n in graph.node if not is_backward(n) and n.op_type in spatial
                   and not weights & set(n.input[:1]) for o in n.output}  # (W + 0 * dB[0] is no activation)
    read = {i for n in backward for i in n.input if i in activations}
    classifier_input = next(n.input[0] for n in graph.node if n.op_type == "Gemm" and not is_backward(n))
    assert read == {classifier_input}
    masks = {i for n in backward for i in n.input if i.endswith(".mask")}
    assert len(masks) == 4


def test_frozen_linear_backward_reads_no_input(tmp_path):
    """ORT's own Gemm gradient needs only W for dX when W is frozen (and dY alone for the bias), so a
    frozen linear layer's input is not kept; the trained classifier's input is."""
    import onnx
    art = compile_model(f"{NETS}:mlp_head_net", "bias", tmp_path / "a", resolution=RES, batch_size=BATCH)
    graph = onnx.load(art.path / "training_model.onnx").graph
    gemms = [n for n in graph.node if n.op_type == "Gemm" and "grad" not in n.name.lower()]
    frozen_in, head_in = gemms[0].input[0], gemms[1].input[0]
    readers = lambda v: [n for n in graph.node if v in n.input and "grad" in n.name.lower()]  # noqa: E731
    assert readers(frozen_in) == [] and readers(head_in) != []
    x = np.random.default_rng(3).standard_normal((BATCH, 3, RES, RES), dtype=np.float32)
    y = np.array([0, 1, 2, 0])
    plain = compile_model(f"{NETS}:mlp_head_net", "bias", tmp_path / "p", resolution=RES, batch_size=BATCH, passes=[])
    ref, got = ort_step(plain, x, y, 0.0)[2], ort_step(art, x, y, 0.0)[2]
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_conv_bias_add_puts_frozen_convs_on_nchwc(tmp_path):
    """conv-bias-add: the frozen depthwise convs of `bias` (each with a trainable bias) run on ORT's
    NCHWc kernels in the training session, and the step is ORT's own (torch autograd too:
    test_one_step_matches_torch_autograd[wide_lite_net])."""
    import onnx
    from onnxruntime.training.api import CheckpointState, Module

    from tinytlc.runtime.session import session_options

    def nchwc_convs(art):
        opts = session_options(art.manifest["session"])
        opts.optimized_model_filepath = str(art.path / "optimized.onnx")
        Module(str(art.path / "training_model.onnx"), CheckpointState.load_checkpoint(str(art.path / "checkpoint")),
               None, session_options=opts)
        return sum(n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"
                   for n in onnx.load(art.path / "optimized.onnx").graph.node)

    plain, without, lean = plain_without_lean(tmp_path, "wide_lite_net", "bias", ("conv-bias-add",))
    graph = onnx.load(lean.path / "training_model.onnx").graph
    split = [n for n in graph.node if n.op_type == "Conv" and n.output[0].endswith(".without_bias")]
    assert len(split) == 3 and all(len(n.input) == 2 for n in split)  # the three depthwise convs
    assert nchwc_convs(lean) - nchwc_convs(without) == 3
    assert_same_step(plain, lean, seed=5, logits_rtol=1e-5, grad_atol=1e-6)


@pytest.mark.parametrize("blocks", [True, False])
def test_dense_convs_and_a_relu_before_a_max_pool(tmp_path, monkeypatch, blocks):
    """ResNet's kind of net in `bias`: a ReLU before a MaxPool gets a mask like any other (ORT's
    ReluGrad reads its input there); the 3x3 convs of 16 input channels have their bias split off
    (conv-bias-add) and so run on NCHWc. Their input gradients: where both channel counts are whole
    NCHWc blocks (16 and 32 here), dX = Conv(dY, W') with W' the flipped weight as a constant; where
    they are not (a block of 64, monkeypatched), the 3x3 conv whose weight is no larger than one
    image's input gets W' made each step and the wider one keeps ConvTranspose. The step is ORT's own
    (and torch autograd's: test_one_step_matches_torch_autograd[dense_net])."""
    import onnx

    from tinytlc.passes.training import nchwc_conv
    if not blocks:
        monkeypatch.setattr(nchwc_conv, "block_size", lambda: 64)
    plain = compile_model(f"{NETS}:dense_net", "bias", tmp_path / "plain", resolution=RES, batch_size=BATCH, passes=[])
    lean = compile_model(f"{NETS}:dense_net", "bias", tmp_path / "lean", resolution=RES, batch_size=BATCH)
    before = onnx.load(plain.path / "training_model.onnx").graph
    graph = onnx.load(lean.path / "training_model.onnx").graph
    relu_grads = [n for n in before.node if n.op_type == "ReluGrad"]
    made = {o: n for n in before.node for o in n.output}
    assert any(made[n.input[1]].op_type != "Relu" for n in relu_grads)  # one reads the ReLU's input
    assert not any(n.op_type in ("ReluGrad", "ConvGrad") for n in graph.node)
    assert sum(n.op_type == "DropoutGrad" for n in graph.node) == 3
    split = [n for n in graph.node if n.op_type == "Conv" and n.output[0].endswith(".without_bias")]
    assert len(split) == 2  # conv1 and conv2; the stem has 3 input channels
    made = [n for n in graph.node if n.op_type == "Conv" and "transposed_weight" in n.input[1]]
    constant = [n for n in graph.node if n.op_type == "Conv" and n.input[1].endswith(".flipped")]
    transposed = [n for n in graph.node if n.op_type == "ConvTranspose"]
    if blocks:
        assert len(constant) == 2 and not made and not transposed  # conv1 and conv2
        assert {tuple(a.ints) for n in constant for a in n.attribute if a.name == "kernel_shape"} == {(3, 3)}
    else:
        assert not constant and len(made) == 1  # conv1: 2,304 weights, 3,600 per image
        assert [a.ints for a in made[0].attribute if a.name == "kernel_shape"] == [[3, 3]]
        assert len(transposed) == 1  # conv2: 4,608 weights, 1,024 per image
    assert_same_step(plain, lean, seed=6, logits_rtol=1e-5, grad_atol=1e-6)


def test_dense_input_grad_for_trained_convs(tmp_path):
    """dense-input-grad: in `full`, the trained 3x3 conv whose weight is no larger than one image's
    input takes dX = Conv(dY, W^T flipped) and leaves ConvGrad dW alone; the wider one keeps ConvGrad
    whole. Against ORT's own graph and the graph without the pass (torch autograd:
    test_one_step_matches_torch_autograd[dense_net-full])."""
    import onnx

    plain, without, lean = plain_without_lean(tmp_path, "dense_net", "full", ("dense-input-grad",))
    graph = onnx.load(lean.path / "training_model.onnx").graph
    dense = [n for n in graph.node if n.op_type == "Conv" and "transposed_weight" in n.input[1]]
    assert len(dense) == 1  # conv1: 2,304 weights, 3,600 per image; conv2: 4,608 against 1,024
    grads = [n for n in graph.node if n.op_type == "ConvGrad"]
    # dX computed by ConvGrad: not the stem's (the image needs none), not conv1's (the Conv's now), conv2's
    # (gather-conv leaves it: its gathered copy would outgrow the 15 px input image)
    assert sorted(bool(n.output[0]) for n in grads) == [False, False, True]
    assert_same_step(plain, lean, seed=7, logits_rtol=1e-5, grad_atol=1e-6)
    assert_same_step(without, lean, seed=8, logits_rtol=1e-6, grad_atol=1e-6)


def test_full_folds_trained_batchnorms_into_their_convs(tmp_path):
    """full: each BatchNorm after a conv becomes the conv's weight and bias, made each step from the
    trained tensors, so no affine Mul reads a conv's output and nothing keeps it for the scale's
    gradient; ORT's own graph (no passes) keeps the affines. small_net's convs have no bias,
    conv_kinds_net's first has one; torch autograd: test_one_step_matches_torch_autograd[*-full]."""
    import onnx

    def affines_over_conv_outputs(art):
        """Muls in the training graph that read a forward conv's output."""
        forward = onnx.load(art.path / "forward_model.onnx").graph
        conv_outputs = {n.output[0] for n in forward.node if n.op_type == "Conv"}
        graph = onnx.load(art.path / "training_model.onnx").graph
        return sum(n.op_type == "Mul" and bool(conv_outputs & set(n.input)) for n in graph.node)

    for net, norms in (("small_net", 4), ("conv_kinds_net", 1)):
        plain = compile_model(f"{NETS}:{net}", "full", tmp_path / f"{net}-plain", resolution=RES, batch_size=BATCH,
                              passes=[])
        lean = compile_model(f"{NETS}:{net}", "full", tmp_path / f"{net}-lean", resolution=RES, batch_size=BATCH)
        # per norm, the affine's Mul(X_c, scale) and its scale gradient's Mul(dY, X_c)
        assert affines_over_conv_outputs(plain) == 2 * norms
        assert affines_over_conv_outputs(lean) == 0
        assert set(lean.manifest["trainable"]) == set(plain.manifest["trainable"])
        assert_same_step(plain, lean, seed=9, logits_rtol=1e-5, grad_atol=1e-6)


def test_clip_mask_at_its_bounds(tmp_path):
    """ReLU6's mask (Clip(X) == X) passes the gradient exactly where ORT's own Clip gradient does,
    at X == 0 and X == 6 included, and stops it below and above (torch stops it at the bounds too,
    so the reference here is ORT's graph)."""
    plain = compile_model(f"{NETS}:clip_boundary_net", "bias", tmp_path / "plain", resolution=RES, batch_size=BATCH,
                          passes=[])
    lean = compile_model(f"{NETS}:clip_boundary_net", "bias", tmp_path / "lean", resolution=RES, batch_size=BATCH)
    ref = assert_same_step(plain, lean, seed=6, logits_rtol=1e-6, grad_atol=1e-7)
    first_bias = ref[next(n for n in ref if n.startswith("0.") and n.endswith("bias"))]
    assert (first_bias[[0, 1, 4]] != 0).all() and (first_bias[[2, 3]] == 0).all()


@pytest.mark.parametrize("method, masks", [("bias", 3), ("full", 2)])
def test_activation_masks_only_where_the_float_dies(tmp_path, method, masks):
    """`bias`: every activation's float can die in the forward, so all three get masks, the first
    ReLU and the ReLU6 too, whose gradients read the same float. `full`: the last ReLU's output is
    kept for the 1x1 conv's weight gradient, so a mask there would only add memory: it keeps ORT's
    gradient. Exact against ORT's own graph either way."""
    import onnx
    plain = compile_model(f"{NETS}:stacked_activations_net", method, tmp_path / "plain", resolution=RES,
                          batch_size=BATCH, passes=[])
    lean = compile_model(f"{NETS}:stacked_activations_net", method, tmp_path / "lean", resolution=RES,
                         batch_size=BATCH)
    graph = onnx.load(lean.path / "training_model.onnx").graph
    assert sum(n.op_type == "DropoutGrad" for n in graph.node) == masks
    assert_same_step(plain, lean, seed=7, logits_rtol=1e-6, grad_atol=1e-6)


def test_depthwise_input_grad_for_trained_convs(tmp_path):
    """full: depthwise convs get dX from a Conv over their flipped (trained) weight, strided ones over
    dY spread with zeros, and ConvGrad computes only dW and dB; the step equals ORT's own graph
    (torch autograd too: test_one_step_matches_torch_autograd[small_net-full])."""
    import onnx

    from tinytlc.passes.training import DEFAULT_PASSES
    plain = compile_model(f"{NETS}:conv_kinds_net", "full", tmp_path / "plain", resolution=RES, batch_size=BATCH,
                          passes=[])
    lean = compile_model(f"{NETS}:conv_kinds_net", "full", tmp_path / "lean", resolution=RES, batch_size=BATCH,
                         passes=[p for p in DEFAULT_PASSES if p not in ("nchwc-conv", "depthwise-weight-grad",
                                                                        "pointwise-grad", "gather-conv")])
    graph = onnx.load(lean.path / "training_model.onnx").graph
    grads = [n for n in graph.node if n.op_type == "ConvGrad"]
    without_dx = [n for n in grads if n.output[0] == ""]
    # the first conv (its input is the image: ORT asks no dX), the dilated and the strided depthwise
    # ones; the grouped 3x5 and 5x5 are no depthwise convs
    groups = sorted(next((a.i for a in n.attribute if a.name == "group"), 1) for n in without_dx)
    assert len(grads) == 7 and groups == [1, 8, 16]
    producers = {o: n for n in graph.node for o in n.output}
    flipped = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in producers
               and producers[n.input[1]].op_type == "Slice"]
    assert len(flipped) == 2
    ref = assert_same_step(plain, lean, seed=7, logits_rtol=1e-6, grad_atol=1e-6)
    assert len(ref) == 2 * 7 + 2 + 2  # 7 convs, the BatchNorm's scale and shift, the classifier


def test_nchwc_conv_for_trained_depthwise_convs(tmp_path):
    """full: depthwise convs whose weight trains (and the input-gradient Convs over their flipped
    weights) are written as ORT's NCHWc ops, with this CPU's block recorded; the step equals ORT's
    own graph and the graph without the pass (torch autograd too:
    test_one_step_matches_torch_autograd[wide_lite_net-full])."""
    import onnx

    from tinytlc.passes.training import NCHWC_PASSES
    from tinytlc.passes.training.nchwc_conv import block_size
    plain, without, lean = plain_without_lean(tmp_path, "conv_kinds_net", "full", NCHWC_PASSES)
    assert lean.manifest["nchwc_block"] == block_size() and "nchwc_block" not in without.manifest
    nodes = onnx.load(lean.path / "training_model.onnx").graph.node
    blocked = [n for n in nodes if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"
               and ".stacked." not in n.output[0]]  # depthwise-weight-grad's
    # depthwise convs of 8 (dilated) and 16 (strided) channels: forward and input gradient each,
    # those whose channels fill whole blocks
    assert len(blocked) == 2 * sum(c % block_size() == 0 for c in (8, 16)) > 0
    assert all(next(a.i for a in n.attribute if a.name == "group") % block_size() == 0 for n in blocked)
    ref = assert_same_step(plain, lean, seed=8, logits_rtol=1e-5, grad_atol=1e-5)
    assert_same_step(without, lean, seed=8, logits_rtol=1e-5, grad_atol=1e-5)
    assert len(ref) == 2 * 7 + 2 + 2


def test_depthwise_weight_grad_stacks_the_batch(tmp_path):
    """full: a depthwise conv's weight gradient on a small map is one NCHWc conv over the batch
    stacked in rows (5x5 stride 2 on an odd input, whose rows are padded to the stride; a 3x5
    kernel with strides (2, 1); no padding); the step equals ORT's own graph and the graph without
    the pass, for a batch other than the compiled one too (torch autograd:
    test_one_step_matches_torch_autograd[wide_lite_net-full])."""
    import onnx

    from tinytlc.passes.training.nchwc_conv import block_size
    plain, without, lean = plain_without_lean(tmp_path, "depthwise_kinds_net", "full", ("depthwise-weight-grad",))
    assert lean.manifest["nchwc_block"] == block_size()
    grads = lambda art: [n for n in onnx.load(art.path / "training_model.onnx").graph.node if n.op_type == "ConvGrad"]
    stacked = [n for n in onnx.load(lean.path / "training_model.onnx").graph.node
               if n.output[0].endswith(".stacked.0")]
    assert len(stacked) == 3 and len(grads(without)) - len(grads(lean)) == 3
    ref = assert_same_step(plain, lean, seed=9, logits_rtol=1e-5, grad_atol=1e-5)
    assert_same_step(without, lean, seed=9, logits_rtol=1e-5, grad_atol=1e-5)
    assert len(ref) == 2 * 5 + 2
    # a batch other than the compiled one: the stacking follows it
    assert_same_step(plain, lean, seed=10, logits_rtol=1e-5, grad_atol=1e-5, batch=BATCH - 1)


def test_depthwise_weight_grad_wide_kernels_on_any_map(tmp_path):
    """full, 20 x 20 maps (over the 16 x 16 a 3x3 kernel is taken on): the 7x7 depthwise conv's
    weight gradient is the stacked NCHWc conv, the 3x3's stays ConvGrad's; the step equals ORT's
    own graph and the graph without the pass."""
    import onnx

    from tinytlc.passes.training import DEFAULT_PASSES
    build = dict(resolution=20, batch_size=BATCH)
    plain = compile_model(f"{NETS}:wide_kernel_net", "full", tmp_path / "plain", passes=[], **build)
    without = compile_model(f"{NETS}:wide_kernel_net", "full", tmp_path / "without",
                            passes=[p for p in DEFAULT_PASSES if p != "depthwise-weight-grad"], **build)
    lean = compile_model(f"{NETS}:wide_kernel_net", "full", tmp_path / "lean", **build)
    nodes = onnx.load(lean.path / "training_model.onnx").graph.node
    stacked = [n for n in nodes if n.output[0].endswith(".stacked.0")]
    kept = [next(a.ints for a in n.attribute if a.name == "kernel_shape") for n in nodes if n.op_type == "ConvGrad"
            and next((a.i for a in n.attribute if a.name == "group"), 1) == 16]
    assert len(stacked) == 1 and kept == [[3, 3]], (len(stacked), kept)
    ref = assert_same_step(plain, lean, seed=4, logits_rtol=1e-5, grad_atol=1e-5, res=20)
    assert_same_step(without, lean, seed=4, logits_rtol=1e-5, grad_atol=1e-5, res=20)
    assert len(ref) == 2 * 3 + 2


def test_pointwise_grad_on_large_maps(tmp_path):
    """full: a trained 1x1 conv whose map has at least as many pixels as it has channels gets dX
    from a Conv over W^T and dW from one batched GEMM summed over the batch, without ConvGrad; the
    1x1 conv on the 4 x 4 map (32 channels out) keeps ConvGrad. The step equals ORT's own graph
    and the graph without the pass (torch autograd: test_one_step_matches_torch_autograd[*-full])."""
    import onnx

    plain, without, lean = plain_without_lean(tmp_path, "conv_kinds_net", "full", ("pointwise-grad",))
    nodes = onnx.load(lean.path / "training_model.onnx").graph.node
    grads = [n for n in nodes if n.op_type == "ConvGrad"]
    pointwise = [n for n in nodes if n.op_type == "FusedMatMul" and ".pointwise." in n.output[0]]
    kept_1x1 = [n for n in grads if next(a.ints for a in n.attribute if a.name == "kernel_shape") == [1, 1]]
    assert len(pointwise) == 1 and len(kept_1x1) == 1
    ref = assert_same_step(plain, lean, seed=11, logits_rtol=1e-5, grad_atol=1e-5)
    assert_same_step(without, lean, seed=11, logits_rtol=1e-5, grad_atol=1e-5)
    assert len(ref) == 2 * 7 + 2 + 2


def test_gather_conv_on_small_maps(tmp_path, monkeypatch):
    """full: trained k x k convs whose output map has at most 8 x 8 pixels (strided, 2-group 5x5,
    3x5 with strides (2, 1), dilated 3-group, asymmetric padding) run forward and get dW and dX
    from Gathers and batched GEMMs, without Conv and ConvGrad; the one on the 15 x 15 map keeps
    both. The step equals ORT's own graph and the graph without the pass, for a batch other than
    the compiled one too (torch autograd: test_one_step_matches_torch_autograd[gather_net-full])."""
    import onnx

    build = dict(resolution=RES, batch_size=BATCH)
    # at 15 px every gathered copy outgrows the input image, which the pass refuses (checked below)
    capped = compile_model(f"{NETS}:gather_net", "full", tmp_path / "capped", **build)
    assert not any(".gathered." in n.output[0] for n in onnx.load(capped.path / "training_model.onnx").graph.node)
    monkeypatch.setattr("tinytlc.passes.training.gather_conv.image_bytes", lambda graph: None)
    plain, without, lean = plain_without_lean(tmp_path, "gather_net", "full", ("gather-conv",))
    nodes = onnx.load(lean.path / "training_model.onnx").graph.node
    grads = [n for n in nodes if n.op_type == "ConvGrad"]
    gemms = [n for n in nodes if n.op_type in ("MatMul", "FusedMatMul") and ".gathered." in n.output[0]]
    forward = [n for n in gemms if "_grad." not in n.output[0]]
    weight_grads = [n for n in gemms if n.op_type == "FusedMatMul" and "_grad." in n.output[0]]
    input_grads = [n for n in gemms if n.op_type == "MatMul" and "_grad." in n.output[0]]
    assert len(grads) == 1 and next(a.ints for a in grads[0].attribute if a.name == "kernel_shape") == [3, 3]
    convs = [n for n in nodes if n.op_type == "Conv" and n.domain == ""]
    assert len(convs) == 1 and convs[0].input[1] == grads[0].input[2]  # the 15 x 15 one, forward
    # five convs, forward and backward; the first of them reads the 15 x 15 conv's output, so each
    # needs dX
    assert len(forward) == 5 and len(weight_grads) == 5 and len(input_grads) == 5
    ref = assert_same_step(plain, lean, seed=12, logits_rtol=1e-5, grad_atol=1e-5)
    assert_same_step(without, lean, seed=12, logits_rtol=1e-5, grad_atol=1e-5)
    assert len(ref) == 2 * 6 - 1 + 2  # six convs (one without bias) and the classifier
    assert_same_step(plain, lean, seed=13, logits_rtol=1e-5, grad_atol=1e-5, batch=BATCH - 1)


@pytest.mark.parametrize("method", ["bias", "full"])
def test_recompute_gelu_input(tmp_path, method):
    """recompute-gelu-input (opt-in): each token MLP's GELU input is made again in the backward from
    its LayerNorm's input, so the forward's dies after the GELU; the step is bit for bit the step
    without the pass, equals ORT's own graph and PyTorch autograd."""
    from tinytlc.passes.training import DEFAULT_PASSES
    from tinytlc.passes.training._graph import forward_nodes
    build = dict(resolution=RES, batch_size=BATCH)
    plain = compile_model(f"{NETS}:channels_last_net", method, tmp_path / "plain", passes=[], **build)
    without = compile_model(f"{NETS}:channels_last_net", method, tmp_path / "without", **build)
    lean = compile_model(f"{NETS}:channels_last_net", method, tmp_path / "lean", passes=["+recompute-gelu-input"], **build)
    assert set(lean.manifest["passes"]) == set(DEFAULT_PASSES) | {"recompute-gelu-input"}
    graph = ir.load(lean.path / "training_model.onnx").graph
    forward = forward_nodes(graph)
    grads = [n for n in graph if n.op_type == "GeluGrad"]
    gelus = [n for n in graph if n.op_type == "Gelu"]
    assert len(grads) == len(gelus) == 3
    for grad in grads:  # reads an X made after the loss, by a LayerNorm, MatMul and Add of its own
        add = grad.inputs[1].producer()
        mm = next(i.producer() for i in add.inputs if i.producer() is not None and i.producer().op_type == "MatMul")
        norm = mm.inputs[0].producer()
        assert (add.op_type, norm.op_type) == ("Add", "LayerNormalization") and not {add, mm, norm} & forward
    for gelu in gelus:  # the forward's X has no reader after the loss
        assert all(user in forward for user, _ in gelu.inputs[0].uses())

    rng = np.random.default_rng(7)
    x = rng.standard_normal((BATCH, 3, RES, RES), dtype=np.float32)
    y = rng.integers(0, 3, BATCH)
    _, logits_w, grads_w = ort_step(without, x, y, 0.0)
    loss, logits, got = ort_step(lean, x, y, 0.0)
    np.testing.assert_array_equal(logits, logits_w)
    assert set(got) == set(grads_w)
    for name in got:
        np.testing.assert_array_equal(got[name], grads_w[name], err_msg=name)
    assert_same_step(plain, lean, seed=7, logits_rtol=1e-6, grad_atol=1e-6)
    model, train = torch_reference(method, channels_last_net)
    logits_t = model(torch.from_numpy(x))
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(y))
    loss_t.backward()
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-5)
    for name, p in model.named_parameters():
        if name in train:
            np.testing.assert_allclose(got[name], p.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("method", ["bias", "norm+last"])
def test_layer_norm_grad_from_ops(tmp_path, method):
    """layer-norm-grad: no LayerNormalizationGrad is left (the stem's norm and three token MLPs' on
    channels-last maps); dX, the shift's gradient and (norm+last) the scale's equal ORT's own graph
    and the graph without the pass (PyTorch autograd: test_families, ConvNeXt, ViT and Swin)."""
    import onnx

    plain, without, lean = plain_without_lean(tmp_path, "channels_last_net", method, ("layer-norm-grad",))
    ops = lambda art: [n.op_type for n in onnx.load(art.path / "training_model.onnx").graph.node]  # noqa: E731
    assert ops(without).count("LayerNormalizationGrad") == 4 and "LayerNormalizationGrad" not in ops(lean)
    ref = assert_same_step(plain, lean, seed=5, logits_rtol=1e-6, grad_atol=1e-6)
    assert_same_step(without, lean, seed=5, logits_rtol=1e-6, grad_atol=1e-6)
    assert sum(name.endswith("norm.weight") for name in ref) == (4 if method == "norm+last" else 0)
    assert sum(name.endswith("norm.bias") for name in ref) == 4
    # each norm's input gradient waits for its shift's (and scale's) sums, so that ORT cannot run them
    # last and keep every dY alive until the optimizer (ConvNeXt-Tiny lite+bias: +17.6 MiB)
    graph = onnx.load(lean.path / "training_model.onnx").graph
    producer = {o: n for n in graph.node for o in n.output}

    def ancestors(name):
        seen, todo = set(), [name]
        while todo:
            v = todo.pop()
            if v in producer and v not in seen:
                seen.add(v)
                todo += list(producer[v].input)
        return seen
    sums = [o for n in graph.node if n.op_type == "ReduceSum" for o in n.output
            if o.endswith(("norm.bias_grad", "norm.weight_grad"))]
    assert len(sums) == 4 * (2 if method == "norm+last" else 1)
    summed = {producer[s_].input[0] for s_ in sums}  # dY, or dY * xh (dgamma)
    ordered = 0
    for s_ in sums:
        dy = producer[s_].input[0]
        dy = producer[dy].input[0] if producer.get(dy) is not None and producer[dy].op_type == "Mul" else dy
        # g = dY * gamma' (not dY * xh): where dX is made, it waits for the sum
        for g in [n.output[0] for n in graph.node if n.op_type == "Mul" and n.input[0] == dy
                  and n.output[0] not in summed]:
            assert s_ in ancestors(g), s_
            ordered += 1
    assert ordered >= 4
