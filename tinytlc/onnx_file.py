"""Step 1 of the data flow for a .onnx file (a user's, or a module export_module wrote): read it
and bring it into what onnxruntime-training 1.19.2 trains, or name in one line why it cannot be.

What changes (each said to the user where it matters): the opset brought into 13..21 and the IR
version to 4..10; initializers taken out of the graph inputs; ORT's fused ops written out again;
an If on a constant replaced by its branch; training-mode ops made inference ops; a
BatchNormalization over statistics the graph computes (timm's ScaledStdConv2d) written out; a
Squeeze without axes given them; a final Softmax dropped; a Cast/Transpose on the image input taken off (recorded
for export); (N, K, 1, 1) logits flattened; the batch made symbolic and the image size fixed.
What is refused by name: control flow, quantized or float16 networks, other than one float NCHW
image input and one logits output, convs, features or broadcasts that do not fit the image size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx

from tinytlc.errors import TinyTLError
from tinytlc.passes.forward.static_reshapes import EXPORTED_BATCH

OPSET = 17  # what modules are exported at, and files older than MIN_OPSET converted to
MAX_OPSET = 21  # what onnxruntime-training 1.19.2 runs
MAX_IR = 10

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


def constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Every constant tensor by name: the initializers and the Constant nodes' values."""
    consts = {t.name: t for t in graph.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant"
                   and len(n.attribute) == 1 and n.attribute[0].name == "value"})
    return consts


def replace_node(graph: onnx.GraphProto, i: int, nodes: list[onnx.NodeProto]) -> None:
    """graph.node[i] replaced by `nodes`, in its place (the graph stays in topological order)."""
    del graph.node[i]
    for k, n in enumerate(nodes):
        graph.node.insert(i + k, n)


def set_prop(model: onnx.ModelProto, key: str, value: str) -> None:
    """One metadata entry set, the file's own kept."""
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, key: value})


def _looks_nhwc(dims) -> bool:
    """A 4-D image shape with 1 or 3 channels last and not second."""
    return len(dims) == 4 and dims[3].dim_value in (1, 3) and dims[1].dim_value not in (1, 3)


def _inline_constant_ifs(graph: onnx.GraphProto) -> None:
    """An If whose condition is a constant (an initializer or a Constant node) is the branch it
    takes: its nodes go in the If's place, their outputs renamed by Identity nodes."""
    from onnx import numpy_helper
    consts = constants(graph)
    for i, node in reversed(list(enumerate(graph.node))):
        if node.op_type != "If" or node.domain not in ("", "ai.onnx") or node.input[0] not in consts:
            continue
        taken = "then_branch" if numpy_helper.to_array(consts[node.input[0]]).item() else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == taken)
        _inline_constant_ifs(branch)
        graph.initializer.extend(branch.initializer)
        renamed = [onnx.helper.make_node("Identity", [b.name], [o], name=f"{node.name}/{o}")
                   for b, o in zip(branch.output, node.output)]
        replace_node(graph, i, list(branch.node) + renamed)


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
    consts = constants(graph)
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
        replace_node(graph, list(graph.node).index(n), nodes)


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
        set_prop(model, INPUT_ADAPTER, json.dumps(adapter))
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
    shapes.update({name: list(t.dims) for name, t in constants(model.graph).items()})
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
    values = constants(model.graph)
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
    values = constants(model.graph)
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
        set_prop(model, EXPORTED_BATCH, str(dims[0].dim_value))
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


def is_onnx_file(spec: str) -> bool:
    """MODEL names an ONNX file: it ends in .onnx (any case), or it is a file that is not Python (a
    model saved without the extension). A zoo name is the zoo's."""
    if spec.lower().endswith(".onnx"):
        return True
    if not Path(spec).is_file() or spec.endswith(".py") or ":" in spec:
        return False
    from tinytlc import zoo  # (imports torch: only for a file of another name)
    return spec not in zoo.MODELS


def file_resolution(spec: str) -> int | None:
    """The square image size a .onnx file fixes in its input, or None (a dynamic size, or not a
    file): --resolution defaults to it. A file that cannot be read is load_onnx's to name."""
    if not is_onnx_file(spec) or not Path(spec).is_file():
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
