"""A user's own PyTorch module (`file.py:function`): it trains as PyTorch trains it (what forward
returns, which parameters train, its channels, its batch), and the file runs as `python file.py`
runs it. Each case compares one step's gradients with PyTorch autograd on the same batch."""

import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_gradients import ort_step

from tinytlc.errors import TinyTLError
from tinytlc.pipeline import compile_model

RES, BATCH = 16, 2

NETS = '''
import collections, torch, torch.nn as nn

class Net(nn.Module):
    """conv -> BN -> ReLU -> pool -> linear; `out` picks what forward returns."""
    def __init__(self, out="tensor", channels=3):
        super().__init__()
        torch.manual_seed(0)
        self.out = out
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1))
        self.fc = nn.Linear(8, 3)
        self.register_buffer("offset", torch.full((1, 8, 1, 1), 0.25))  # a buffer used as data

    def forward(self, x):
        f = self.features(x) + self.offset
        if self.out == "detach":
            f = f.detach()
        pooled = f.mean((2, 3), keepdim=True)
        y = self.fc(pooled.squeeze() if self.out == "squeeze" else pooled.flatten(1))
        if self.out == "tuple":
            return y, pooled
        if self.out == "dict":
            return {"features": pooled, "logits": y}
        if self.out == "namedtuple":
            return collections.namedtuple("Out", "logits aux")(y, pooled)
        return y

class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -g

class Reversed(Net):
    def forward(self, x):
        return self.fc(GradReverse.apply(self.features(x)).mean((2, 3)))

class Branchy(Net):
    def forward(self, x):
        if (x < 0).any():  # traced on pixels in [0, 1): the other branch is fixed
            x = -x
        return super().forward(x)

class SamePath(Net):
    def forward(self, x):  # the check's images take the traced path too; others need not
        y = self.features(x)
        return self.fc((y if y.mean() > -1e9 else -y).mean((2, 3)))

class ScaledByMax(Net):
    def forward(self, x):  # a Python number from the images: tracing writes it as a constant
        return super().forward(x / float(x.abs().max()))

class ShapeBranch(Net):
    def forward(self, x):  # a branch on a shape is the same for every image of that size: traced as is
        return super().forward(x if x.shape[-1] % 2 == 0 else x[..., :-1])

class NumpyBranch(Net):
    def forward(self, x):  # through numpy, out of the tracer's sight: the trace check finds it
        return super().forward(-x if x.detach().numpy().min() < 0 else x)

class BatchOfTwo(Net):
    def forward(self, x):  # a batch size written into forward: it runs only on the batch it was tried on
        return super().forward(x).view(2, 3)

class TracedBatch(Net):
    def forward(self, x):  # int() makes the batch a Python number, which tracing writes as a constant
        return super().forward(x) + torch.zeros(int(x.shape[0]), 3)

class ScaledStdConv2d(nn.Conv2d):
    """timm's: the weight standardised by F.batch_norm(training=True), which torch exports as a
    BatchNormalization over ReduceMeans of the weight."""
    def __init__(self, cin, cout, stride=1):
        super().__init__(cin, cout, 3, stride, 1)
        self.gain = nn.Parameter(torch.rand(cout, 1, 1, 1) + 0.5)
        self.scale = self.weight[0].numel() ** -0.5

    def forward(self, x):
        w = nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                                     weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0, eps=1e-6)
        return nn.functional.conv2d(x, w.reshape_as(self.weight), self.bias, self.stride, self.padding)

def nf():  # two convs of one width (ORT merged their equal zero constants into one name)
    torch.manual_seed(0)
    return nn.Sequential(ScaledStdConv2d(3, 8, 2), nn.ReLU(), ScaledStdConv2d(8, 8), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))

class ChannelGate(nn.Module):
    """CBAM's (its reference code): a pooling window of x.size(2) cannot be traced with a symbolic
    batch, so the module is exported for a fixed one."""
    def __init__(self, c):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c, 4), nn.ReLU(), nn.Linear(4, c))

    def forward(self, x):
        window = (x.size(2), x.size(3))
        att = self.mlp(nn.functional.avg_pool2d(x, window, stride=window)) + \
            self.mlp(nn.functional.max_pool2d(x, window, stride=window))
        return x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)

def cbam():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), ChannelGate(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

class SpaceToDepth(nn.Module):
    """TResNet's stem (timm's): its first conv takes 3 x 2 x 2 channels, the image has 3."""
    def forward(self, x):
        n, c, h, w = x.size()
        x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(n, c * 4, h // 2, w // 2)

def space_to_depth():
    torch.manual_seed(0)
    return nn.Sequential(SpaceToDepth(), nn.Conv2d(12, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

def _same_pads(x, k, s):
    """timm's get_same_padding: traced, x.size() gives tensors and the pads are computed at run time."""
    if isinstance(x, torch.Tensor):
        return torch.clamp(((x / s).ceil() - 1) * s + (k - 1) + 1 - x, min=0)
    return max((-(-x // s) - 1) * s + (k - 1) + 1 - x, 0)

class Conv2dSame(nn.Conv2d):
    """timm's (tf_efficientnet_*, dm_nfnet_*): 'same' padding computed at run time."""
    def forward(self, x):
        ih, iw = x.size()[-2:]
        ph, pw = _same_pads(ih, self.kernel_size[0], self.stride[0]), _same_pads(iw, self.kernel_size[1], self.stride[1])
        x = nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0)

class NFSame(nn.Module):
    """dm_nfnet's pieces: ScaledStdConv2dSame ('same' pads from x.size(), so constant folding runs
    and must not make a parameter of F.batch_norm's zero shift) and a 0-d skipinit gain."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.conv, self.fc = ScaledStdConv2d(3, 8, 2), ScaledStdConv2d(8, 8), nn.Linear(8, 3)
        self.stem.padding = (0, 0)
        self.skipinit_gain = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        ih, iw = x.size()[-2:]
        ph, pw = _same_pads(ih, 3, 2), _same_pads(iw, 3, 2)
        x = torch.relu(self.stem(nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))))
        return self.fc((x + self.skipinit_gain * self.conv(x)).mean((2, 3)))

def nf_same(): return NFSame()

def same_padding():  # and timm's DownsampleAvg, which needs the map size the pads leave
    torch.manual_seed(0)
    return nn.Sequential(Conv2dSame(3, 8, 3, 2), nn.ReLU(), nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                         nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

def tensor(): return Net()
def tuple_out(): return Net("tuple")
def dict_out(): return Net("dict")
def namedtuple_out(): return Net("namedtuple")
def squeeze(): return Net("squeeze")
def detach(): return Net("detach")
def gray(): return Net(channels=1)
def frozen():
    net = Net()
    net.features[0].requires_grad_(False)
    return net
def reversed_grad(): return Reversed()
def branchy(): return Branchy()
def same_path(): return SamePath()
def scaled_by_max(): return ScaledByMax()
def shape_branch(): return ShapeBranch()
def numpy_branch(): return NumpyBranch()
def double(): return Net().double()
def batch_of_two(): return BatchOfTwo()
def traced_batch(): return TracedBatch()
class ExportBranch(Net):  # Next-ViT: skips its pre-norms while exported, expecting them merged into the convs
    def forward(self, x):
        return super().forward(x if torch.onnx.is_in_onnx_export() else x * 2)
def export_branch(): return ExportBranch()
class Halo(Net):  # timm's HaloAttn: unfold after a pad, which torch's TorchScript exporter cannot size
    def forward(self, x):
        f = torch.nn.functional.pad(self.features(x), [1, 1, 1, 1]).unfold(2, 4, 2).unfold(3, 4, 2)
        return self.fc(f.mean((2, 3, 4, 5)))
def halo(): return Halo()
'''


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    import importlib.util
    spec = importlib.util.spec_from_file_location("user_nets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def _torch_step(net, x, y, pick=lambda o: o):
    net.eval().zero_grad()
    loss = F.cross_entropy(pick(net(torch.from_numpy(x))), torch.from_numpy(y))
    loss.backward()
    return float(loss), {n: p.grad.numpy() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,pick", [("tuple_out", lambda o: o[0]), ("dict_out", lambda o: o["logits"]),
                                       ("namedtuple_out", lambda o: o.logits), ("squeeze", lambda o: o),
                                       ("detach", lambda o: o), ("frozen", lambda o: o), ("gray", lambda o: o),
                                       ("nf", lambda o: o), ("cbam", lambda o: o),
                                       ("space_to_depth", lambda o: o), ("same_padding", lambda o: o),
                                       ("nf_same", lambda o: o), ("shape_branch", lambda o: o)])
def test_full_trains_what_pytorch_trains(tmp_path, nets, name, pick):
    """The logits are found in what forward returns; `full` trains exactly the parameters PyTorch
    gives a gradient (not the buffer, not requires_grad=False, not behind a detach), with torch's
    gradients; a 1-channel module takes 1-channel images, a SpaceToDepth stem 3-channel ones;
    `squeeze()` keeps the batch axis; pads computed from x.size() (timm's 'same') are evaluated;
    a 0-d parameter trains (NFNet's skipinit gain)."""
    path, module = nets
    net = getattr(module, name)()
    channels = 1 if name == "gray" else 3
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, channels, RES, RES), dtype=np.float32)
    y = rng.integers(0, 3, BATCH)
    loss_t, grads_t = _torch_step(net, x, y, pick)
    art = compile_model(f"{path}:{name}", "full", tmp_path / "a", resolution=RES, batch_size=BATCH)
    assert art.manifest["input"]["shape"][1] == channels
    loss, _, grads = ort_step(art, x, y, 0.0)
    np.testing.assert_allclose(loss, loss_t, rtol=1e-5)
    assert set(grads) == set(grads_t), (sorted(grads), sorted(grads_t))
    for n, g in grads.items():
        np.testing.assert_allclose(g.reshape(grads_t[n].shape), grads_t[n], rtol=2e-4, atol=1e-6, err_msg=n)


@pytest.mark.parametrize("name,phrase", [
    ("reversed_grad", r"Reversed uses a custom torch.autograd.Function \(.*GradReverse\): its backward cannot be exported"),
    ("branchy", r"^Branchy turns a value computed from the images into a Python bool or number at nets.py:\d+ \(an `if`"),
    ("same_path", r"^SamePath turns a value computed from the images into a Python bool or number at nets.py:\d+ .*"
                  r"tracing keeps the value the example images gave"),
    ("scaled_by_max", r"^ScaledByMax turns a value computed from the images into a Python bool or number at nets.py"),
    ("numpy_branch", r"nets.py:numpy_branch: the traced graph disagrees with the module on other images .*a Python `if` "
                     r"on a tensor"),
    ("double", r"Net has float64 parameters; tinytlc trains float32 models: call .float\(\) on it"),
    ("batch_of_two", r"nets.py:batch_of_two: its forward runs on a batch of 2 images but fails on 3: RuntimeError: "
                     r"shape '\[2, 3\]' is invalid .*, at nets.py:\d+; read the batch size from the input"),
    ("traced_batch", r"nets.py:traced_batch: the traced graph runs on a batch of 2 images but not on 3 \(ORT: op Add "
                     r"\(node .*\): .*\): tracing wrote a size"),
    ("export_branch", r"nets.py:export_branch: the traced graph disagrees with the module even on the images it was "
                      r"traced with .*torch.onnx.is_in_onnx_export\(\)"),
    ("halo", r"^cannot export Halo to ONNX with torch's TorchScript exporter: Unsupported: ONNX export of operator "
             r"Unfold, input size not accessible; its dynamo exporter may write it: torch.onnx.export\(model, images, "
             r"'model.onnx', dynamo=True\), then compile model.onnx$"),
])
def test_modules_tinytlc_cannot_train_as_pytorch_would_are_refused(tmp_path, nets, name, phrase):
    path, _ = nets
    with pytest.raises(TinyTLError, match=phrase):
        compile_model(f"{path}:{name}", "bias", tmp_path / "a", resolution=RES, batch_size=BATCH)
    assert not (tmp_path / "a").exists()


def test_the_file_runs_as_python_runs_it(tmp_path, cli, monkeypatch):
    """It imports a file beside it, parses arguments at import (sys.argv is its own), and prints:
    `compile --json` stays JSON on stdout."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "layers.py").write_text("import torch.nn as nn\n"
                                       "def make(): return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), "
                                       "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))\n")
    (project / "model.py").write_text(textwrap.dedent("""
        import argparse
        from layers import make
        args = argparse.ArgumentParser().parse_args()
        def build():
            print("building the model")
            return make()
    """))
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("compile", "project/model.py:build", "--method", "bias", "--resolution", RES,
                         "--batch-size", BATCH, "--out", tmp_path / "a", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == "project/model.py:build"
    assert "building the model" in err


def test_compile_counts_the_models_parameters(tmp_path, nets):
    """compile's "the model has N" is the module's parameter count with the new head, frozen ones
    included, whatever the method (the passes fold, add and write out weights; BatchNorm statistics
    are no parameters). In a file exported from it torch has folded the BatchNorm into the conv, and
    the buffer added as data counts: ONNX cannot tell it from a parameter."""
    path, module = nets
    net = module.frozen()
    want = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("fc.")) + 8 * 5 + 5
    counts = {m: compile_model(f"{path}:frozen", m, tmp_path / m, num_classes=5, resolution=RES, batch_size=BATCH
                               ).manifest["model_elements"] for m in ("full", "bias", "lite+bias")}
    assert counts == {m: want for m in counts}
    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(net.eval(), torch.zeros(1, 3, RES, RES), onnx_path, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    art = compile_model(onnx_path, "bias", tmp_path / "file", num_classes=5, resolution=RES, batch_size=BATCH)
    assert art.manifest["model_elements"] == want - 2 * 8 + 8
