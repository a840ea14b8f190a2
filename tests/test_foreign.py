""".onnx files written by other tools: tf2onnx-style `auto_pad`, a trailing Softmax, IR version 3,
BatchNorm exported in training mode, weights in Constant nodes, a float16 round trip, quantized
files. Each is made by editing a PyTorch export, and one training step must give PyTorch
autograd's gradients for the original network (same names: the head is kept)."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import NETS
from onnx import helper
from test_gradients import ort_step

from tinytlc.errors import TinyTLError
from tinytlc.export import load_source
from tinytlc.pixels import IMAGENET
from tinytlc.pipeline import compile_model

BATCH = 2


def export(net: nn.Module, path, res: int, opset: int = 17, **kw):
    torch.onnx.export(net.eval(), (torch.zeros(1, 3, res, res),), str(path), dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, **kw)
    return onnx.load(str(path))


def assert_step_matches_torch(tmp_path, file, net: nn.Module, res: int, methods=("full", "norm+last"), rtol=2e-4,
                              rename=None) -> dict:
    """Each method's trained tensors get torch's gradients (and the loss is torch's). Methods that fold
    BatchNorm into convs (bias, lite) train tensors torch does not have: ask for them on nets without BN.
    `rename`: the file's name -> (torch's name, transposed) for weights saved under other names (by_value).
    Returns each method's trained names (torch's)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 3, res, res), dtype=np.float32)
    y = rng.integers(0, 3, BATCH)
    net.eval().zero_grad()
    loss_t = F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
    loss_t.backward()
    grads_t = {n: p.grad.numpy() for n, p in net.named_parameters() if p.requires_grad}  # (frozen: not trained)
    trained = {}
    for method in methods:
        art = compile_model(str(file), method, tmp_path / method, resolution=res, batch_size=BATCH)
        loss, _, grads = ort_step(art, x, y, 0.0)
        rename = rename or {}
        grads = {rename.get(k, (k, False))[0]: g.T if rename.get(k, (k, False))[1] else g for k, g in grads.items()}
        np.testing.assert_allclose(loss, float(loss_t), rtol=1e-5, err_msg=method)
        assert grads and set(grads) <= set(grads_t), f"{method}: {set(grads) - set(grads_t)}"
        if method == "full":
            assert set(grads) == set(grads_t), f"full trains {sorted(grads)}"
        for name, g in grads.items():
            np.testing.assert_allclose(g.reshape(grads_t[name].shape), grads_t[name], rtol=rtol, atol=1e-6,
                                       err_msg=f"{method}: {name}")
        trained[method] = sorted(grads)
    return trained


def by_value(file, net: nn.Module) -> dict:
    """The file's initializer name -> (torch's parameter name, transposed) for parameters an exporter
    or ORT saved under another name (torch's MatMul weights, folded transposes)."""
    params = {n: p.detach().numpy() for n, p in net.named_parameters()}
    found = {}
    for t in onnx.load(str(file)).graph.initializer:
        a = onnx.numpy_helper.to_array(t)
        for name, p in params.items():
            if t.name not in params and a.shape == p.shape and np.array_equal(a, p):
                found[t.name] = (name, False)
            elif t.name not in params and a.ndim == 2 and a.T.shape == p.shape and np.array_equal(a.T, p):
                found[t.name] = (name, True)
    return found


class SamePadded(nn.Module):
    """A conv or max-pool with TensorFlow's 'same' padding, written out with F.pad."""

    def __init__(self, op: nn.Module, upper: bool):
        super().__init__()
        self.op, self.upper, self.same = op, upper, True

    def forward(self, x):
        if not self.same:
            return self.op(x)
        k, s, d = (self.op.kernel_size, self.op.stride, self.op.dilation)
        k, s, d = [(v if isinstance(v, tuple) else (v, v))[0] for v in (k, s, d)]
        pads = []
        for size in (x.shape[3], x.shape[2]):  # F.pad: last dimension first
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            pads += [total // 2, total - total // 2] if self.upper else [total - total // 2, total // 2]
        value = -float("inf") if isinstance(self.op, nn.MaxPool2d) else 0.0
        return self.op(F.pad(x, pads, value=value))


def same_net():
    torch.manual_seed(0)
    return nn.Sequential(
        SamePadded(nn.Conv2d(3, 8, 3), upper=True), nn.ReLU(),
        SamePadded(nn.Conv2d(8, 8, 3, stride=2, groups=8), upper=False), nn.ReLU6(),
        SamePadded(nn.Conv2d(8, 8, 3, dilation=2), upper=True), nn.ReLU(),
        SamePadded(nn.MaxPool2d(3, stride=2), upper=True),
        SamePadded(nn.Conv2d(8, 16, 1, stride=2), upper=True), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


@pytest.mark.parametrize("res", [15, 16])
def test_auto_pad_same_trains_exactly(tmp_path, res):
    """tf2onnx writes 'same' convs as auto_pad=SAME_*: ORT's ConvGrad ignores auto_pad, so unless
    tinytlc writes the pads out the gradients are wrong (this test fails by up to 125%)."""
    net = same_net()
    for m in net.modules():
        if isinstance(m, SamePadded):
            m.same = False  # export the bare ops, then mark them 'same'
    model = export(net, tmp_path / "bare.onnx", 48)  # (unpadded, the ops need a larger image)
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_value = res
    modes = iter(["SAME_UPPER", "SAME_LOWER", "SAME_UPPER", "SAME_UPPER", "SAME_UPPER"])
    for node in model.graph.node:
        if node.op_type in ("Conv", "MaxPool"):
            for a in [a for a in node.attribute if a.name == "pads"]:
                node.attribute.remove(a)
            node.attribute.append(helper.make_attribute("auto_pad", next(modes)))
    del model.graph.value_info[:]
    onnx.save(model, tmp_path / "same.onnx")
    for m in net.modules():
        if isinstance(m, SamePadded):
            m.same = True
    assert_step_matches_torch(tmp_path, tmp_path / "same.onnx", net, res, methods=("full", "bias", "last"))


def conv_net(final=None, dropout=False):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1, groups=8),
              nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers += [nn.Dropout(0.5)] * dropout + [nn.Linear(16, 3)] + ([final] if final else [])
    net = nn.Sequential(*layers)
    with torch.no_grad():  # statistics that are not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.bias.uniform_(-0.3, 0.3), m.weight.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("final", [nn.Softmax(dim=1), nn.LogSoftmax(dim=-1)], ids=["softmax", "logsoftmax"])
def test_a_final_softmax_is_left_out(tmp_path, final):
    """Deployed classifiers end in Softmax; the loss wants the logits before it."""
    export(conv_net(final), tmp_path / "m.onnx", 16, do_constant_folding=False)
    assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", conv_net(), 16)
    art = compile_model(str(tmp_path / "m.onnx"), "last", tmp_path / "n", num_classes=5, resolution=16, batch_size=BATCH)
    assert f"final {type(final).__name__} left out" in art.manifest["source"]


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic-batch", "fixed-batch"])
def test_ir_version_3_file(tmp_path, fixed):
    """Old model-zoo files: IR 3, opset 9, initializers listed as graph inputs, often a fixed batch."""
    model = export(conv_net(), tmp_path / "m.onnx", 16, opset=9, keep_initializers_as_inputs=True,
                   do_constant_folding=False)
    model.ir_version = 3
    if fixed:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, tmp_path / "ir3.onnx")
    assert_step_matches_torch(tmp_path, tmp_path / "ir3.onnx", conv_net(), 16)


def test_a_file_exported_in_training_mode(tmp_path):
    """torch's TrainingMode.TRAINING writes BatchNorm with its statistics outputs and Dropout with a
    training_mode input; tinytlc trains it as the eval-mode network (as `full` does for a BN)."""
    net = conv_net(dropout=True).train()
    export(net, tmp_path / "m.onnx", 16, training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    assert any(len(n.output) == 3 for n in onnx.load(tmp_path / "m.onnx").graph.node if n.op_type == "BatchNormalization")
    assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", net, 16,  # (export's trace moved the statistics)
                              methods=("full", "norm+last"))


class HalfReLU(nn.Module):
    def forward(self, x):
        return torch.relu(x.half()).float()


def test_a_float16_stretch_inside_a_float32_network(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), HalfReLU(), nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    export(net, tmp_path / "m.onnx", 16)
    assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", net, 16, methods=("full", "bias", "last"), rtol=2e-3)


def test_quantized_and_float16_files_are_refused_by_name(tmp_path):
    model = export(conv_net(), tmp_path / "m.onnx", 16)
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == first.input[1])
    half = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight).astype(np.float16), weight.name + ".half")
    model.graph.initializer.append(half)
    model.graph.node.insert(0, helper.make_node("Cast", [half.name], [weight.name + ".float"], to=onnx.TensorProto.FLOAT))
    first.input[1] = weight.name + ".float"
    onnx.save(model, tmp_path / "half.onnx")
    with pytest.raises(TinyTLError, match="weights are FLOAT16; tinytlc trains float32"):
        compile_model(str(tmp_path / "half.onnx"), "bias", tmp_path / "a", resolution=16, batch_size=BATCH)
    model = export(conv_net(), tmp_path / "m.onnx", 16)
    x = model.graph.input[0].name
    scale = onnx.numpy_helper.from_array(np.float32(0.02), "s")
    zero = onnx.numpy_helper.from_array(np.uint8(128), "z")
    model.graph.initializer.extend([scale, zero])
    model.graph.node.insert(0, helper.make_node("QuantizeLinear", [x, "s", "z"], ["xq"]))
    model.graph.node.insert(1, helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]))
    for node in model.graph.node[2:]:
        node.input[:] = ["xdq" if i == x else i for i in node.input]
    onnx.save(model, tmp_path / "qdq.onnx")
    with pytest.raises(TinyTLError, match=r"a quantized model \(DequantizeLinear, QuantizeLinear\)"):
        compile_model(str(tmp_path / "qdq.onnx"), "bias", tmp_path / "b", resolution=16, batch_size=BATCH)


def test_weights_held_in_constant_nodes(tmp_path):
    """Some converters write weights as Constant nodes: they are still the parameters."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU6(),
                        nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1, groups=16), nn.ReLU6(),
                        nn.Conv2d(16, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    model = export(net, tmp_path / "m.onnx", 16)
    lite = compile_model(str(tmp_path / "m.onnx"), "lite+bias", tmp_path / "lite0", resolution=16, batch_size=BATCH)
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    nodes = constants + list(model.graph.node)
    del model.graph.initializer[:], model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, tmp_path / "constants.onnx")
    assert_step_matches_torch(tmp_path, tmp_path / "constants.onnx", net, 16, methods=("full", "bias"))
    art = compile_model(str(tmp_path / "constants.onnx"), "lite+bias", tmp_path / "lite", resolution=16, batch_size=BATCH)
    assert len(art.manifest["lite_modules"]) == len(lite.manifest["lite_modules"]) > 0


class Normalising(nn.Module):
    """A network that normalises its own input, as deployed files often do."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.net = kind, conv_net()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        if self.kind == "0..255 torch":
            x = (x / 255 - self.mean) / self.std
        elif self.kind == "0..255 keras":
            x = x / 127.5 - 1
        else:
            x = (x - self.mean) / self.std
        return self.net(x)


@pytest.mark.parametrize("kind,pixels", [("0..255 torch", 255), ("0..255 keras", 255), ("0..1 torch", 1)])
def test_a_network_that_normalises_its_own_input(tmp_path, kind, pixels):
    """tinytlc feeds it raw pixels in the range it expects (not ImageNet-normalised ones, which it
    would normalise twice), and `full` does not train its mean and std."""
    from tinytlc.data import Preprocess
    net = Normalising(kind)
    export(net, tmp_path / "m.onnx", 16, do_constant_folding=False)
    assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", net, 16)  # (trains torch's parameters only)
    art = compile_model(str(tmp_path / "m.onnx"), "bias", tmp_path / "b", num_classes=5, resolution=16, batch_size=BATCH)
    assert f"it normalises its own input: fed pixels in 0..{pixels}" in art.manifest["source"]
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    fed = Preprocess.from_manifest(art.manifest)([image])
    np.testing.assert_allclose(fed[0], image.transpose(2, 0, 1) / 255 * pixels, rtol=1e-5, atol=1e-5)


MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class Preprocessing(nn.Module):
    """Networks that take 0..255 pixels and normalise them as converters write it, or do something
    tinytlc cannot read as a normalisation."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.net = kind, conv_net()
        self.bn = nn.BatchNorm2d(3).requires_grad_(False)  # MXNet's data_bn: preprocessing, frozen
        if kind == "data_bn":
            with torch.no_grad():
                self.bn.running_mean.copy_(torch.tensor([123.7, 116.3, 103.5]))
                self.bn.running_var.copy_(torch.tensor([58.4, 57.1, 57.4]) ** 2)
                self.bn.weight.uniform_(0.5, 1.5), self.bn.bias.uniform_(-0.3, 0.3)
        self.mean_image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 40 + 100
        self.keras = torch.tensor([1 / 127.5] * 3), torch.tensor([-1.0] * 3)
        self.vignette = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        if self.kind == "shape":  # `B = x.shape[0]`: a Shape node reads the image too
            b = x.shape[0]
            return self.net[-1](self.net[:-2]((x / 255 - MEAN) / STD).reshape(b, -1))
        if self.kind == "keras":  # tf2onnx --inputs-as-nchw of a Keras Rescaling: in NHWC, (3,) constants
            return self.net((x.permute(0, 2, 3, 1) * self.keras[0] + self.keras[1]).permute(0, 3, 1, 2))
        if self.kind in ("data_bn", "bn on normalised pixels"):
            return self.net(self.bn(x))
        if self.kind == "mean image":  # Caffe's, (1, 3, H, W)
            return self.net((x - self.mean_image) * 0.017)
        if self.kind == "vignette":
            return self.net(x * self.vignette)
        return self.net((x / 255 - MEAN) / STD)  # "cast": a Cast to float goes in front (below)


@pytest.mark.parametrize("kind", ["cast", "shape", "keras", "data_bn", "mean image"])
def test_a_network_that_normalises_its_own_input_otherwise(tmp_path, kind):
    """Beyond a bare chain of Sub/Div after the image: through a Cast, beside a Shape reader, over the
    last axis between two Transposes, a BatchNorm on raw pixels (made Mul + Add by its frozen scale
    and shift, trained by no method), a mean image (its per-channel mean says 0..255; not trained)."""
    net = Preprocessing(kind)
    model = export(net, tmp_path / "m.onnx", 16, do_constant_folding=False)
    if kind == "cast":
        x = model.graph.input[0].name
        for node in model.graph.node:
            node.input[:] = [f"{x}_f" if i == x else i for i in node.input]
        model.graph.node.insert(0, helper.make_node("Cast", [x], [f"{x}_f"], to=onnx.TensorProto.FLOAT))
        onnx.save(model, tmp_path / "m.onnx")
    source = load_source(str(tmp_path / "m.onnx"), 16)
    assert source.preprocess == {"mean": [0.0] * 3, "std": [1 / 255] * 3}
    assert (f"it normalises its own input{' (its mean image read per channel)' * (kind == 'mean image')}: "
            "fed pixels in 0..255") in source.description
    if kind in ("keras", "data_bn", "mean image"):
        assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", net, 16,
                                  methods=("full", "norm+last") if kind == "data_bn" else ("full",))


@pytest.mark.parametrize("kind,op", [("vignette", "Mul"), ("bn on normalised pixels", "BatchNormalization")])
def test_preprocessing_tinytlc_cannot_read_is_said(tmp_path, kind, op):
    """A per-pixel weight, or a BatchNorm whose statistics (mean 0) are not those of raw pixels: fed
    ImageNet-normalised pixels, and compile's first line says so."""
    export(Preprocessing(kind), tmp_path / "m.onnx", 16, do_constant_folding=False)
    source = load_source(str(tmp_path / "m.onnx"), 16)
    assert source.preprocess == IMAGENET
    assert f"it seems to preprocess its own input ({op} " in source.description
    assert "in a way tinytlc cannot read: fed ImageNet-normalised pixels" in source.description


class PixelHead(nn.Module):
    """BiT's head: pool, 1x1 conv, then one pixel (`x[..., 0, 0]`)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1))
        self.head = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        return self.head(self.body(x))[..., 0, 0]


def test_a_conv_head_read_at_one_pixel(tmp_path):
    export(PixelHead(), tmp_path / "m.onnx", 16)
    assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", PixelHead(), 16, methods=("full", "bias", "last"))
    art = compile_model(str(tmp_path / "m.onnx"), "last", tmp_path / "n", num_classes=5, resolution=16, batch_size=BATCH)
    assert art.manifest["trainable"] == ["head.weight", "head.bias"]


def _adapted_file(tmp_path, cast: bool):
    """conv_net's file, given a float or uint8 NHWC input (Cast and Transpose as its first nodes)."""
    model = export(conv_net(), tmp_path / "m.onnx", 16, do_constant_folding=False)  # (torch's names)
    x = model.graph.input[0]
    x.type.tensor_type.shape.dim[1].dim_value, x.type.tensor_type.shape.dim[3].dim_value = 16, 3
    front = [helper.make_node("Transpose", ["f" if cast else x.name], ["nchw"], perm=[0, 3, 1, 2])]
    if cast:
        x.type.tensor_type.elem_type = onnx.TensorProto.UINT8
        front.insert(0, helper.make_node("Cast", [x.name], ["f"], to=onnx.TensorProto.FLOAT))
        front.insert(2, helper.make_node("Div", ["nchw", "c255"], ["scaled"]))
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(255, np.float32), "c255"))
    for node in model.graph.node:
        node.input[:] = [("scaled" if cast else "nchw") if i == x.name else i for i in node.input]
    for i, node in enumerate(front):
        model.graph.node.insert(i, node)
    onnx.save(model, tmp_path / "adapted.onnx")
    return tmp_path / "adapted.onnx"


def test_uint8_and_channels_last_inputs_train_and_export_as_they_came(tmp_path):
    """tf2onnx's Keras models take NHWC images (a Transpose first), deployed ones uint8 (a Cast
    first): tinytlc trains on float NCHW batches (its gradients equal torch's) and the exported
    model takes what the file took."""
    from tinytlc.runtime.inference import export_inference
    file = _adapted_file(tmp_path, cast=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH, 3, 16, 16)).astype(np.float32)  # (NCHW, as tinytlc feeds it)
    y = rng.integers(0, 3, BATCH)
    net = conv_net().eval()
    loss_t = F.cross_entropy(net(torch.from_numpy(x) / 255), torch.from_numpy(y))
    loss_t.backward()
    from tinytlc.onnx_file import file_resolution
    assert file_resolution(str(file)) == 16  # (the default --resolution: H and W of an NHWC file)
    art = compile_model(str(file), "full", tmp_path / "a", resolution=16, batch_size=BATCH)
    assert art.manifest["preprocess"]["std"] == [1 / 255] * 3 and "uint8 NHWC" in art.manifest["source"]
    loss, _, grads = ort_step(art, x, y, 0.0)
    np.testing.assert_allclose(loss, float(loss_t), rtol=1e-5)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(grads[name].reshape(p.shape), p.grad.numpy(), rtol=2e-4, atol=1e-6, err_msg=name)
    export_inference(art.path, art.manifest, tmp_path / "out.onnx")  # (checks itself against the eval model)
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    given = session.get_inputs()[0]
    assert given.type == "tensor(uint8)" and given.shape[1:] == [16, 16, 3]
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).astype(np.uint8)
    np.testing.assert_allclose(session.run(None, {given.name: nhwc})[0], net(torch.from_numpy(x) / 255).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


class KerasFront(nn.Module):
    """A Keras model as tf2onnx writes it without --inputs-as-nchw: NHWC images, rescaled in NHWC
    (Rescaling(1 / 127.5, -1)) before the Transpose to NCHW, and the batch read off the image."""

    def __init__(self):
        super().__init__()
        self.net = conv_net()

    def forward(self, x):
        return self.net((x * (1 / 127.5) - 1.0).permute(0, 3, 1, 2)).reshape(x.shape[0], -1)


def test_a_channels_last_input_read_before_its_transpose(tmp_path):
    """An NHWC input read by more than a Transpose to NCHW (a Rescaling, a Shape) trains on NCHW
    batches through an NHWC view of them: torch's gradients; the export takes NHWC again."""
    from tinytlc.runtime.inference import export_inference
    torch.onnx.export(KerasFront().eval(), (torch.zeros(1, 16, 16, 3),), str(tmp_path / "m.onnx"), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                      do_constant_folding=False)  # (torch's names)
    readers = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node if "x" in n.input}
    assert readers == {"Mul", "Shape"}, readers  # (what the test is about: no Transpose reads the image)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH, 3, 16, 16)).astype(np.float32)  # (NCHW, as tinytlc feeds it)
    y = rng.integers(0, 3, BATCH)
    net = KerasFront().eval()
    nhwc = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    F.cross_entropy(net(nhwc), torch.from_numpy(y)).backward()
    art = compile_model(str(tmp_path / "m.onnx"), "full", tmp_path / "a", resolution=16, batch_size=BATCH)
    assert art.manifest["preprocess"]["std"] == [1 / 255] * 3 and "NHWC" in art.manifest["source"]
    _, _, grads = ort_step(art, x, y, 0.0)
    assert set(grads) == {n for n, _ in net.named_parameters()}
    for name, p in net.named_parameters():
        np.testing.assert_allclose(grads[name].reshape(p.shape), p.grad.numpy(), rtol=2e-4, atol=1e-6, err_msg=name)
    export_inference(art.path, art.manifest, tmp_path / "out.onnx")  # (checks itself against the eval model)
    exported = onnx.load(str(tmp_path / "out.onnx"))
    assert "Transpose" not in [n.op_type for n in exported.graph.node if "x" in n.input]  # (no Transpose pair)
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [16, 16, 3]
    np.testing.assert_allclose(session.run(None, {"x": nhwc.numpy()})[0], net(nhwc).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_a_non_square_input_is_named(tmp_path):
    model = export(conv_net(), tmp_path / "m.onnx", 16)
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 24
    onnx.save(model, tmp_path / "wide.onnx")
    with pytest.raises(TinyTLError, match="is 16x24 pixels; tinytlc trains square images"):
        compile_model(str(tmp_path / "wide.onnx"), "bias", tmp_path / "a", resolution=16, batch_size=BATCH)


def test_an_if_on_a_constant_is_its_branch(tmp_path):
    """tf2onnx keeps `tf.cond` on a constant (a learning phase) as an If: it is the branch it takes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    model = export(net, tmp_path / "m.onnx", 16)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    out = lambda op: helper.make_graph([helper.make_node(op, [relu.input[0]], [op])], op, [],  # noqa: E731
                                       [helper.make_tensor_value_info(op, onnx.TensorProto.FLOAT, None)])
    relu.CopyFrom(helper.make_node("If", ["cond"], list(relu.output), then_branch=out("Relu"), else_branch=out("Neg")))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["cond"], value=onnx.numpy_helper.from_array(np.array(True))))
    onnx.save(model, tmp_path / "if.onnx")
    assert_step_matches_torch(tmp_path, tmp_path / "if.onnx", net, 16, methods=("full", "bias"))


def test_an_opset_6_file_with_a_symbolic_batch(tmp_path):
    """onnx's converter asserts on symbolic dims from opset 6 (Dropout is_test, Gemm broadcast)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Dropout(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 3))
    inits = [onnx.numpy_helper.from_array(p.detach().numpy(), n) for n, p in net.named_parameters()]
    nodes = [helper.make_node("Conv", ["x", "0.weight", "0.bias"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Dropout", ["r"], ["d"], is_test=1),
             helper.make_node("GlobalAveragePool", ["d"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "5.weight", "5.bias"], ["y"], transB=1, broadcast=1)]
    inputs = [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]  # (IR 3 lists them)
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, 16, 16])]
                              + inputs, [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3), tmp_path / "m.onnx")
    assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", net, 16, methods=("full", "bias"))


class Then(nn.Module):
    def __init__(self, *fns):
        super().__init__()
        self.fns = fns

    def forward(self, x):
        for f in self.fns:
            x = f(x)
        return x


@pytest.mark.parametrize("head,after", [
    ("linear", Then(lambda x: x.softmax(1), lambda x: x.view(-1, 3, 1, 1))),  # Caffe's (N, K, 1, 1)
    ("linear", Then(lambda x: x.softmax(1), lambda x: x.unsqueeze(-1))),
    ("conv", Then(lambda x: x.softmax(1), lambda x: x.flatten(1)))], ids=["reshape", "unsqueeze", "conv-head"])
def test_a_softmax_before_view_ops_is_left_out(tmp_path, head, after):
    torch.manual_seed(0)
    body = [nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
    net = nn.Sequential(*body, nn.Flatten(), nn.Linear(8, 3)) if head == "linear" else \
        nn.Sequential(*body, nn.Conv2d(8, 3, 1))
    export(nn.Sequential(*net, after), tmp_path / "m.onnx", 16)
    ref = net if head == "linear" else nn.Sequential(*net, nn.Flatten())
    assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", ref, 16, methods=("full",))


@pytest.mark.parametrize("softmax", [False, True], ids=["logits", "softmax"])
def test_logits_of_shape_n_k_1_1_are_flattened(tmp_path, softmax):
    """A 1x1-conv classifier after global pooling, no Flatten (Caffe, SqueezeNet-style conversions):
    every method failed with ORT's "Invalid rank for input: labels"."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 3, 1))
    export(nn.Sequential(*net, *[nn.Softmax(1)] * softmax), tmp_path / "m.onnx", 16)
    assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", nn.Sequential(*net, nn.Flatten()), 16,
                              methods=("full", "bias"))
    art = compile_model(str(tmp_path / "m.onnx"), "last", tmp_path / "n", num_classes=5, resolution=16, batch_size=BATCH)
    assert "its (N, K, 1, 1) logits flattened to (N, K)" in art.manifest["source"]
    rng = np.random.default_rng(0)
    assert ort_step(art, rng.standard_normal((BATCH, 3, 16, 16), dtype=np.float32), np.array([0, 4]), 0.0)[1].shape == (BATCH, 5)


def test_an_unused_second_input_is_left_out(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    model = export(net, tmp_path / "m.onnx", 16)
    model.graph.input.append(helper.make_tensor_value_info("unused_flag", onnx.TensorProto.FLOAT, [1]))
    onnx.save(model, tmp_path / "two.onnx")
    assert_step_matches_torch(tmp_path, tmp_path / "two.onnx", net, 16, methods=("bias",))
    art = compile_model(str(tmp_path / "two.onnx"), "last", tmp_path / "n", resolution=16, batch_size=BATCH)
    assert "its unused input 'unused_flag' left out" in art.manifest["source"]


class FusedByOrt(nn.Module):
    """What ORT_ENABLE_EXTENDED fuses. CNN: Conv + Relu / LeakyRelu / Clip (FusedConv), Linear + Relu
    (FusedGemm). Tokens: Conv + SiLU (QuickGelu), a MatMul of a transposed input (FusedMatMul), Linear +
    GELU (BiasGelu), a MatMul times 0.5 (FusedMatMul alpha)."""

    def __init__(self, kind):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        if kind == "cnn":
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1)
            self.c3, self.fc1, self.fc2 = nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.Linear(8, 16), nn.Linear(16, 3)
        else:
            self.c1, self.fc1, self.fc2 = nn.Conv2d(3, 16, 4, 4), nn.Linear(16, 32), nn.Linear(32, 16)
            self.w, self.head = nn.Parameter(torch.randn(16, 16) * 0.2), nn.Linear(16, 3)

    def forward(self, x):
        if self.kind == "cnn":
            x = F.leaky_relu(self.c2(F.relu(self.c1(x))), 0.1)
            x = F.relu6(self.c3(x)) + x
            return self.fc2(F.relu(self.fc1(x.mean((2, 3)))))
        t = F.silu(self.c1(x)).flatten(2).transpose(1, 2)
        t = t + self.fc2(F.gelu(self.fc1(t)))
        return self.head((t + (t @ self.w.t()) * 0.5).mean(1))


@pytest.mark.parametrize("kind,fused", [("cnn", {"FusedConv", "FusedGemm"}),
                                        ("tokens", {"QuickGelu", "BiasGelu", "FusedMatMul"})])
def test_a_file_saved_after_ort_optimisations(tmp_path, kind, fused):
    """Users deploy the file ORT saves (optimized_model_filepath): at EXTENDED its fused com.microsoft ops
    are written back as ai.onnx ops (bias silently trained the classifier only); at ALL (NCHWc) it is refused."""
    import onnxruntime as ort

    from tinytlc.onnx_file import load_onnx
    net = FusedByOrt(kind)
    export(net, tmp_path / "m.onnx", 16)
    for level in ("EXTENDED", "ALL"):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
        opts.optimized_model_filepath = str(tmp_path / f"{level}.onnx")
        ort.InferenceSession(str(tmp_path / "m.onnx"), opts, providers=["CPUExecutionProvider"])
    assert fused <= {n.op_type for n in onnx.load(tmp_path / "EXTENDED.onnx").graph.node if n.domain == "com.microsoft"}
    trained = assert_step_matches_torch(tmp_path, tmp_path / "EXTENDED.onnx", net, 16, methods=("full", "bias"),
                                        rename=by_value(tmp_path / "EXTENDED.onnx", net))
    assert {"c1.bias", "fc1.bias"} | ({"c2.bias", "c3.bias"} if kind == "cnn" else set()) <= set(trained["bias"])
    with pytest.raises(TinyTLError, match=r"saved after ONNX Runtime's graph optimisations \(com.microsoft.nchwc.Conv, "
                                          r"com.microsoft.nchwc.ReorderOutput\): give tinytlc the original file or one "
                                          r"saved at ORT_ENABLE_BASIC"):
        load_onnx(tmp_path / "ALL.onnx", 16)


def test_ort_fused_ops_are_written_as_their_definitions():
    """Each com.microsoft op the unfuse pass writes out computes what ORT's kernel computes (both run
    with ORT's optimisations off): FusedConv with Z and activation parameters, FusedGemm's activation
    attributes, BiasGelu, FastGelu, Gelu, QuickGelu, FusedMatMul transposing an input of inferred rank."""
    import onnx_ir as ir
    import onnxruntime as ort

    from tinytlc.passes.forward.unfuse_ort_ops import UnfuseOrtOpsPass
    rng = np.random.default_rng(0)
    init = lambda name, *shape: onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5, name)  # noqa: E731
    ms = dict(domain="com.microsoft")
    nodes = [helper.make_node("Conv", ["x", "wz"], ["z"], pads=[1] * 4),
             helper.make_node("FusedConv", ["x", "w1", "b1", "z"], ["c1"], pads=[1] * 4, activation="HardSigmoid",
                              activation_params=[0.3, 0.4], **ms),
             helper.make_node("FusedConv", ["c1", "w2", "b2"], ["c2"], group=4, pads=[1] * 4, activation="LeakyRelu",
                              activation_params=[0.1], **ms),
             helper.make_node("FusedConv", ["c2", "w3"], ["c3"], activation="Clip", activation_params=[0.0, 0.5], **ms),
             helper.make_node("GlobalAveragePool", ["c3"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("FusedGemm", ["f", "g", "gb"], ["g1"], transB=1, activation="LeakyRelu",
                              activation_alpha=0.2, **ms),
             helper.make_node("BiasGelu", ["g1", "gb"], ["g2"], **ms),
             helper.make_node("FastGelu", ["g2", "gb"], ["g3"], **ms), helper.make_node("Gelu", ["g3"], ["g4"], **ms),
             helper.make_node("QuickGelu", ["g4"], ["g5"], alpha=1.702, **ms),
             helper.make_node("Unsqueeze", ["g5", "axis"], ["g6"]),
             helper.make_node("FusedMatMul", ["g6", "m"], ["y3"], transA=1, alpha=0.5, **ms),
             helper.make_node("FusedMatMul", ["y3", "m2"], ["y"], transB=1, **ms)]
    inits = [init("wz", 4, 3, 3, 3), init("w1", 4, 3, 3, 3), init("b1", 4), init("w2", 4, 1, 3, 3), init("b2", 4),
             init("w3", 4, 4, 1, 1), init("g", 5, 4), init("gb", 5), init("m", 5, 3), init("m2", 2, 3),
             onnx.numpy_helper.from_array(np.array([-1]), "axis")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    irm = ir.serde.deserialize_model(model)
    UnfuseOrtOpsPass()(irm)
    unfused = ir.serde.serialize_model(irm)
    assert {n.domain for n in unfused.graph.node} == {""}
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # (or ORT fuses them again)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(unfused), run(model), rtol=1e-5, atol=1e-6)


def bias_free_head_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3, bias=False))


@pytest.mark.parametrize("method", ["last", "full"])
def test_a_bias_free_head_gets_new_classes(tmp_path, method):
    """nn.Linear(bias=False) exports as MatMul(x, Transpose(W)): with --num-classes the Transpose's
    output takes the new shape too, and the step equals torch's with the new head."""
    art = compile_model(f"{__file__}:bias_free_head_net", method, tmp_path / "a", num_classes=5, resolution=16,
                        batch_size=BATCH)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(art.path / "forward_model.onnx").graph.initializer}
    net = bias_free_head_net()
    net[4] = nn.Linear(8, 5, bias=False)
    net[4].weight.data = torch.from_numpy(weights["4.weight"].copy())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((BATCH, 3, 16, 16), dtype=np.float32), rng.integers(0, 5, BATCH)
    loss_t = F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
    loss_t.backward()
    loss, logits, grads = ort_step(art, x, y, 0.0)
    assert logits.shape == (BATCH, 5)
    np.testing.assert_allclose(loss, float(loss_t), rtol=1e-5)
    expected = {n: p.grad.numpy() for n, p in net.named_parameters()}
    assert set(grads) == ({"4.weight"} if method == "last" else set(expected))
    for name, g in grads.items():
        np.testing.assert_allclose(g, expected[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["distilled_net", "stacked_heads_net"])
def test_averaged_heads_become_one_classifier(tmp_path, name):
    """A distilled DeiT averages two heads, CrossViT the stacked heads of its branches (three here):
    one Gemm over all tokens' features takes their place (passes/forward/merge_averaged_heads.py).
    `full` equals torch: the backbone's gradients, and the merged weight's [dW_1 ... dW_n] / s with
    s = 1/n (its bias: db_1 / s)."""
    import nets
    art = compile_model(f"{NETS}:{name}", "full", tmp_path / "a", resolution=16, batch_size=BATCH)
    net = getattr(nets, name)()
    heads = [h for h in ("head", "head_dist", "head_2") if getattr(net, h) is not None]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((BATCH, 3, 16, 16), dtype=np.float32), rng.integers(0, 3, BATCH)
    loss_t = F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
    loss_t.backward()
    loss, _, grads = ort_step(art, x, y, 0.0)
    np.testing.assert_allclose(loss, float(loss_t), rtol=1e-5)
    expected = {n: p.grad.numpy() for n, p in net.named_parameters() if not n.startswith("head")}
    expected["+".join(f"{h}.weight" for h in heads)] = len(heads) * np.concatenate([getattr(net, h).weight.grad for h in heads], 1)
    expected["+".join(f"{h}.bias" for h in heads)] = len(heads) * net.head.bias.grad.numpy()
    assert set(grads) == set(expected)
    for n, g in grads.items():
        np.testing.assert_allclose(g.reshape(expected[n].shape), expected[n], rtol=1e-4, atol=1e-6, err_msg=n)
    art = compile_model(f"{NETS}:{name}", "bias", tmp_path / "b", num_classes=5, resolution=16, batch_size=BATCH)
    assert ort_step(art, x, rng.integers(0, 5, BATCH), 0.0)[1].shape == (BATCH, 5)


def test_a_fixed_size_file_compiles_at_its_own_size(tmp_path, cli):
    """Without --resolution, compile takes a fixed-size file's own size (224 failed with a shape
    mismatch) and says so."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    torch.onnx.export(net.eval(), (torch.zeros(1, 3, 16, 16),), str(tmp_path / "m.onnx"), dynamo=False,
                      input_names=["x"], output_names=["y"])
    code, out, err = cli("compile", tmp_path / "m.onnx", "--method", "bias", "--batch-size", BATCH, "--out", tmp_path / "a")
    assert code == 0, err
    assert f"[{BATCH}, 3, 16, 16]" in out and "16 px, the file's own input size (no --resolution given)" in out


class FlatHead(nn.Module):
    """A head over the flattened 8 x 8 x 8 map at 32 px (no global pooling), as torch.flatten or view."""

    def __init__(self, view: bool):
        super().__init__()
        self.view, self.body, self.fc = view, nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1)), \
            nn.Linear(8 * 8 * 8, 3)

    def forward(self, x):
        x = self.body(x)
        return self.fc(x.view(x.size(0), -1) if self.view else torch.flatten(x, 1))


@pytest.mark.parametrize("view", [False, True], ids=["flatten", "view"])
def test_a_head_over_a_flattened_map_names_its_size(tmp_path, view):
    """At another resolution its Gemm gets another number of features: ORT said "GEMM: Dimension mismatch"."""
    from tinytlc.onnx_file import load_onnx
    torch.onnx.export(FlatHead(view).eval(), (torch.zeros(1, 3, 32, 32),), str(tmp_path / "m.onnx"), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    load_onnx(tmp_path / "m.onnx", 32)
    with pytest.raises(TinyTLError, match=r"its head \(Gemm /fc/Gemm\) reads a flattened 8 x H x W map \(512 features at "
                                          r"the exported size, 128 at 16 px\): compile at the size it was exported for "
                                          r"\(--resolution 32\)$"):
        load_onnx(tmp_path / "m.onnx", 16)


def test_an_ir_11_file_and_a_truncated_data_file_are_named(tmp_path):
    from tinytlc.onnx_file import load_onnx
    torch.manual_seed(0)
    model = export(nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Flatten(), nn.Linear(512, 3)), tmp_path / "m.onnx", 16)
    model.ir_version = 11  # (onnx >= 1.18 writes it; the checker said "not a valid ONNX model")
    onnx.save(model, tmp_path / "ir11.onnx")
    with pytest.raises(TinyTLError, match=r"IR version 11 is newer than this onnx \(1\.17\) reads; save it with "
                                          r"ir_version <= 10$"):
        load_onnx(tmp_path / "ir11.onnx", 16)
    model.ir_version = 8
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    data = (tmp_path / "ext.onnx.data").read_bytes()
    (tmp_path / "ext.onnx.data").write_bytes(data[:len(data) // 2])
    with pytest.raises(TinyTLError, match=r"its external data file ext.onnx.data is shorter than the tensors it should "
                                          r"hold \([\d,]+ of [\d,]+ bytes; truncated\?\)$"):
        load_onnx(tmp_path / "ext.onnx", 16)


class TokenMix(nn.Module):
    """Convs, then tokens (x.flatten(2).transpose(1, 2)) through a residual MLP: ORT's EXTENDED level
    fuses the transpose into the first Linear (FusedMatMul, transA)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.SiLU())
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        x = self.down(F.relu(x + self.a(x)))
        t = x.flatten(2).transpose(1, 2)
        return self.head((t + self.fc2(F.gelu(self.fc1(t)))).mean(1))


def test_lite_finds_the_same_blocks_after_ort_optimisations(tmp_path):
    """The Transpose that unfusing FusedMatMul writes is the one the residual path already reads
    (merged as a common subexpression): lite puts as many modules in the EXTENDED file as in the
    BASIC one (it lost the token block's)."""
    import onnxruntime as ort
    export(TokenMix(), tmp_path / "m.onnx", 32)
    counts = []
    for level in ("BASIC", "EXTENDED"):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
        opts.optimized_model_filepath = str(tmp_path / f"{level}.onnx")
        ort.InferenceSession(str(tmp_path / "m.onnx"), opts, providers=["CPUExecutionProvider"])
        art = compile_model(str(tmp_path / f"{level}.onnx"), "lite+bias", tmp_path / level, resolution=32, batch_size=BATCH)
        counts.append(len(art.manifest["lite_modules"]))
    assert "FusedMatMul" in {n.op_type for n in onnx.load(tmp_path / "EXTENDED.onnx").graph.node}
    assert counts == [2, 2]


def test_pixels_says_what_a_network_takes(tmp_path, cli):
    """Where compile cannot read the preprocessing (a per-pixel weight), --pixels says what the
    network takes; the manifest, which train, eval and export follow, records it."""
    import json
    export(Preprocessing("vignette"), tmp_path / "m.onnx", 16, do_constant_folding=False)
    code, out, err = cli("compile", tmp_path / "m.onnx", "--method", "bias", "--pixels", "0-255", "--out", tmp_path / "a",
                         "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["preprocess"]["mean"] == [0.0] * 3 and manifest["preprocess"]["std"] == [1 / 255] * 3
    assert manifest["source"].endswith("(fed pixels as --pixels 0-255 says)")
