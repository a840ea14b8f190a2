"""Which tensors a method trains in .onnx files written by other tools: exporters' constants and
buffers are not parameters (`full`), and a bias written as an Add after a conv is the conv's bias
(`bias`). One training step must give PyTorch autograd's gradients."""

import json

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper
from test_foreign import assert_step_matches_torch, export

from tinytlc.pipeline import compile_model


class ResizedThreshold(nn.Module):
    """Resizes its input (Resize's scales), and a per-channel threshold buffer feeds a comparison."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 2, 1), nn.Linear(8, 3)
        self.register_buffer("thresh", torch.randn(1, 8, 1, 1) * 0.1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        h = self.c1(x)
        h = torch.where(h > self.thresh, h, 0.1 * h)
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


def constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Float Constant nodes of rank >= 1 become initializers, as the dynamo exporter writes them
    (Resize's scales become an initializer `val_0`)."""
    g = model.graph
    for node in [n for n in g.node if n.op_type == "Constant"]:
        t = numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
        if t is not None and t.dtype == np.float32 and t.ndim >= 1:
            g.initializer.append(numpy_helper.from_array(t, node.output[0]))
            g.node.remove(node)
    return model


def test_full_trains_no_constants_or_buffers(tmp_path):
    net = ResizedThreshold()
    model = constants_as_initializers(export(net, tmp_path / "m.onnx", 16))
    assert any(n.op_type == "Resize" and n.input[2] in {i.name for i in model.graph.initializer}
               for n in model.graph.node)
    onnx.save(model, tmp_path / "m.onnx")
    assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", net, 16, methods=("full",))


class BiasAdd(nn.Module):
    """Convs written without a bias, each followed by an Add of its own (1, C, 1, 1) bias
    (functional PyTorch, TensorFlow's BiasAdd)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w1, self.b1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3), nn.Parameter(torch.randn(1, 8, 1, 1) * 0.1)
        self.w2, self.b2 = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.2), nn.Parameter(torch.randn(1, 8, 1, 1) * 0.1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(F.conv2d(x, self.w1, stride=2, padding=1) + self.b1)
        return self.fc(F.relu(self.b2 + F.conv2d(h, self.w2, padding=1)).mean((2, 3)))


def test_bias_trains_the_added_bias_only(tmp_path):
    """No zero conv bias beside the Add's: two biases would move together at twice the step."""
    net = BiasAdd()
    export(net, tmp_path / "m.onnx", 16)
    assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", net, 16, methods=("bias", "full"))
    trained = json.loads((tmp_path / "bias" / "tinytlc.json").read_text())["trainable"]
    assert sorted(trained) == ["b1", "b2", "fc.bias", "fc.weight"]


class Blurred(nn.Module):
    """timm's BlurPool2d (TResNet's anti-aliasing): a fixed binomial filter in a non-persistent
    buffer, which torch writes as a Constant node beside the initializer weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1), nn.Linear(8, 3)
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (k[:, None] * k[None, :] / 16).repeat(8, 1, 1, 1), persistent=False)

    def forward(self, x):
        h = F.conv2d(F.pad(F.relu(self.c1(x)), (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=8)
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


def test_a_fixed_filter_in_a_constant_node_is_no_parameter(tmp_path):
    """The blur filter stays constant (`full` trains what torch trains, with its gradients) and gets
    no zero bias (`bias`); before, it was lifted as a converter's weight and trained, and given a bias."""
    net = Blurred()
    model = export(net, tmp_path / "blur.onnx", 16)
    assert any(n.op_type == "Constant" and n.output[0] in {i for c in model.graph.node if c.op_type == "Conv"
                                                         for i in c.input} for n in model.graph.node)
    trained = assert_step_matches_torch(tmp_path, tmp_path / "blur.onnx", net, 16, methods=("full", "bias"))
    assert trained["full"] == sorted(n for n, _ in net.named_parameters())
    assert trained["bias"] == ["c1.bias", "c2.bias", "fc.bias", "fc.weight"]  # (no zero bias for the blur)
    art = compile_model(net, "bias", tmp_path / "module", resolution=16, batch_size=2)  # (the module route too)
    assert sorted(art.manifest["trainable"]) == trained["bias"]


class GroupNormed(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, 2, 1), nn.GroupNorm(2, 8)
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, 1, 1), nn.GroupNorm(4, 8)
        self.fc = nn.Linear(8, 3)
        for n in (self.n1, self.n2):
            nn.init.normal_(n.weight, 1.0, 0.3), nn.init.normal_(n.bias, 0.0, 0.3)

    def forward(self, x):
        return self.fc(F.relu(self.n2(self.c2(F.relu(self.n1(self.c1(x)))))).mean((2, 3)))


def test_the_ones_an_exported_group_norm_normalises_with_are_no_parameters(tmp_path):
    """torch writes GroupNorm as an InstanceNormalization over (N, G, -1) with ones and zeros, then
    its own weight and bias after a Reshape. The dynamo exporter writes those ones and zeros as
    initializers (shared by every GroupNorm of a size): `full` and `norm+last` trained them as
    parameters. They are the exporter's constants; the weight and bias train, with torch's gradients."""
    net = GroupNormed()
    torch.onnx.export(net, (torch.zeros(2, 3, 16, 16),), str(tmp_path / "m.onnx"), dynamo=True, opset_version=18,
                      dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=True)
    model = onnx.load(str(tmp_path / "m.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert any(n.op_type == "InstanceNormalization" and n.input[1] in inits for n in model.graph.node)
    # (the exporter folds each GroupNorm's weight and bias into a (C, 1, 1) copy under a name of its own)
    rename = {f: (n, False) for f, a in inits.items() for n, p in net.named_parameters()
              if f != n and a.size == p.numel() and np.array_equal(a.ravel(), p.detach().numpy().ravel())}
    trained = assert_step_matches_torch(tmp_path, tmp_path / "m.onnx", net, 16, methods=("full", "norm+last"),
                                        rename=rename)
    assert trained["norm+last"] == ["fc.bias", "fc.weight", "n1.bias", "n1.weight", "n2.bias", "n2.weight"]
