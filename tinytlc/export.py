"""Step 1 of the data flow: a model source (zoo name, .onnx file, or file.py:function returning an
nn.Module) becomes a forward ONNX model with one image input and one logits output.

Export uses torch's TorchScript-based exporter with constant folding off: it keeps every parameter
under its state_dict name and every BatchNormalization as its own node, so tinytlc's passes decide
what is folded and what trains (the dynamo exporter folds BN into convs and drops zero biases).
Initializers are exported as inputs too, which turns off the exporter's merging of parameters
with equal values (freshly initialised norms would otherwise share one scale); they are taken out
of the inputs again right after.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from tinytlc import zoo
from tinytlc.errors import TinyTLError
from tinytlc.onnx_file import OPSET, is_onnx_file, load_onnx, prepare_onnx, set_prop
from tinytlc.pixels import preprocess

INPUT, OUTPUT = "input", "logits"

@dataclass
class Source:
    model: onnx.ModelProto
    preprocess: dict
    description: str


@contextlib.contextmanager
def _stdout_silenced():
    """Descriptor 1 to /dev/null: torch's exporter logs a whole IR graph on stdout from C++ when it
    fails (its ONNX log is always on), which would break `--json` output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself under torch.compile's and DataParallel's wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None) or (
            module.module if isinstance(module, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel))
            else None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


def input_channels(module: torch.nn.Module) -> int:
    """The image channels a module takes: its first Conv2d's input channels (3 without one)."""
    conv = next((m for m in module.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def _first_forward(net: torch.nn.Module, label: str, resolution: int, first_conv: int):
    """(channels, output) of the first image channel count whose forward runs: the first Conv2d's,
    then 3, then 1. The first conv need not read the image (TResNet's SpaceToDepth stem feeds it
    48 = 3 x 4 x 4 channels; a module may register its head before its stem)."""
    failure = None
    for channels in dict.fromkeys((first_conv, 3, 1)):
        x = torch.rand(2, channels, resolution, resolution, generator=torch.Generator().manual_seed(1))
        try:
            return channels, net(x)
        except Exception as e:
            failure = failure or (channels, e)
    channels, e = failure
    raise TinyTLError(f"{label}: its forward fails on {channels}-channel {resolution} px images: "
                      f"{_failure(e)}") from e


def _check_tensors(module: torch.nn.Module) -> None:
    name = type(module).__name__
    tensors = list(module.parameters()) + list(module.buffers())
    if any(t.is_meta for t in tensors):
        raise TinyTLError(f"{name} has parameters on the meta device (no weights): create or load them first")
    wide = sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point() and t.dtype != torch.float32})
    if wide:
        raise TinyTLError(f"{name} has {', '.join(wide)} parameters; tinytlc trains float32 models: call .float() on it")


# Traced ops that read only a tensor's shape: a Python value made from them is the same for any image.
_SHAPE_OPS = {"aten::size", "aten::sym_size", "aten::dim", "aten::numel", "aten::len", "prim::shape",
              "prim::device", "prim::dtype"}
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def _from_images(value: torch._C.Value, images: torch._C.Value) -> bool:
    """Whether a traced value is computed from the images' values, not only from their shapes."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v.unique() == images.unique():
            return True
        if v.unique() not in seen:
            seen.add(v.unique())
            if v.node().kind() not in _SHAPE_OPS:
                stack.extend(v.node().inputs())
    return False


@contextlib.contextmanager
def _python_values_from_images(found: list[str]):
    """While torch traces the forward, note each place where the user's code (not torch's) turns a
    tensor computed from the images into a Python bool or number (`if y.sum() > 0`, `float(x.max())`).
    Tracing keeps that value as a constant, so the graph follows the path the traced images took
    whatever images come later; an `if` on a shape (x.shape[-1] != 32) is the same for every image."""
    methods = {name: getattr(torch.Tensor, name) for name in ("__bool__", "__float__", "__int__", "item", "tolist")}

    def watched(name):
        original = methods[name]

        def method(self, *args):
            state = torch._C._get_tracing_state()
            caller = sys._getframe(1)
            if state is not None and not caller.f_code.co_filename.startswith(_TORCH_DIR):
                try:
                    images = next(state.graph().inputs())  # the traced images come first
                    if _from_images(torch._C._get_value_trace(self), images):
                        found.append(f"{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno}")
                except Exception:  # (a tensor the tracer does not know, made outside the trace: not ours to judge)
                    pass
            return original(self, *args)
        return method

    for name in methods:
        setattr(torch.Tensor, name, watched(name))
    try:
        yield
    finally:
        for name, original in methods.items():
            setattr(torch.Tensor, name, original)


def _traced_images(channels: int, resolution: int) -> torch.Tensor:
    return torch.rand(2, channels, resolution, resolution, generator=torch.Generator().manual_seed(0))


def export_module(module: torch.nn.Module, resolution: int, channels: int | None = None) -> onnx.ModelProto:
    """Export an eval-mode nn.Module to ONNX (batch dimension symbolic, spatial size fixed). It is
    traced at batch 2 (a `squeeze()` keeps the batch axis) on random pixels (a zero image takes
    branches real ones do not); custom autograd Functions are refused: their backward cannot be
    exported, and differentiating their forward instead would train something else; so is a forward
    that makes a Python bool or number from the images' values (_python_values_from_images)."""
    module = _unwrap(module).eval()
    name = type(module).__name__
    _check_tensors(module)
    x = _traced_images(channels or input_channels(module), resolution)
    def export(dynamic: bool) -> bytes:
        buf = io.BytesIO()
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=OPSET, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.EVAL, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic else None,
                          keep_initializers_as_inputs=True, autograd_inlining=False)
        return buf.getvalue()

    branches: list[str] = []
    with warnings.catch_warnings(), _stdout_silenced(), _python_values_from_images(branches):
        warnings.simplefilter("ignore")
        try:
            data = export(dynamic=True)
        except Exception as e:  # torch raises many types; the user needs the first line
            first = str(e).splitlines()[0].split("[Caused by")[0].split(" Please feel free")[0].strip().rstrip(".")  # (an IR dump follows)
            if "Python operator" in first or "PythonOp" in first:
                raise TinyTLError(f"{name} uses a custom torch.autograd.Function ({first}): its backward cannot be "
                                  "exported, so tinytlc cannot train it as PyTorch would") from e
            try:  # (a pooling window of x.size(2) cannot be traced with a symbolic batch; a fixed one is taken
                data = export(dynamic=False)  # like a file exported for one batch size)
            except Exception:
                raise TinyTLError(f"cannot export {name} to ONNX with torch's TorchScript exporter: {first}; its dynamo "
                                  "exporter may write it: torch.onnx.export(model, images, 'model.onnx', dynamo=True), "
                                  "then compile model.onnx") from e
    if branches:
        raise TinyTLError(f"{name} turns a value computed from the images into a Python bool or number at "
                          f"{branches[0]} (an `if` or `assert` on tensor values, float() or .item()): tracing "
                          "keeps the value the example images gave, whatever images come later; compute it with "
                          "tensor ops (torch.where) or take it out")
    model = onnx.load_from_string(data)
    params = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in params]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


PARAMETERS = "tinytlc.parameters"  # model metadata: the initializers a user's module trains (JSON list)
MODULE_PARAMETERS = "tinytlc.module_parameters"  # and all its parameters, frozen ones too (JSON list)


def _logits_pick(out, label: str):
    """(how to take the logits from what a forward returns, a note), (None, None) for a tensor."""
    if isinstance(out, torch.Tensor):
        return None, None
    if isinstance(out, dict) or hasattr(out, "keys"):  # (a Hugging Face ModelOutput is a dict)
        keys = list(out.keys())
        if "logits" in keys:
            return (lambda o: o["logits"]), "its output 'logits' taken" if len(keys) > 1 else None
        if len(keys) == 1:
            return (lambda o: o[keys[0]]), None
        raise TinyTLError(f"{label}: forward returns a dict of {keys}; expected the logits (a tensor, or a 'logits' entry)")
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return (lambda o: o.logits), "its output's logits taken"
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return (lambda o: o[0]), f"its first output (of {len(out)}) taken as the logits"
    raise TinyTLError(f"{label}: forward returns {type(out).__name__}; expected the logits tensor")


def load_module(net: torch.nn.Module, label: str, resolution: int) -> tuple[onnx.ModelProto, list[str]]:
    """A user's module as a checked ONNX model (prepare_onnx, as for a file), with what trains as
    PyTorch has it: parameters with requires_grad (recorded under PARAMETERS), less those no
    gradient reaches in PyTorch (a detach or no_grad in forward), never buffers. The logits are the
    output itself, its 'logits' entry or its first output. The trace is checked against the module
    on other random images: a Python branch on tensor values is fixed by tracing."""
    net = _unwrap(net).eval()
    _check_tensors(net)
    first_conv = input_channels(net)
    channels, out = _first_forward(net, label, resolution, first_conv)
    notes = [] if channels == first_conv else [f"{channels}-channel images (its first conv takes {first_conv})"]
    params = dict(net.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    pick, note = _logits_pick(out, label)
    notes += [note] if note else []
    logits = pick(out) if pick else out
    reached = torch.autograd.grad((logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))).sum(),
                                  [params[n] for n in trainable], allow_unused=True) if logits.requires_grad else []
    cut = [n for n, g in zip(trainable, reached) if g is None] if reached else trainable
    hook = net.register_forward_hook(lambda m, i, o: pick(o)) if pick else None
    try:
        model = export_module(net, resolution, channels)
    finally:
        if hook is not None:
            hook.remove()
    inits = {t.name for t in model.graph.initializer}
    frozen = [n for n, p in params.items() if not p.requires_grad and n in inits]
    cut = [n for n in cut if n in inits]
    if frozen:
        notes.append(f"{len(frozen)} parameters with requires_grad=False kept frozen")
    if cut:
        notes.append(f"{len(cut)} parameters no gradient reaches in PyTorch (detach or no_grad in forward) kept frozen")
    _check_trace(model, net, pick, channels, resolution, label)
    set_prop(model, PARAMETERS, json.dumps([n for n in trainable if n in inits and n not in cut]))
    set_prop(model, MODULE_PARAMETERS, json.dumps([n for n in params if n in inits]))
    model, more = prepare_onnx(model, label, resolution)
    return model, notes + more


def _check_trace(model: onnx.ModelProto, net: torch.nn.Module, pick, channels: int, resolution: int, label: str) -> None:
    import onnxruntime as ort
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 3  # (a fixed batch: export's fallback)
    x = torch.rand(batch, channels, resolution, resolution, generator=torch.Generator().manual_seed(3)) * 2 - 0.5
    try:
        with torch.no_grad():
            want = net(x)
    except Exception as e:  # (it ran at batch 2: the batch size is written into forward)
        raise TinyTLError(f"{label}: its forward runs on a batch of 2 images but fails on {batch}: "
                          f"{_failure(e)}; "
                          "read the batch size from the input (x.shape[0], or -1 in a view) instead of writing it") from e
    want = (pick(want) if pick else want).numpy()
    pools = [{a.name: a.i for a in n.attribute} for n in model.graph.node if n.op_type == "AveragePool"]
    if any(p.get("ceil_mode") and p.get("count_include_pad") for p in pools):
        return  # ORT divides such a pool otherwise than torch (passes/forward/avgpool_to_conv.py): no judge
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        # the trace is checked, not ORT's optimiser: its PadFusion puts a zero Pad into a MaxPool
        # wrongly (passes/forward/keep_pad_before_maxpool.py keeps them apart later)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:
        return  # (what ORT cannot run is named later, with the graph tinytlc makes of it)
    try:
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    except Exception as e:
        from tinytlc.runtime.session import ort_cause
        raise TinyTLError(f"{label}: the traced graph runs on a batch of 2 images but not on {batch} "
                          f"(ORT: {ort_cause(str(e))}): "
                          "tracing wrote a size that the module computes from "
                          "its input into the graph as a constant (as torch.zeros(2, ...) or a size taken through Python int())") from e
    def differ(got, want) -> float | None:  # max |diff| where the graph and the module disagree
        if got.shape != want.shape:
            return float("nan")
        return None if np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max()))) \
            else float(np.abs(got - want).max())

    err = differ(got, want)
    if err is None:
        return
    traced = _traced_images(channels, resolution)  # the very images the trace ran on
    with torch.no_grad():
        want = net(traced)
    if differ(session.run(None, {session.get_inputs()[0].name: traced.numpy()})[0], (pick(want) if pick else want).numpy()) is not None:
        raise TinyTLError(f"{label}: the traced graph disagrees with the module even on the images it was traced with "
                          f"(max |diff| {err:.3g}): its forward takes another path while it is exported (a branch on "
                          "torch.onnx.is_in_onnx_export() or torch.jit.is_tracing(), as in models that expect their "
                          "BatchNorms merged first): export the form that branch expects, or take the branch out")
    raise TinyTLError(f"{label}: the traced graph disagrees with the module on other images (max |diff| {err:.3g}): "
                      "its forward branches on tensor values (a Python `if` on a tensor), which tracing fixes "
                      "to the branch the first images took")


def _failure(e: BaseException) -> str:
    """'Type: first line of the message, at file.py:LINE' for an exception the user's code raised."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{_raised_at(e)}"


def _raised_at(e: BaseException) -> str:
    """', at file.py:LINE': the innermost frame of the user's own code (a helper module the model
    file imports, say), not of torch, importlib or tinytlc; '' when there is none."""
    skip = (str(Path(__file__).parent), str(Path(torch.__file__).parent.parent), "<frozen")
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(skip)]
    return f", at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


def load_function(spec: str) -> torch.nn.Module:
    """`path/to/file.py:function` -> the nn.Module the function returns. The file runs as `python
    file.py` would run it (its folder importable, sys.argv just the file), and what it prints goes
    to stderr, so `--json` output stays JSON."""
    file, _, func = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise TinyTLError(f"{file}: no such file")
    mod_spec = importlib.util.spec_from_file_location(f"tinytlc_user_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    folder, argv = str(path.resolve().parent), sys.argv
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.argv = [str(path)]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            try:
                mod_spec.loader.exec_module(module)
            except (Exception, SystemExit) as e:
                what = f"exited ({e.code}) while being imported: does it parse command-line arguments at import?" \
                    if isinstance(e, SystemExit) else f"failed to import ({type(e).__name__}: {e}{_raised_at(e)})"
                raise TinyTLError(f"{file}: {what}") from e
            fn = getattr(module, func, None)
            if not callable(fn):
                raise TinyTLError(f"{file}: no function '{func}'")
            try:
                net = fn()
            except (Exception, SystemExit) as e:  # the user's code: say where, in one line
                raise TinyTLError(f"{spec}: the function raised {_failure(e)}") from e
    finally:
        sys.argv = argv  # (the folder stays importable, as under `python file.py`: a forward may import late)
    if not isinstance(net, torch.nn.Module):
        raise TinyTLError(f"{spec}: returned {type(net).__name__}, expected a torch.nn.Module")
    return net


def load_source(spec: str, resolution: int, pretrained: bool = True, norm: str = "batch") -> Source:
    """Resolve MODEL as given on the command line. `norm` picks a zoo model's norm layers."""
    if norm not in ("batch", "group"):
        raise TinyTLError(f"--norm {norm}: choose batch or group")
    if norm != "batch" and (is_onnx_file(spec) or ":" in spec):
        raise TinyTLError("--norm applies to zoo models only")
    if is_onnx_file(spec):
        if Path(spec).is_dir():
            raise TinyTLError(f"{spec}: is a directory, not an ONNX file")
        if not Path(spec).is_file():
            raise TinyTLError(f"{spec}: no such file")
        model, notes = load_onnx(Path(spec), resolution)
        return Source(model, preprocess(model, notes), f"ONNX file {spec}" + (f" ({'; '.join(notes)})" if notes else ""))
    if ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        model, notes = load_module(load_function(spec), spec, resolution)
        return Source(model, preprocess(model, notes), f"PyTorch module {spec}" + (f" ({'; '.join(notes)})" if notes else ""))
    entry = zoo.get(spec)
    if norm != "batch" and "norm" not in entry.build.__code__.co_varnames:
        raise TinyTLError(f"--norm {norm}: {spec} is built with BatchNorm only (proxylessnas-mobile takes --norm group)")
    with torch.random.fork_rng():  # what is not loaded (a head, proxylessnas) is drawn the same every compile
        torch.manual_seed(0)
        net = entry.build(resolution=resolution, pretrained=pretrained, **({"norm": norm} if norm != "batch" else {}))
    weights = entry.weights if pretrained and getattr(net, "pretrained", True) else "random init"
    return Source(export_module(net, resolution), entry.preprocess, f"{spec} ({weights})")
