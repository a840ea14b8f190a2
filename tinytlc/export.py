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
from tinytlc.passes.forward.static_reshapes import EXPORTED_BATCH

OPSET = 17
MAX_OPSET = 21  # what onnxruntime-training 1.19.2 runs
MAX_IR = 10
INPUT, OUTPUT = "input", "logits"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def raw_pixels(top: float) -> dict:
    """What feeds a network pixels in 0..top (data.Preprocess divides by 255 first)."""
    return {"mean": [0.0] * 3, "std": [1 / top] * 3}


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


def export_module(module: torch.nn.Module, resolution: int, channels: int | None = None) -> onnx.ModelProto:
    """Export an eval-mode nn.Module to ONNX (batch dimension symbolic, spatial size fixed). It is
    traced at batch 2 (a `squeeze()` keeps the batch axis) on random pixels (a zero image takes
    branches real ones do not); custom autograd Functions are refused: their backward cannot be
    exported, and differentiating their forward instead would train something else."""
    module = _unwrap(module).eval()
    name = type(module).__name__
    _check_tensors(module)
    x = torch.rand(2, channels or input_channels(module), resolution, resolution, generator=torch.Generator().manual_seed(0))
    def export(dynamic: bool) -> bytes:
        buf = io.BytesIO()
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=OPSET, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.EVAL, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic else None,
                          keep_initializers_as_inputs=True, autograd_inlining=False)
        return buf.getvalue()

    with warnings.catch_warnings(), _stdout_silenced():
        warnings.simplefilter("ignore")
        try:
            data = export(dynamic=True)
        except Exception as e:  # torch raises many types; the user needs the first line
            first = str(e).splitlines()[0].split("[Caused by")[0].strip()  # (torch's IR dump follows)
            if "Python operator" in first or "PythonOp" in first:
                raise TinyTLError(f"{name} uses a custom torch.autograd.Function ({first}): its backward cannot be "
                                  "exported, so tinytlc cannot train it as PyTorch would") from e
            try:  # (a pooling window of x.size(2) cannot be traced with a symbolic batch; a fixed one is taken
                data = export(dynamic=False)  # like a file exported for one batch size)
            except Exception:
                raise TinyTLError(f"cannot export {name} to ONNX: {first}") from e
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
    _set_prop(model, PARAMETERS, json.dumps([n for n in trainable if n in inits and n not in cut]))
    _set_prop(model, MODULE_PARAMETERS, json.dumps([n for n in params if n in inits]))
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
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max()))):
        err = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
        raise TinyTLError(f"{label}: the traced graph disagrees with the module on other images (max |diff| {err:.3g}): "
                          "its forward branches on tensor values (a Python `if` on a tensor), which tracing fixes "
                          "to the branch the first images took")


MIN_OPSET = 13  # older files are converted up (onnx's version converter) before anything else


def _convert_opset(model: onnx.ModelProto, path: Path, opset: int) -> onnx.ModelProto:
    from onnx import version_converter
    target = OPSET if opset < MIN_OPSET else MAX_OPSET
    # onnx's adapters from opset <= 6 assert on symbolic dims: convert with 1s, then name them again
    def dims(m):
        return {v.name: v.type.tensor_type.shape.dim for v in [*m.graph.input, *m.graph.output]}
    named = [(name, i, d.dim_param) for name, ds in dims(model).items() for i, d in enumerate(ds) if d.dim_param]
    before = dims(model)
    for name, i, _ in named:
        before[name][i].dim_value = 1
    del model.graph.value_info[:]
    try:
        model = version_converter.convert_version(model, target)
    except Exception as e:
        raise TinyTLError(f"{path}: opset {opset} cannot be converted to opset {target} "
                          f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); "
                          f"export it at an opset from {MIN_OPSET} to {MAX_OPSET}") from e
    after = dims(model)
    for name, i, param in named:
        after[name][i].dim_param = param
    del model.graph.value_info[:]  # (inferred with the 1s)
    return model


_QUANTIZED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
              "ConvInteger", "MatMulInteger"}


def _check_float32(model: onnx.ModelProto, path: Path) -> None:
    """tinytlc trains float32 networks: say so for a quantized or half-precision file, rather than
    failing later on a classifier it cannot recognise."""
    ops = sorted({n.op_type for n in model.graph.node} & _QUANTIZED)
    if ops:
        raise TinyTLError(f"{path}: a quantized model ({', '.join(ops)}); tinytlc trains float32 models: "
                          "give it the model before quantization")
    kinds = {t.data_type for t in model.graph.initializer if t.data_type != onnx.TensorProto.FLOAT} & \
        {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    if kinds:
        raise TinyTLError(f"{path}: its weights are {'/'.join(sorted(onnx.TensorProto.DataType.Name(k) for k in kinds))}; "
                          "tinytlc trains float32 models: export or convert it to float32 first")


_CONTROL_FLOW = ("If", "Loop", "Scan", "SequenceMap")


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Every constant tensor by name: the initializers and the Constant nodes' values."""
    consts = {t.name: t for t in graph.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant"
                   and len(n.attribute) == 1 and n.attribute[0].name == "value"})
    return consts


def _replace_node(graph: onnx.GraphProto, i: int, nodes: list[onnx.NodeProto]) -> None:
    """graph.node[i] replaced by `nodes`, in its place (the graph stays in topological order)."""
    del graph.node[i]
    for k, n in enumerate(nodes):
        graph.node.insert(i + k, n)


def _set_prop(model: onnx.ModelProto, key: str, value: str) -> None:
    """One metadata entry set, the file's own kept."""
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, key: value})


def _looks_nhwc(dims) -> bool:
    """A 4-D image shape with 1 or 3 channels last and not second."""
    return len(dims) == 4 and dims[3].dim_value in (1, 3) and dims[1].dim_value not in (1, 3)


def _inline_constant_ifs(graph: onnx.GraphProto) -> None:
    """An If whose condition is a constant (an initializer or a Constant node) is the branch it
    takes: its nodes go in the If's place, their outputs renamed by Identity nodes."""
    from onnx import numpy_helper
    consts = _constants(graph)
    for i, node in reversed(list(enumerate(graph.node))):
        if node.op_type != "If" or node.domain not in ("", "ai.onnx") or node.input[0] not in consts:
            continue
        taken = "then_branch" if numpy_helper.to_array(consts[node.input[0]]).item() else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == taken)
        _inline_constant_ifs(branch)
        graph.initializer.extend(branch.initializer)
        renamed = [onnx.helper.make_node("Identity", [b.name], [o], name=f"{node.name}/{o}")
                   for b, o in zip(branch.output, node.output)]
        _replace_node(graph, i, list(branch.node) + renamed)


def _refuse_control_flow(graph: onnx.GraphProto, path: Path) -> None:
    """ORT 1.19.2's gradient builder has no gradient for control flow (If even aborts the process
    natively, at any method): refuse it here, naming the node, at any depth."""
    for node in graph.node:
        if node.op_type in _CONTROL_FLOW:
            fixed = "the branch is fixed" if node.op_type == "If" else "the loop is unrolled"
            raise TinyTLError(f"{path}: control flow ({node.op_type} node {node.name or node.output[0]}) cannot be "
                              f"differentiated by onnxruntime-training; export with tracing (not torch.jit.script) "
                              f"so {fixed}")
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _refuse_control_flow(g, path)


def _inference_mode(graph: onnx.GraphProto) -> None:
    """A file exported in training mode (torch's TrainingMode.TRAINING) gets the ops an eval export
    has: BatchNormalization over its running statistics (training_mode=0, no statistics outputs),
    Dropout without its training_mode input. tinytlc decides what trains."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for n in graph.node:
        if n.op_type not in ("BatchNormalization", "Dropout") or n.domain not in ("", "ai.onnx"):
            continue
        if any(o in used for o in n.output[1:]):
            raise TinyTLError(f"{n.op_type} {n.name}: the network reads its training-mode outputs; "
                              "export the model in eval mode")
        del n.output[1:]
        if n.op_type == "BatchNormalization":
            keep = [a for a in n.attribute if a.name != "training_mode"]
            del n.attribute[:]
            n.attribute.extend(keep)
        else:
            del n.input[2:]


def _explicit_computed_batchnorms(model: onnx.ModelProto) -> None:
    """A BatchNormalization over statistics computed in the graph (timm's ScaledStdConv2d
    standardises its weight with F.batch_norm(training=True), which torch exports as ReduceMeans
    feeding the BN's mean and var) is written out, (x - mean) / sqrt(var + eps) * scale + B:
    the statistics depend on the weight and their gradient must reach it."""
    graph = model.graph
    consts = _constants(graph)
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}  # torch shares equal buffers

    def constant(name: str) -> bool:
        while name in alias and name not in consts:
            name = alias[name]
        return name in consts
    norms = [n for n in graph.node if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")
             and not all(constant(i) for i in n.input[3:5])]
    if not norms:
        return
    shapes, make = _shapes(model), onnx.helper.make_node
    for n in norms:
        rank = len(shapes.get(n.input[0]) or [])
        if rank < 2:
            continue
        x, scale, bias, mean, var = n.input[:5]
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        p = f"{n.name or n.output[0]}/explicit"
        axes, epsilon = f"{p}/axes", f"{p}/epsilon"
        graph.initializer.extend([onnx.numpy_helper.from_array(np.arange(1, rank - 1, dtype=np.int64), axes),
                                  onnx.numpy_helper.from_array(np.array(eps, np.float32), epsilon)])
        view = {v: f"{p}/{k}" for k, v in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var))}
        nodes = [make("Unsqueeze", [v, axes], [out]) for v, out in view.items()] if rank > 2 else []
        view = view if rank > 2 else {v: v for v in view}
        nodes += [make("Sub", [x, view[mean]], [f"{p}/centred"]), make("Add", [view[var], epsilon], [f"{p}/var_eps"]),
                  make("Sqrt", [f"{p}/var_eps"], [f"{p}/std"]), make("Div", [f"{p}/centred", f"{p}/std"], [f"{p}/normed"]),
                  make("Mul", [f"{p}/normed", view[scale]], [f"{p}/scaled"]),
                  make("Add", [f"{p}/scaled", view[bias]], [n.output[0]])]
        _replace_node(graph, list(graph.node).index(n), nodes)


_VIEWS = ("Reshape", "Unsqueeze", "Squeeze", "Flatten")


def _drop_final_softmax(model: onnx.ModelProto) -> str | None:
    """Softmax or LogSoftmax at the output becomes an Identity: the loss wants logits (and
    cross-entropy applies its own LogSoftmax). View ops after it go too when the logits before it
    are (N, K) already (Caffe-style (N, K, 1, 1) outputs); otherwise they stay (a conv head's
    (N, K, 1, 1) softmax, then flattened). Returns the op's name for the user, or None."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    node, views = producer.get(graph.output[0].name), []
    while node is not None and node.op_type in _VIEWS and node.domain in ("", "ai.onnx"):
        views.append(node)
        node = producer.get(node.input[0])
    if node is None or node.op_type not in ("Softmax", "LogSoftmax") or node.domain not in ("", "ai.onnx"):
        return None
    kind = node.op_type
    node.op_type = "Identity"
    del node.attribute[:]
    if views:
        logits = next((v.type for v in onnx.shape_inference.infer_shapes(model).graph.value_info
                       if v.name == node.input[0]), None)
        if logits is not None and len(logits.tensor_type.shape.dim) == 2:
            for v in views:
                graph.node.remove(v)
            node.output[0] = graph.output[0].name
            graph.output[0].type.CopyFrom(logits)
    return kind


INPUT_ADAPTER = "tinytlc.input_adapter"  # model metadata: the Cast/Transpose taken off the image input


def _take_input_adapter(model: onnx.ModelProto) -> dict:
    """An image input read only by a Cast to float (uint8 pixels) and an NHWC one (tf2onnx's Keras
    models) are taken to be float NCHW: tinytlc trains on float NCHW batches. The Cast goes; so
    does a Transpose to NCHW that is the only reader, and other readers read an NHWC view. What
    was taken ({"dtype": "uint8", "layout": "NHWC"}) is recorded in the metadata; export puts the
    nodes back, so the exported model takes what the file took."""
    graph, image, adapter = model.graph, model.graph.input[0], {}

    def only_reader(name):
        readers = [n for n in graph.node if name in n.input]
        return readers[0] if len(readers) == 1 and readers[0].domain in ("", "ai.onnx") else None

    def bypass(node):  # readers of the node's output read the image instead
        for n in graph.node:
            n.input[:] = [image.name if i == node.output[0] else i for i in n.input]
        graph.node.remove(node)

    t = image.type.tensor_type
    node = only_reader(image.name)
    if t.elem_type == onnx.TensorProto.UINT8 and node is not None and node.op_type == "Cast" and \
            onnx.helper.get_attribute_value(node.attribute[0]) == onnx.TensorProto.FLOAT:
        bypass(node)
        t.elem_type, adapter["dtype"] = onnx.TensorProto.FLOAT, "uint8"
        node = only_reader(image.name)
    dims = t.shape.dim
    if _looks_nhwc(dims):
        if node is not None and node.op_type == "Transpose" and \
                list(onnx.helper.get_attribute_value(node.attribute[0])) == [0, 3, 1, 2]:
            bypass(node)
        else:  # read in NHWC too (a Keras Rescaling before the Transpose, a Shape): read an NHWC view
            view = f"{image.name}/nhwc"
            for n in graph.node:
                n.input[:] = [view if i == image.name else i for i in n.input]
            graph.node.insert(0, onnx.helper.make_node("Transpose", [image.name], [view], perm=[0, 2, 3, 1],
                                                       name=view + "/Transpose"))
        nchw = [onnx.TensorShapeProto.Dimension() for _ in range(4)]
        for new, old in zip(nchw, (dims[0], dims[3], dims[1], dims[2])):
            new.CopyFrom(old)
        del dims[:]
        dims.extend(nchw)
        adapter["layout"] = "NHWC"
    if adapter:
        _set_prop(model, INPUT_ADAPTER, json.dumps(adapter))
    return adapter


def _flatten_logits(model: onnx.ModelProto, shapes: dict) -> bool:
    """Logits of shape (N, K, 1, 1) (a 1x1-conv classifier after global pooling, no Flatten) get a
    Flatten at the output, under the output's name: the loss takes (N, K) logits, and ORT read the
    1x1 as spatial dims of the labels. `shapes`: _shapes(model). Returns whether it did."""
    out = model.graph.output[0]
    inferred = shapes.get(out.name) or []
    if len(inferred) != 4 or inferred[2:] != [1, 1]:
        return False
    conv = f"{out.name}/4d"
    for n in model.graph.node:
        n.output[:] = [conv if o == out.name else o for o in n.output]
        n.input[:] = [conv if i == out.name else i for i in n.input]
    model.graph.node.append(onnx.helper.make_node("Flatten", [conv], [out.name], name=f"{out.name}/Flatten"))
    shape = out.type.tensor_type.shape
    shape.CopyFrom(onnx.TensorShapeProto(dim=[onnx.TensorShapeProto.Dimension(dim_param="batch"),
                                              onnx.TensorShapeProto.Dimension()]))
    if inferred[1] is not None:
        shape.dim[1].dim_value = inferred[1]
    return True


def _unfuse_ort_ops(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """A file ORT saved after its graph optimisations: its fused ops written as ai.onnx ops again
    (passes/forward/unfuse_ort_ops.py). Any other op outside ai.onnx has no gradient tinytlc can use."""
    import onnx_ir as ir

    from tinytlc.passes.forward.unfuse_ort_ops import MS, OPS, UnfuseOrtOpsPass
    foreign = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node
                      if n.domain not in ("", "ai.onnx") and not (n.domain == MS and n.op_type in OPS)})
    if any(f.startswith(MS) for f in foreign):
        raise TinyTLError(f"{path}: saved after ONNX Runtime's graph optimisations ({', '.join(foreign)}): "
                          "give tinytlc the original file or one saved at ORT_ENABLE_BASIC")
    if foreign:
        raise TinyTLError(f"{path}: ops outside the ONNX standard ({', '.join(foreign)}); tinytlc trains ai.onnx ops only")
    irm = ir.serde.deserialize_model(model)
    try:
        UnfuseOrtOpsPass()(irm)
    except TinyTLError as e:
        raise TinyTLError(f"{path}: {e}") from e
    return ir.serde.serialize_model(irm)


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Every value's inferred shape (None for an unknown dim), constants' included."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
    shapes.update({name: list(t.dims) for name, t in _constants(model.graph).items()})
    return shapes


def _squeeze_known_ones(model: onnx.ModelProto, shapes: dict) -> bool:
    """A Squeeze without axes (torch's `x.squeeze()`) gets the axes that are 1 whatever the batch:
    with a symbolic batch its output rank is unknown, and ORT cannot build the training graph. At a
    batch of 2 or more this is what torch squeezes. Returns whether it changed any."""
    changed = False
    for n in model.graph.node:
        dims = shapes.get(n.input[0]) if n.op_type == "Squeeze" and len(n.input) == 1 else None
        if not dims or any(a.name == "axes" for a in n.attribute):
            continue
        axes = [i for i, d in enumerate(dims) if d == 1]
        name = f"{n.output[0]}/axes"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(axes, np.int64), name))
        n.input.append(name)
        changed = True
    return changed


def _check_convs(model: onnx.ModelProto, path: Path, shapes: dict) -> None:
    """A Conv whose group does not divide its channels passes onnx.checker and onnx's shape
    inference, then fails deep inside ORT or tinytlc's passes: name it here."""
    for n in model.graph.node:
        if n.op_type != "Conv" or n.domain not in ("", "ai.onnx"):
            continue
        w, x = shapes.get(n.input[1]), shapes.get(n.input[0])
        if not w or len(w) < 2 or None in w[:2]:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        c_in = x[1] if x and len(x) > 1 else None
        if w[0] % group or (c_in is not None and w[1] * group != c_in):
            raise TinyTLError(f"{path}: Conv {n.name or n.output[0]} is invalid: group {group} with a weight of shape "
                              f"{w} over {c_in or '?'} input channels (needs weight[1] * group == input channels "
                              "and weight[0] divisible by group)")


def _check_features(model: onnx.ModelProto, path: Path, resolution: int, shapes: dict) -> None:
    """A Gemm or MatMul layer whose weight takes another number of features than its input has at
    this resolution: a head over a flattened C x H x W map (no global pooling) trains only at the
    size it was exported for. Said here, with that size where one of side * 2^k gives the map the
    weight wants; ORT would say "GEMM: Dimension mismatch"."""
    values = _constants(model.graph)
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type not in ("Gemm", "MatMul") or n.input[1] not in values or \
                any(a.name == "transA" and a.i for a in n.attribute):
            continue
        w, x = shapes.get(n.input[1]), shapes.get(n.input[0])
        if not w or len(w) != 2 or not x:
            continue
        wanted = w[1] if n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute) else w[0]
        flat = producer.get(n.input[0])
        grid = shapes.get(flat.input[0]) if flat is not None and _flattens(flat, producer, values) else None
        grid = grid if grid and len(grid) == 4 and None not in grid[1:] else None
        has = x[-1] if x[-1] is not None else grid and grid[1] * grid[2] * grid[3]
        if not has or has == wanted:
            continue
        name = f"{n.op_type} {n.name or n.output[0]}"
        if grid is None:
            raise TinyTLError(f"{path}: {name} takes {wanted:,} features and gets {has:,} at {resolution} px")
        side = int(np.sqrt(wanted / grid[1]))  # (the map is square, as the image)
        sizes = [side << k for k in range(13) if 8 <= side << k <= 4096 and side * side * grid[1] == wanted
                 and _map_side(model, flat.input[0], side << k) == side]
        raise TinyTLError(f"{path}: its head ({name}) reads a flattened {grid[1]} x H x W map ({wanted:,} features at "
                          f"the exported size, {has:,} at {resolution} px): compile at the size it was exported for"
                          + (f" (--resolution {sizes[0]})" if sizes else ""))


_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Less", "Greater"}


def _check_broadcasts(model: onnx.ModelProto, path: Path, resolution: int, shapes: dict) -> None:
    """An elementwise op whose inputs do not broadcast at this resolution: a constant sized for the
    image size the file was made for (Caffe's mean image, a position table added to the map). ORT
    would say "Input 0 expected to have type but instead is null" at some later node. Said here,
    with the size where the constant is a 4-D map beside one of the image's own size."""
    values = _constants(model.graph)
    for n in model.graph.node:
        if n.op_type not in _BROADCASTING or n.domain not in ("", "ai.onnx"):
            continue
        ins = [(i, shapes.get(i)) for i in n.input if i]
        if len(ins) < 2 or any(s is None for _, s in ins):
            continue
        rank = max(len(s) for _, s in ins)
        padded = [[1] * (rank - len(s)) + s for _, s in ins]
        if all(len({d for d in dims if d not in (None, 0, 1)}) <= 1 for dims in zip(*padded)):
            continue
        hint = ""
        const = next((s for i, s in ins if i in values and len(s) == 4), None)
        if const is not None and any(s[2:] == [resolution, resolution] for i, s in ins if i not in values) and \
                const[2] == const[3]:
            hint = f": compile at the size it was made for (--resolution {const[2]})"
        raise TinyTLError(f"{path}: {n.op_type} {n.name or n.output[0]} combines shapes "
                          f"{' and '.join(str(['?' if d is None else d for d in s]) for _, s in ins)}, which do not "
                          f"broadcast at {resolution} px (a constant made for another image size){hint}")


def _flattens(node: onnx.NodeProto, producer: dict, values: dict) -> bool:
    """Flatten(axis=1), or a Reshape to (N, -1) (torch's `x.view(x.size(0), -1)`: a Concat ending in
    -1): one row of C*H*W features per image."""
    if node.op_type == "Flatten":
        return next((a.i for a in node.attribute if a.name == "axis"), 1) == 1
    if node.op_type != "Reshape":
        return False
    shape = node.input[1]
    if shape in producer and producer[shape].op_type == "Concat":
        shape = producer[shape].input[-1]
    if shape not in values:
        return False
    last = onnx.numpy_helper.to_array(values[shape]).reshape(-1)
    return last.size in (1, 2) and last[-1] == -1


def _map_side(model: onnx.ModelProto, value: str, size: int) -> int | None:
    """The height of `value` (a square map) when the image is size x size pixels."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    before = [d.dim_value for d in dims[2:]]
    for d in dims[2:]:
        d.dim_value = size
    try:
        shape = _shapes(model).get(value)
    finally:
        for d, v in zip(dims[2:], before):
            d.dim_value = v
    return shape[2] if shape and len(shape) == 4 and shape[2] == shape[3] else None


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """A truncated external data file (a copy cut short) loads without complaint and then fails
    the checker with "should contain one and only one value field": compare its size with the
    offsets and lengths the model gives its tensors."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data
    ends: dict[str, int] = {}
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            info = ExternalDataInfo(t)
            ends[info.location] = max(ends.get(info.location, 0), (info.offset or 0) + (info.length or 0))
    for location, end in ends.items():
        file = path.parent / location
        if file.is_file() and file.stat().st_size < end:
            raise TinyTLError(f"{path}: its external data file {location} is shorter than the tensors it should hold "
                              f"({file.stat().st_size:,} of {end:,} bytes; truncated?)")


def load_onnx(path: Path, resolution: int) -> tuple[onnx.ModelProto, list[str]]:
    """Load a user's .onnx file (external data beside it is read too) and check that ORT 1.19.2 can
    train it at this resolution: opset brought into 13..21, initializers taken out of the graph
    inputs (files written for IR < 4 list them there), training-mode ops made inference ops, a final
    Softmax dropped, (N, K, 1, 1) logits flattened, the batch made symbolic, the image size fixed.
    Also returns notes for the user on what was changed."""
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
        if model.ir_version > onnx.IR_VERSION:  # (onnx >= 1.18 writes IR 11; the checker's message blames the file)
            raise TinyTLError(f"{path}: IR version {model.ir_version} is newer than this onnx "
                              f"({'.'.join(onnx.__version__.split('.')[:2])}) reads; save it with ir_version <= {onnx.IR_VERSION}")
        _check_external_data(model, path)
        onnx.external_data_helper.load_external_data_for_model(model, os.fspath(path.parent))
        onnx.checker.check_model(model)
    except TinyTLError:
        raise
    except Exception as e:
        raise TinyTLError(f"{path}: not a valid ONNX model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    return prepare_onnx(model, path, resolution)


def prepare_onnx(model: onnx.ModelProto, path: Path | str, resolution: int) -> tuple[onnx.ModelProto, list[str]]:
    """load_onnx after reading: the checks and changes above, for a file or an exported module
    (`path` names it in messages)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise TinyTLError(f"{path}: the model imports no ai.onnx opset")
    _check_float32(model, path)
    _inline_constant_ifs(model.graph)
    _refuse_control_flow(model.graph, path)
    if opset < MIN_OPSET or opset > MAX_OPSET:
        model = _convert_opset(model, path, opset)
    # IR 4 lets initializers leave the inputs; a converted opset may need a newer IR still
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    model.ir_version = min(MAX_IR, max(model.ir_version, 4,
                                       onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])))
    if any(n.domain not in ("", "ai.onnx") for n in model.graph.node):
        model = _unfuse_ort_ops(model, path)
    params = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in params]
    notes = []
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    if any(i.name in used for i in inputs):  # an input no node reads (a flag, a second head's) goes
        notes += [f"its unused input '{i.name}' left out" for i in inputs if i.name not in used]
        inputs = [i for i in inputs if i.name in used]
    if len(inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise TinyTLError(f"{path}: expected one image input and one logits output, found "
                          f"{len(inputs)} inputs ({', '.join(i.name for i in inputs)}) and "
                          f"{len(model.graph.output)} outputs")
    _inference_mode(model.graph)
    _explicit_computed_batchnorms(model)
    image = model.graph.input[0]  # (not inputs[0]: extend() copied it)
    del model.graph.value_info[:]  # shapes recorded for another size or batch: inferred again
    softmax = _drop_final_softmax(model)
    if softmax:
        notes.append(f"its final {softmax} left out: training and the exported model use logits")
    adapter = _take_input_adapter(model)
    if adapter:
        notes.append(f"it takes {' '.join(adapter.values())} images: trained on float NCHW ones, exported taking its own")
    if image.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise TinyTLError(f"{path}: input '{image.name}' is {onnx.TensorProto.DataType.Name(image.type.tensor_type.elem_type)}, "
                          "expected float32 images")
    dims = image.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise TinyTLError(f"{path}: input '{image.name}' has rank {len(dims)}, expected NCHW images")
    if not dims[1].HasField("dim_value") or dims[1].dim_value not in (1, 3):
        raise TinyTLError(f"{path}: input '{image.name}' has {dims[1].dim_value or dims[1].dim_param or '?'} "
                          "channels, expected 1 (grayscale) or 3 (RGB) in NCHW order")
    fixed = [d.dim_value for d in dims[2:] if d.HasField("dim_value")]
    if len(fixed) == 2 and fixed[0] != fixed[1]:
        raise TinyTLError(f"{path}: input '{image.name}' is {fixed[0]}x{fixed[1]} pixels; tinytlc trains square "
                          "images: export the model with a square (or dynamic) input size")
    if fixed and fixed[0] != resolution:
        raise TinyTLError(f"{path}: input '{image.name}' is {fixed[0]}x{fixed[0]} pixels, "
                          f"--resolution is {resolution} (shape mismatch)")
    for axis in (2, 3):
        dims[axis].dim_value = resolution
    if dims[0].HasField("dim_value"):  # exported for one batch size: its Reshapes may have it baked in
        _set_prop(model, EXPORTED_BATCH, str(dims[0].dim_value))
    dims[0].dim_param = "batch"
    shapes = _shapes(model)  # (once: the Flatten below changes no shape the checks read)
    if _squeeze_known_ones(model, shapes):
        shapes = _shapes(model)
    if _flatten_logits(model, shapes):
        notes.append("its (N, K, 1, 1) logits flattened to (N, K)")
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    if out_dims:
        out_dims[0].dim_param = "batch"
    _check_convs(model, path, shapes)
    _check_features(model, path, resolution, shapes)
    _check_broadcasts(model, path, resolution, shapes)
    return model, notes


def file_resolution(spec: str) -> int | None:
    """The square image size a .onnx file fixes in its input, or None (a dynamic size, or not a
    file): --resolution defaults to it. A file that cannot be read is load_onnx's to name."""
    if not spec.endswith(".onnx") or not Path(spec).is_file():
        return None
    try:
        model = onnx.load(spec, load_external_data=False)
    except Exception:
        return None
    params = {t.name for t in model.graph.initializer}
    dims = next((i.type.tensor_type.shape.dim for i in model.graph.input if i.name not in params
                 and len(i.type.tensor_type.shape.dim) == 4), [])
    spatial = dims[1:3] if _looks_nhwc(dims) else dims[2:]  # (an NHWC file is taken as NCHW: _take_input_adapter)
    sizes = {d.dim_value for d in spatial if d.HasField("dim_value")}
    return sizes.pop() if len(dims) == 4 and all(d.HasField("dim_value") for d in spatial) and len(sizes) == 1 else None


_AFFINE = ("Sub", "Add", "Mul", "Div")


def _own_normalisation(model: onnx.ModelProto) -> tuple[float | None, str | None]:
    """The pixel range (1 or 255) a network expects when it normalises its own input, and a remark
    for the user. What is read, from the image input on (deployed files often take raw 0..255
    pixels): Sub, Add, Mul, Div by per-channel or scalar constants; a mean image subtracted (Caffe's
    (1, 3, H, W), read per channel); a BatchNormalization over constant statistics (MXNet's and
    Caffe's data_bn); through Cast to float, Identity and Transposes (tf2onnx --inputs-as-nchw puts a
    Keras Rescaling between two, with (3,) constants over the last axis). Shape and Size readers of
    the image (`B = x.shape[0]`) read no pixel and are passed over.

    All of this is preprocessing, not the network: its constants become Constant nodes, so `full`
    does not train them, and a data_bn becomes Mul + Add by its frozen scale and shift, so no method
    trains it as a norm (its statistics describe the pixels it expects, as a mean and std do).
    (None, None) when the network starts otherwise; (None, remark) when it starts with arithmetic on
    constants that cannot be read with confidence: it is then fed ImageNet-normalised pixels, and
    the remark says so rather than leaving the user to find out from the accuracy."""
    from collections import defaultdict

    from onnx import numpy_helper
    graph = model.graph
    inits, consts = {t.name: t for t in graph.initializer}, _constants(graph)
    users = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            users[name].append(n)
    channels = graph.input[0].type.tensor_type.shape.dim[1].dim_value

    def constant(name):
        t = consts.get(name)
        return None if t is None or t.data_type != onnx.TensorProto.FLOAT else numpy_helper.to_array(t).astype(np.float64)

    def per_channel(a, axis, image_ok):
        """One value per channel when `a` broadcasts over the 4-D image along the channel axis only;
        an image of values (a mean image) averaged per channel if `image_ok`. None otherwise."""
        if a is None or a.ndim > 4:
            return None
        a = a.reshape((1,) * (4 - a.ndim) + a.shape)
        if a.shape[0] != 1 or a.shape[axis] not in (1, channels) or \
                (not image_ok and any(d != 1 for i, d in enumerate(a.shape) if i != axis)):
            return None
        return np.broadcast_to(np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).mean(1), (channels,))

    x, axis, scale, shift = graph.input[0].name, 1, np.ones(channels), np.zeros(channels)
    read, names, bns, image, stop = [], [], [], False, None
    outputs = {o.name for o in graph.output}
    while x not in outputs:
        readers = [n for n in users[x] if n.op_type not in ("Shape", "Size")]
        if len(readers) != 1 or readers[0].domain not in ("", "ai.onnx") or list(readers[0].input).count(x) != 1:
            break
        node, attrs = readers[0], {a.name: onnx.helper.get_attribute_value(a) for a in readers[0].attribute}
        if node.op_type == "Transpose":
            perm = list(attrs.get("perm", [3, 2, 1, 0]))
            if sorted(perm) != [0, 1, 2, 3]:
                break
            axis = perm.index(axis)
        elif node.op_type in _AFFINE:
            other = node.input[1] if node.input[0] == x else node.input[0]
            c = per_channel(constant(other), axis, node.op_type in ("Sub", "Add"))
            if c is None or (node.input[0] != x and node.op_type in ("Sub", "Div")) or \
                    (node.op_type in ("Mul", "Div") and not np.all(c)):
                stop = node if constant(other) is not None else None
                break
            image |= constant(other).size > channels
            if node.op_type == "Sub":
                shift = shift - c
            elif node.op_type == "Add":
                shift = shift + c
            elif node.op_type == "Mul":
                scale, shift = scale * c, shift * c
            else:
                scale, shift = scale / c, shift / c
            read.append(node)
            names.append(other)
        elif node.op_type == "BatchNormalization":
            params = [constant(i) for i in node.input[1:5]]
            if axis != 1 or any(p is None or p.shape != (channels,) for p in params):
                stop = node
                break
            gamma, beta, mean, var = params
            s = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
            scale, shift = scale * s, shift * s + beta - mean * s
            read.append(node)
            bns.append((node, s, beta - mean * s))
        elif not (node.op_type == "Identity" or node.op_type == "Cast" and attrs.get("to") == onnx.TensorProto.FLOAT):
            break
        x = node.output[0]
    mean = -shift / scale  # y = (x - mean) * scale
    # statistics of raw pixels (a data_bn's) lie inside the range; a BN whose mean is about 0 was
    # fitted on pixels normalised already
    inside = (0.1, 0.9) if bns else (-0.05, 1.05)
    pixels = next((r for r in (1.0, 255.0) if np.all((mean >= inside[0] * r) & (mean <= inside[1] * r))
                   and np.all(np.abs(scale) * r >= 0.5)), None)
    if stop is not None or (read and pixels is None):
        what = stop or read[0]
        return None, (f"it seems to preprocess its own input ({what.op_type} {what.name or what.output[0]}) in a way "
                      "tinytlc cannot read: fed ImageNet-normalised pixels, check that the network expects those "
                      "(--pixels says what it takes)")
    if not read:
        return None, None
    for name in dict.fromkeys(names):
        if name in inits and all(u.op_type in _AFFINE for u in users[name]):
            graph.node.insert(0, onnx.helper.make_node("Constant", [], [name], value=inits[name]))
            graph.initializer.remove(inits[name])
    for bn, s, b in bns:  # x * s + b: its statistics folded in, as constants
        name, (src, *params), y = bn.name or bn.output[0], bn.input, bn.output[0]
        for p in dict.fromkeys(params):
            if p in inits and all(u is bn for u in users[p]):
                graph.initializer.remove(inits[p])
        tensors = [numpy_helper.from_array(v.reshape(-1, 1, 1).astype(np.float32), f"{name}/{k}")
                   for k, v in (("scale", s), ("shift", b))]
        nodes = [onnx.helper.make_node("Constant", [], [t.name], value=t) for t in tensors] + [
            onnx.helper.make_node("Mul", [src, tensors[0].name], [f"{name}/scaled"], name=f"{name}/Mul"),
            onnx.helper.make_node("Add", [f"{name}/scaled", tensors[1].name], [y], name=f"{name}/Add")]
        _replace_node(graph, next(i for i, n in enumerate(graph.node) if n.output[:1] == [y]), nodes)
    return pixels, "its mean image read per channel" if image else None


def _preprocess(model: onnx.ModelProto, notes: list[str]) -> dict:
    """What tinytlc feeds the network: ImageNet-normalised pixels, or raw pixels in the range a
    network that normalises its own input expects (data.Preprocess divides by 255 first)."""
    pixels, remark = _own_normalisation(model)
    adapter = json.loads(next((p.value for p in model.metadata_props if p.key == INPUT_ADAPTER), "{}"))
    extra = {"adapter": adapter} if adapter else {}  # (for export: the input as the file took it)
    if pixels is None and adapter.get("dtype") == "uint8":  # uint8 images are raw pixels, whatever follows
        return {**raw_pixels(255), **extra}
    if pixels is None:
        notes += [remark] if remark else []
        return {**IMAGENET, **extra}
    notes.append(f"it normalises its own input{f' ({remark})' if remark else ''}: fed pixels in 0..{pixels:g}")
    return {**raw_pixels(pixels), **extra}


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
    if norm != "batch" and (spec.endswith(".onnx") or ":" in spec):
        raise TinyTLError("--norm applies to zoo models only")
    if spec.endswith(".onnx") or Path(spec).suffix == ".onnx":
        if not Path(spec).is_file():
            raise TinyTLError(f"{spec}: no such file")
        model, notes = load_onnx(Path(spec), resolution)
        return Source(model, _preprocess(model, notes), f"ONNX file {spec}" + (f" ({'; '.join(notes)})" if notes else ""))
    if ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        model, notes = load_module(load_function(spec), spec, resolution)
        return Source(model, _preprocess(model, notes), f"PyTorch module {spec}" + (f" ({'; '.join(notes)})" if notes else ""))
    entry = zoo.get(spec)
    if norm != "batch" and "norm" not in entry.build.__code__.co_varnames:
        raise TinyTLError(f"--norm {norm}: {spec} is built with BatchNorm only (proxylessnas-mobile takes --norm group)")
    with torch.random.fork_rng():  # what is not loaded (a head, proxylessnas) is drawn the same every compile
        torch.manual_seed(0)
        net = entry.build(resolution=resolution, pretrained=pretrained, **({"norm": norm} if norm != "batch" else {}))
    weights = entry.weights if pretrained and getattr(net, "pretrained", True) else "random init"
    return Source(export_module(net, resolution), entry.preprocess, f"{spec} ({weights})")
