"""Lite residual modules: found from graph structure, output unchanged at start, gradients equal to
a PyTorch model carrying the same modules (the eager baseline's), on zoo models and an unseen
residual CNN."""

import re

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import NETS
from nets import lite_net, resnet_like
from test_gradients import fold_all_bn, ort_step

from tinytlc.export import export_module
from tinytlc.passes.forward import LiteOptions
from tinytlc.pipeline import compile_model
from tinytlc.torch_baseline import lite_module

RES, BATCH = 13, 4


class WithLite(nn.Module):
    """A block with the eager baseline's lite branch beside it (torch_baseline.lite_module), weights
    taken from the compiled graph."""

    def __init__(self, block, spec, params, name, whole_kernel=True):
        super().__init__()
        # whole_kernel: all k x k taps, not only the ones compiled: those go in its middle, the ring gets
        # noise (which must change nothing, and get no gradient). Else the branch as the eager baseline has it.
        k = spec["kernel"]
        self.block = block
        self.lite = lite_module(dict(spec, taps=[k, k], pads=[k // 2] * 4) if whole_kernel else spec)
        with torch.no_grad():
            for n, p in self.lite.named_parameters():
                value = torch.from_numpy(params[f"{name}.{n}"])
                if n == "conv1.weight" and whole_kernel:
                    a, b = [(k - t) // 2 for t in value.shape[2:]]
                    p.normal_()
                    p[:, :, a:k - a, b:k - b] = value
                else:
                    p.copy_(value.reshape(p.shape))

    def forward(self, x):
        return self.block(x) + self.lite(x)


def initializers(art):
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(art.path / "forward_model.onnx").graph.initializer}


@pytest.mark.parametrize("method,res", [("lite", RES), ("lite+bias", RES), ("lite", 8)])
def test_lite_gradients_match_torch(tmp_path, monkeypatch, method, res):
    """At 8 px the second module's 5x5 kernel meets a 2x2 map: its conv reads the 3x3 taps that reach
    the map (lite_residual.reach); the torch reference convolves with all 25."""
    # a nonzero start, so every lite parameter gets a gradient; the paper's width (this net's blocks are
    # lighter than its modules, so the budget would narrow them: tested below)
    opts = LiteOptions(final_scale=0.5, budget=0)
    # gather-conv takes the lite convs only where its copies stay within the input image; at these
    # sizes they never do, so that rule is lifted here to check the rewrite against torch too
    monkeypatch.setattr("tinytlc.passes.training.gather_conv.image_bytes", lambda graph: None)
    plain = compile_model(f"{NETS}:lite_net", method, tmp_path / "p", resolution=res, batch_size=BATCH, lite=opts,
                          passes=[])
    lean = compile_model(f"{NETS}:lite_net", method, tmp_path / "l", resolution=res, batch_size=BATCH, lite=opts)
    report = lean.manifest["lite_modules"]
    assert [m["stride"] for m in report] == [2, 1]  # blocks 2 and 3; the first block gets none
    assert [m["taps"] for m in report] == ([[5, 5], [5, 5]] if res == RES else [[5, 5], [3, 3]])
    assert all(m["kernel"] == 5 for m in report)
    assert [(m["width"], m["groups"]) for m in report] == [(8, 2), (16, 2)]  # the paper's
    import onnx
    gathered = [n for n in onnx.load(lean.path / "training_model.onnx").graph.node if ".gathered." in n.output[0]]
    assert gathered, "the lite modules' convs run through gather-conv, checked here against torch"
    params = initializers(lean)

    model = fold_all_bn(lite_net())
    for i, r in enumerate(report, start=1):
        model.blocks[i] = WithLite(model.blocks[i], r, params, f"lite{i}")
    trainable = lean.manifest["trainable"]
    lite = [n for n in trainable if n.startswith("lite")]
    # two convs and two norms (scale, shift) per module; lite+bias keeps the final shift frozen
    assert len(lite) == 2 * (6 if method == "lite" else 5)
    assert method == "lite" or not any(n.endswith("norm2.bias") for n in lite)
    assert {"head.2.weight", "head.2.bias"} <= set(trainable)
    others = set(trainable) - set(lite) - {"head.2.weight", "head.2.bias"}
    assert others == (set() if method == "lite" else {n for n in others if n.endswith(".bias")}) and \
        (method == "lite" or len(others) == 10)  # lite+bias: the biases of the 10 folded convs
    torch_names = {n: p.requires_grad_(True) for n, p in model.named_parameters()}  # fusing may turn it off
    rng = np.random.default_rng(3)
    x = rng.standard_normal((BATCH, 3, res, res), dtype=np.float32)
    y = rng.integers(0, 3, BATCH)
    logits_t = model(torch.from_numpy(x))
    F.cross_entropy(logits_t, torch.from_numpy(y)).backward()

    # map ONNX names to the torch reference's
    def torch_grad(name):
        if name.startswith("lite"):
            i, rest = name[4:].split(".", 1)
            grad = dict(model.blocks[int(i)].lite.named_parameters())[rest].grad.numpy()
            if rest == "conv1.weight":
                k = grad.shape[-1]
                a, b = [(k - t) // 2 for t in params[name].shape[2:]]
                ring = grad.copy()
                ring[:, :, a:k - a, b:k - b] = 0
                assert not ring.any(), f"{name}: taps outside the map got a gradient"
                return grad[:, :, a:k - a, b:k - b]
            return grad.reshape(params[name].shape)
        n = name.replace(f"blocks.{1}.conv", "blocks.1.block.conv").replace("blocks.2.conv", "blocks.2.block.conv")
        return torch_names[n].grad.numpy()

    baseline = fold_all_bn(lite_net())  # as the eager baseline builds it: the compiled taps only
    for i, r in enumerate(report, start=1):
        baseline.blocks[i] = WithLite(baseline.blocks[i], r, params, f"lite{i}", whole_kernel=False)
    np.testing.assert_allclose(baseline(torch.from_numpy(x)).detach().numpy(), logits_t.detach().numpy(),
                               rtol=1e-5, atol=1e-6)

    for art in (plain, lean):
        _, logits, grads = ort_step(art, x, y, 0.0)
        np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-4, atol=1e-5)
        for name in art.manifest["trainable"]:
            np.testing.assert_allclose(grads[name], torch_grad(name), rtol=1e-3, atol=1e-5,
                                       err_msg=f"{method} {art.manifest['passes']}: {name}")


def test_output_unchanged_before_training(tmp_path):
    art = compile_model(f"{NETS}:lite_net", "lite+bias", tmp_path / "a", resolution=RES, batch_size=BATCH)
    assert len(art.manifest["lite_modules"]) == 2
    x = np.random.default_rng(4).standard_normal((BATCH, 3, RES, RES), dtype=np.float32)
    _, logits, _ = ort_step(art, x, np.zeros(BATCH, np.int64), 0.0)
    with torch.no_grad():
        expected = lite_net()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_unseen_residual_onnx_model(tmp_path, cli):
    path = tmp_path / "resnet_like.onnx"
    onnx.save(export_module(resnet_like(), 32), path)
    code, out, err = cli("compile", path, "--method", "lite", "--resolution", 32, "--out", tmp_path / "a", "--json")
    assert code == 0, err
    import json
    manifest = json.loads(out)
    assert [m["block"] for m in manifest["lite_modules"]] == ["residual", "residual"]  # 3 blocks, first skipped
    code, _, err = cli("train", tmp_path / "a", "--data", "synthetic:16", "--epochs", 1)
    assert code == 0, err
    code, _, err = cli("export", tmp_path / "a", tmp_path / "model.onnx")  # checked against the eval model
    assert code == 0, err


@pytest.mark.parametrize("model,blocks", [("mobilenetv2", 17), ("proxylessnas-mobile", 20),
                                          ("efficientnet-lite0", 16)])
def test_zoo_models_get_a_module_per_block_but_the_first(tmp_path, model, blocks):
    art = compile_model(model, "lite+bias", tmp_path / "a", num_classes=5, resolution=64, batch_size=2)
    report = art.manifest["lite_modules"]
    assert len(report) == blocks - 1
    assert sum(m["stride"] == 2 for m in report) == 4
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64), dtype=np.float32)
    loss, _, grads = ort_step(art, x, np.array([0, 1]), 0.0)
    assert np.isfinite(loss)
    assert all(np.isfinite(g).all() for g in grads.values())


def test_blocks_are_the_same_whatever_the_norm():
    """ProxylessNAS-Mobile's 20 blocks (19 lite modules) are found alike with BatchNorm folded into
    the convs, BatchNorm as an affine, and GroupNorm written out (which reshapes into groups inside
    each block), and every block ends where the zoo's block ends."""
    from tinytlc.passes.forward import find_blocks
    from tinytlc.pipeline import forward_graph
    from tinytlc.zoo.proxylessnas import proxylessnas_mobile

    def blocks(method, norm):
        graph = forward_graph("proxylessnas-mobile", method, 10, 64, False, norm=norm)[0].graph
        return [(list(b.input.shape)[1:], list(b.output.shape)[1:], b.stride, b.kind) for b in find_blocks(graph)]

    folded, affine, group = blocks("last", "batch"), blocks("norm+last", "batch"), blocks("last", "group")
    assert folded == affine == group and len(group) == 20
    net = proxylessnas_mobile(10, 64)
    x, outs = torch.zeros(1, 3, 64, 64), []
    x = net.stem(x)
    for b in net.blocks:
        x = b(x)
        outs.append(list(x.shape[1:]))
    assert [b[1] for b in group] == outs
    assert [b[3] for b in group].count("residual") == sum(b.use_skip for b in net.blocks)


def test_a_conv_over_split_channels_is_one_layer(tmp_path):
    """MixNet's MixedConv2d (channels split, a conv per split, concatenated) is a layer like the conv
    it stands for: its inverted bottlenecks are the blocks a plain conv's are, where each mixed conv
    was taken for a block of its own (3 lite modules a block)."""
    from tinytlc.passes.forward import find_blocks
    from tinytlc.pipeline import forward_graph

    def blocks(mixed):
        graph = forward_graph(f"{NETS}:mixnet_net{'' if mixed else '_plain'}", "last", 3, 32)[0].graph
        return [(list(b.input.shape)[1:], list(b.output.shape)[1:], b.stride, b.kind) for b in find_blocks(graph)]

    assert blocks(True) == blocks(False) == [([3, 32, 32], [12, 8, 8], 4, "inverted-bottleneck"),
                                             ([12, 8, 8], [16, 4, 4], 2, "inverted-bottleneck")]
    from test_gradients import BATCH as B, RES as R, assert_same_step
    plain, lean = (compile_model(f"{NETS}:mixnet_net", "lite+bias", tmp_path / tag, resolution=R, batch_size=B, passes=passes)
                   for tag, passes in (("plain", []), ("lean", None)))
    assert len(lean.manifest["lite_modules"]) == 1
    assert_same_step(plain, lean, 3, 1e-5, 1e-6)


def test_class_token_models_get_modules_beside_their_blocks(tmp_path):
    """BEiT (tests/nets.py:beit_net): the class token is expanded with `x.shape[0]`, which shape
    inference cannot follow (static_reshapes writes it as an Expand to the image's batch), and the
    head averages x[:, 1:], a Slice of tokens that belongs to the head, not to the last block.
    Before, no block got a module (token count unknown), then the last one none (10 tokens in, 9 out)."""
    from test_gradients import BATCH as B, RES as R, assert_same_step
    plain, lean = (compile_model(f"{NETS}:beit_net", "lite", tmp_path / tag, resolution=R, batch_size=B, passes=passes)
                   for tag, passes in (("plain", []), ("lean", None)))
    assert lean.manifest["lite_blocks"] == 2 and not lean.manifest["lite_skipped"]
    assert [(m["input"], m["output"]) for m in lean.manifest["lite_modules"]] == [([10, 8], [10, 8])]
    assert_same_step(plain, lean, 5, 1e-5, 1e-6)


def test_a_block_read_transposed_ends_before_the_transpose(tmp_path):
    """Twins-SVT (tests/nets.py:peg_net): the position conv after a stage's first block reads its
    tokens as [B, C, N]. The block ended at that Transpose, so it got no module (9 tokens in, 8 out)."""
    from test_gradients import BATCH as B, RES as R, assert_same_step
    plain, lean = (compile_model(f"{NETS}:peg_net", "lite", tmp_path / tag, resolution=R, batch_size=B, passes=passes)
                   for tag, passes in (("plain", []), ("lean", None)))
    assert not lean.manifest["lite_skipped"], lean.manifest["lite_skipped"]
    # the stem with the first block (no module), a block, the position conv, a block
    assert [(m["input"], m["output"]) for m in lean.manifest["lite_modules"]] == \
        [([9, 8], [9, 8]), ([8, 3, 3], [8, 3, 3]), ([9, 8], [9, 8])]
    assert_same_step(plain, lean, 7, 1e-5, 1e-6)


def test_blocks_after_a_resize_to_a_size_read_from_the_map_get_modules(tmp_path):
    """MobileViT-v2 on a map of odd size: F.interpolate(size=...) from the map's shape, then
    x.reshape(B, C, -1, patches). Shapes after the Resize were unknown (its sizes computed from the
    batch, then a -1 beside the batch), so no block after it got a module."""
    from test_gradients import BATCH as B, RES as R, assert_same_step
    plain, lean = (compile_model(f"{NETS}:resized_patches_net", "lite+bias", tmp_path / tag, resolution=R, batch_size=B,
                                 passes=passes) for tag, passes in (("plain", []), ("lean", None)))
    assert not lean.manifest["lite_skipped"], lean.manifest["lite_skipped"]
    assert len(lean.manifest["lite_modules"]) == lean.manifest["lite_blocks"] - 1 == 4
    assert_same_step(plain, lean, 8, 1e-5, 1e-6)


def test_swin_v2_mlp_blocks_get_modules(tmp_path):
    """timm's Swin V2 (tests/nets.py:swinv2_net) writes its windows back with view(-1, H, W, C),
    then runs its MLP on x.reshape(B, -1, C): the windows' batch was lost, so the MLP's token count
    was unknown and its blocks got no module."""
    from test_gradients import BATCH as B, RES as R, assert_same_step
    plain, lean = (compile_model(f"{NETS}:swinv2_net", "lite", tmp_path / tag, resolution=R, batch_size=B,
                                 passes=passes) for tag, passes in (("plain", []), ("lean", None)))
    assert not lean.manifest["lite_skipped"], lean.manifest["lite_skipped"]
    assert [(m["input"], m["output"]) for m in lean.manifest["lite_modules"]] == \
        [([9, 8], [9, 8]), ([8, 3, 3], [8, 3, 3]), ([9, 8], [9, 8])]
    assert_same_step(plain, lean, 9, 1e-5, 1e-6)


@pytest.mark.parametrize("net,modules", [
    ("late_class_token_net", [([9, 8], [9, 8]), ([10, 8], [10, 8])]),
    ("pixel_patch_net", [([4, 4], [4, 4]), ([10, 8], [10, 8]), ([10, 8], [10, 8])])])
def test_token_blocks_end_before_their_token_count_changes(tmp_path, net, modules):
    """ConViT concatenates its class token before the last blocks, TNT regroups each patch's pixels
    [B * 9, 4, c] into patch tokens with reshape(B, N - 1, -1): the block before ended after that
    (9 tokens in, 10 out), and TNT's pixels.reshape(B * 9, 4, -1) left the pixel blocks' shapes
    unknown, so they got no module."""
    from test_gradients import BATCH as B, RES as R, assert_same_step
    plain, lean = (compile_model(f"{NETS}:{net}", "lite", tmp_path / tag, resolution=R, batch_size=B,
                                 passes=passes) for tag, passes in (("plain", []), ("lean", None)))
    assert not lean.manifest["lite_skipped"], lean.manifest["lite_skipped"]
    assert [(m["input"], m["output"]) for m in lean.manifest["lite_modules"]] == modules
    assert_same_step(plain, lean, 10, 1e-5, 1e-6)


def test_extra_depthwise_blocks_are_one_block(tmp_path):
    """MobileNetV4's ExtraDW block (dw, expand, dw, project), ConvNeXt-like one (dw, expand,
    project) and FusedMBConv (3x3 expand, 1x1 project) are one block each; before, each was cut
    after its expansion (the module beside the second half read the 2x widened map), and a
    depthwise conv took the projection before it for its expand conv. MobileNetV1's separable
    convs stay one block each; RepLKNet's stem, ending in a lone depthwise conv, is one block."""
    from tinytlc.passes.forward import find_blocks
    from tinytlc.pipeline import forward_graph

    def blocks(net):
        graph = forward_graph(f"{NETS}:{net}", "last", 3, 32)[0].graph
        return [(list(b.input.shape)[1:], list(b.output.shape)[1:], b.stride) for b in find_blocks(graph)]

    assert blocks("mnv4_net") == [([3, 32, 32], [8, 8, 8], 4), ([8, 8, 8], [8, 8, 8], 1), ([8, 8, 8], [12, 4, 4], 2),
                                  ([12, 4, 4], [16, 2, 2], 2)]
    assert blocks("mobilenetv1_net") == [([3, 32, 32], [16, 16, 16], 2), ([16, 16, 16], [24, 8, 8], 2)]
    assert blocks("replk_stem_net") == [([3, 32, 32], [8, 8, 8], 4), ([8, 8, 8], [8, 8, 8], 1), ([8, 8, 8], [8, 8, 8], 1)]
    from test_gradients import BATCH as B, RES as R, assert_same_step
    plain, lean = (compile_model(f"{NETS}:mnv4_net", "lite+bias", tmp_path / tag, resolution=R, batch_size=B, passes=passes)
                   for tag, passes in (("plain", []), ("lean", None)))
    assert [m["input"][0] for m in lean.manifest["lite_modules"]] == [8, 8, 12]
    assert_same_step(plain, lean, 6, 1e-5, 1e-6)


class ChannelsLastWithLite(WithLite):
    """The lite branch beside a block on (n, h, w, c) tensors: it convolves over h and w."""

    def forward(self, x):
        return self.block(x) + self.lite(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def narrowed_modules_match_torch(tmp_path, net: str, res: int, opts: LiteOptions):
    """Compile `net` with lite modules, with and without the passes; check one step's logits and
    gradients against a torch model carrying the same modules. The lean artifact's manifest."""
    import nets
    arts = [compile_model(f"{NETS}:{net}", "lite", tmp_path / tag, resolution=res, batch_size=BATCH, lite=opts,
                          passes=passes) for tag, passes in (("plain", []), ("lean", None))]
    report, params = arts[1].manifest["lite_modules"], initializers(arts[1])
    model = fold_all_bn(getattr(nets, net)())
    for i, r in enumerate(report, start=1):
        model.blocks[i] = WithLite(model.blocks[i], r, params, f"lite{i}", whole_kernel=False)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((BATCH, 3, res, res), dtype=np.float32)
    y = rng.integers(0, 3, BATCH)
    logits_t = model(torch.from_numpy(x))
    F.cross_entropy(logits_t, torch.from_numpy(y)).backward()
    for art in arts:
        _, logits, grads = ort_step(art, x, y, 0.0)
        np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-4, atol=1e-5)
        assert len(grads) == 6 * len(report) + 2
        for name, grad in grads.items():
            block, rest = (model.blocks[int(name[4])].lite, name.split(".", 1)[1]) if name.startswith("lite") else \
                (model, name)
            expected = dict(block.named_parameters())[rest].grad.numpy()
            np.testing.assert_allclose(grad, expected.reshape(grad.shape), rtol=1e-3, atol=1e-5, err_msg=name)
    return arts[1].manifest


def test_bottleneck_blocks_get_modules_no_wider_than_their_bottleneck(tmp_path, cli):
    """Beside ResNet-50's bottlenecks (1024 channels in, 256 inside) the paper's module, as wide as
    the block's input in 2 groups, held 12.7x the block's weights (149 M parameters beside the
    network's 23.5 M at 128 px: `lite` trained more than `full`). Narrowed to the block's narrowest
    layer, each group as wide as the paper's, it holds no more than the block (0.97x). A
    squeeze-and-excite conv on a 1x1 map is no bottleneck: the module beside it keeps the 3x3's
    width. Gradients equal a torch model carrying the same modules."""
    manifest = narrowed_modules_match_torch(tmp_path, "bottleneck_net", 16, LiteOptions(final_scale=0.5))
    # 32 channels in, 8 inside: width 8 in 8 groups (4 channels in each, as the paper's 2 groups of
    # 8 would read); 16 inside the strided block: 4 groups. Within the budget: no further narrowing.
    assert [(m["input"][0], m["width"], m["groups"]) for m in manifest["lite_modules"]] == \
        [(32, 8, 8), (32, 8, 8), (32, 16, 4)]
    assert manifest["lite_width"] == 1
    code, out, _ = cli("compile", f"{NETS}:bottleneck_net", "--method", "lite", "--resolution", 16, "--out", tmp_path / "c")
    assert code == 0 and "3 narrower than their input, each group reading half the width as in the paper (e.g. 32 " \
        "channels in, 8 wide in 8 groups): no wider than the block's narrowest conv\n" in out


def test_modules_heavier_than_their_blocks_are_narrowed(tmp_path, cli):
    """Beside ConvNeXt-T's and Swin-T's blocks the paper's modules held 1.7x and 3x the blocks'
    weights, so `lite+bias` needed more memory than `full` (224 px: 1341 against 1264 MiB, 2050
    against 927). Modules are narrowed, halving their width (and doubling their groups), until they
    hold no more weights than their blocks: lite_net's inverted bottlenecks expand only 2x, so its
    paper modules would hold 4,496 weights beside blocks of 1,840; halved once, 1,280. Gradients
    equal torch's; `--lite-budget 0` keeps the paper's width."""
    manifest = narrowed_modules_match_torch(tmp_path, "lite_net", RES, LiteOptions(final_scale=0.5))
    report = manifest["lite_modules"]
    assert manifest["lite_width"] == 0.5
    assert [(m["input"][0], m["width"], m["groups"]) for m in report] == [(8, 4, 4), (16, 8, 4)]
    assert sum(m["params"] for m in report) == 1280
    code, out, _ = cli("compile", f"{NETS}:lite_net", "--method", "lite", "--resolution", RES, "--out", tmp_path / "c")
    assert code == 0 and "e.g. 8 channels in, 4 wide in 4 groups): at 1/2 of the paper's width (or a bottleneck's), " \
        "so that they hold no more weights than their blocks\n" in out
    code, out, _ = cli("compile", f"{NETS}:lite_net", "--method", "lite", "--resolution", RES, "--lite-budget", 0,
                       "--out", tmp_path / "d")
    assert code == 0 and "narrower than their input" not in out and "4,496 parameters" in out


@pytest.mark.parametrize("net", ["channels_last_net", "channels_last_tokens_net"])
def test_channels_last_blocks_get_modules_over_height_and_width(tmp_path, net):
    """Blocks on (n, h, w, c) tensors (Swin, ConvNeXt-style token MLPs) get their lite module
    between Transposes: the ONNX module's gradients equal a torch branch run on x.permute(0, 3, 1, 2)
    (a module over (w, c) as if they were (h, w) would not match). Also where the last block's
    output is read as (n, h*w, c) tokens (VOLO): its module was built as if (n, c, h, w)."""
    import nets
    art = compile_model(f"{NETS}:{net}", "lite", tmp_path / "a", resolution=RES, batch_size=BATCH,
                        lite=LiteOptions(final_scale=0.5))
    report = art.manifest["lite_modules"]
    assert [(m["input"], m["output"]) for m in report] == [([8, 7, 7], [8, 7, 7])] * 2
    params = initializers(art)
    model = getattr(nets, net)()
    for i, r in enumerate(report, start=1):
        model.blocks[i] = ChannelsLastWithLite(model.blocks[i], r, params, f"lite{i}", whole_kernel=False)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((BATCH, 3, RES, RES), dtype=np.float32)
    y = rng.integers(0, 3, BATCH)
    logits_t = model(torch.from_numpy(x))
    F.cross_entropy(logits_t, torch.from_numpy(y)).backward()
    _, logits, grads = ort_step(art, x, y, 0.0)
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    for name, grad in grads.items():
        block, rest = (model.blocks[int(name[4])].lite, name.split(".", 1)[1]) if name.startswith("lite") else \
            (model, name)
        expected = dict(block.named_parameters())[rest].grad.numpy()
        np.testing.assert_allclose(grad, expected.reshape(grad.shape), rtol=1e-3, atol=1e-5, err_msg=name)


def test_parallel_streams_get_modules_beside_their_blocks(tmp_path):
    """HRNet (tests/families.py:hrnet) keeps a 16x16 and an 8x8 stream apart from the transition to the
    head: no single tensor separates the blocks inside them, so the stage is one segment; the residual
    blocks of both streams are found inside it (blocks.py, step 6) and each gets a module whose sum is
    what the next block, or the fusion, reads. The stage, with the stem, is the first block."""
    from conftest import TESTS
    from tinytlc.passes.forward import find_blocks
    from tinytlc.pipeline import forward_graph
    source = f"{TESTS / 'families.py'}:hrnet"
    blocks = find_blocks(forward_graph(source, "last", 3, 32)[0].graph)
    assert [(list(b.input.shape)[1:], list(b.output.shape)[1:], b.stride, b.kind) for b in blocks] == \
        [([3, 32, 32], [16, 8, 8], 4, "residual-projection")] + \
        [([8, 16, 16], [8, 16, 16], 1, "residual"), ([16, 8, 8], [16, 8, 8], 1, "residual")] * 2
    art = compile_model(source, "lite", tmp_path / "a", num_classes=3, resolution=32, batch_size=2)
    report = art.manifest["lite_modules"]
    assert art.manifest["lite_blocks"] == 5 and not art.manifest["lite_skipped"]
    assert [(m["block"], m["input"], m["output"]) for m in report] == \
        [("residual", [8, 16, 16], [8, 16, 16]), ("residual", [16, 8, 8], [16, 8, 8])] * 2
    graph = onnx.load(art.path / "forward_model.onnx").graph
    producer = {o: n for n in graph.node for o in n.output}

    def sources(name):  # the graph inputs and initializers a tensor is computed from
        seen, todo = set(), [name]
        while todo:
            v = todo.pop()
            if v not in seen:
                seen.add(v)
                todo += [i for i in producer[v].input if i] if v in producer else []
        return {v for v in seen if v not in producer}

    for k, b in enumerate(blocks[1:], start=1):  # each block's output is read only by its module's Add
        (add,) = [n for n in graph.node if b.output.name in n.input]
        (branch,) = [i for i in add.input if i != b.output.name]
        assert add.op_type == "Add" and f"lite{k}.conv2.weight" in sources(branch)


def test_tokens_laid_out_sequence_first_get_modules(tmp_path):
    """CLIP runs its blocks on (tokens, batch, dim) (nn.MultiheadAttention's default layout). They
    got no module ("shapes unknown": the batch on the second axis). The token module works per token,
    so the same network written batch-first gets the same modules and, on one batch, the same lite
    gradients; the step equals ORT's own graph."""
    from test_gradients import BATCH as B, RES as R, assert_same_step
    arts = {tag: compile_model(f"{NETS}:{net}", "lite", tmp_path / tag, resolution=R, batch_size=B, passes=passes)
            for tag, net, passes in (("plain", "clip_net", []), ("lean", "clip_net", None),
                                     ("first", "clip_batch_first_net", None))}
    for art in arts.values():
        assert not art.manifest["lite_skipped"], art.manifest["lite_skipped"]
        # (a block per residual: attention, MLP; the first gets none)
        assert [(m["input"], m["output"]) for m in art.manifest["lite_modules"]] == [([10, 8], [10, 8])] * 5
    grads = assert_same_step(arts["plain"], arts["lean"], 11, 1e-5, 1e-6)
    x, y = np.random.default_rng(11).standard_normal((B, 3, R, R), dtype=np.float32), np.arange(B) % 3
    (_, _, first), (_, _, lnd) = ort_step(arts["first"], x, y, 0.0), ort_step(arts["lean"], x, y, 0.0)
    lite = [n for n in lnd if n.startswith("lite")]
    assert lite and set(lite) <= set(first) and set(lite) <= set(grads)
    for name in lite:
        np.testing.assert_allclose(lnd[name], first[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_block_batched_otherwise_gets_no_module(tmp_path):
    """GCViT's global query (tests/nets.py:global_query_net): made from the map of each image, then
    repeated over its windows. A block ending at that query was given a module made from its input
    (batched by images) and added to its output (batched by windows x images): ORT refused the
    trial step. It is skipped, and said; the other blocks keep theirs."""
    from test_gradients import BATCH as B, RES as R, assert_same_step
    plain, lean = (compile_model(f"{NETS}:global_query_net", "lite", tmp_path / tag, resolution=R, batch_size=B,
                                 passes=passes) for tag, passes in (("plain", []), ("lean", None)))
    skipped = lean.manifest["lite_skipped"]
    assert len(skipped) == 1 and re.fullmatch(r"its output's batch axis \(unk__\d+\) is not its input's \(batch\)", skipped[0]["reason"])
    assert len(lean.manifest["lite_modules"]) == lean.manifest["lite_blocks"] - 2 == 3
    assert_same_step(plain, lean, 12, 1e-5, 1e-6)


def test_blocks_that_pool_their_tokens_get_modules(tmp_path):
    """PiT's and LeViT's pooling (tests/nets.py:pooled_tokens_net: a class token and a 5 x 5 grid,
    26 tokens -> 10 -> 5) got no module ("26 tokens in, 10 out"). The module now averages the grid
    as the block pools it; the step equals ORT's own graph."""
    from test_gradients import BATCH as B, RES as R, assert_same_step
    plain, lean = (compile_model(f"{NETS}:pooled_tokens_net", "lite+bias", tmp_path / tag, resolution=R, batch_size=B,
                                 passes=passes) for tag, passes in (("plain", []), ("lean", None)))
    assert not lean.manifest["lite_skipped"], lean.manifest["lite_skipped"]
    assert [(m["input"], m["output"], m["stride"]) for m in lean.manifest["lite_modules"]] == \
        [([26, 8], [10, 16], 2), ([10, 16], [10, 16], 1), ([10, 16], [5, 16], 2), ([5, 16], [5, 16], 1)]
    assert_same_step(plain, lean, 13, 1e-5, 1e-6)


@pytest.mark.parametrize("prefix,side,out", [(1, 4, 2), (0, 5, 3), (2, 6, 2), (0, 3, 1)])
def test_pooled_tokens_are_the_grid_averaged(prefix, side, out):
    """The module's pooling of (N, prefix + side^2, D) tokens: the prefix kept, the grid read row
    by row and averaged over stride x stride windows (zeros past its end count, as in the image
    module's pooling), numpy's reference."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from tinytlc.passes.forward.lite_residual import LiteResidualPass, token_pooling
    found = token_pooling(prefix + side * side, prefix + out * out)
    assert found is not None and found[:2] == (prefix, side)
    stride, dim = found[2], 3
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", prefix + side * side, dim])], [])
    irm = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    t = ir.tape.Tape(irm.graph)
    y = LiteResidualPass()._pool_tokens(irm.graph, t, irm.graph.inputs[0], "t", prefix, side, stride, dim)
    irm.graph.extend(t.nodes)
    irm.graph.outputs.append(y)
    y.type = ir.TensorType(ir.DataType.FLOAT)
    x = np.random.default_rng(14).standard_normal((2, prefix + side * side, dim), dtype=np.float32)
    import onnxruntime as ort
    got = ort.InferenceSession(ir.serde.serialize_model(irm).SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    grid = np.zeros((2, out * stride, out * stride, dim), np.float32)
    grid[:, :side, :side] = x[:, prefix:].reshape(2, side, side, dim)
    pooled = grid.reshape(2, out, stride, out, stride, dim).mean((2, 4)).reshape(2, out * out, dim)
    np.testing.assert_allclose(got, np.concatenate([x[:, :prefix], pooled], 1), rtol=1e-6, atol=1e-6)
