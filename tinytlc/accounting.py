"""`tinytlc analyze`: memory of a training step by accounting, from the forward graph.

Two accountings, per sample (batch 1), then total = peak activations x batch + parameters:

`paper` - the TinyTL paper's rules (its profiler, tinytl/utils/memory_cost_profiler.py), layer by
layer in execution order, a layer being a conv, a linear, a norm (however many ONNX nodes it is
written with; BatchNorm is not folded here, it is a layer as in the paper) or an activation:
- parameters: trainable at 32 bits, frozen at 8 bits; no gradient or optimizer state;
- stored for backward, each layer for itself (a tensor two layers need is counted twice): the input
  of a conv or linear whose weight trains and of a norm whose scale trains (even where no gradient
  reaches it from below), 1 bit per input element of a ReLU/ReLU6/LeakyReLU and 32 bits per input
  element of a sigmoid/tanh/h-swish/h-sigmoid (not GELU: the paper's profiler does not count it);
  activations store unless only the classifier trains (`last`), whether or not the gradient passes;
- a layer's temporary memory: a conv's input + output / groups, a linear's input + output, a norm's
  or an activation's input; pooling, dropout, reshapes, residual adds, upsampling count nothing;
- peak = max over layers of (its temporary memory + everything stored before it + the input of the
  residual block it is in, held for the shortcut).

`exact` - what an exact backward must store, from the graph compile builds (BatchNorm folded),
node by node: parameters at 32 bits (as tinytlc keeps them), each tensor stored once, and a
GroupNorm that backward passes through stores its normalised input (32 bits) even when its scale
is frozen: its statistics are per sample, so it is not a linear map, which the paper treats it as.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward import find_blocks
from tinytlc.passes.forward._values import LITE, LOWERED, is_constant
from tinytlc.passes.forward.blocks import param_source, residual_segments
from tinytlc.passes.forward.norms import find_norms, param_sources

ACT_1BIT = {"Relu", "Clip", "LeakyRelu"}
ACT_32BIT = {"Sigmoid", "HardSwish", "HardSigmoid", "Tanh"}  # (GELU: the paper's profiler counts none)


ELEMENTWISE = {"Reshape", "Sub", "Div", "Mul", "Add", "Relu", "Clip", "LeakyRelu", "Sqrt", "Identity"}


def _elements(v: ir.Value | None, depth: int = 0) -> int:
    """Elements per sample (the batch dimension dropped). Where shape inference could not tell (a
    Reshape to a computed shape), the size of what an elementwise op or Reshape was made from."""
    if v is None:
        return 0
    if v.shape is not None and len(v.shape) > 0:
        dims = list(v.shape)[1:]
        if all(isinstance(d, int) for d in dims):
            return int(np.prod(dims))
    p = v.producer()
    if p is None or p.op_type not in ELEMENTWISE or depth > 8:
        return 0
    return max((_elements(i, depth + 1) for i in p.inputs if i is not None and not i.is_initializer()), default=0)


def _is_param(v: ir.Value | None) -> bool:
    return v is not None and v.is_initializer() and not is_constant(v) and v.const_value is not None \
        and v.const_value.dtype == ir.DataType.FLOAT


def _root(v: ir.Value) -> ir.Value:
    """Through Reshapes: the tensor whose data `v` is."""
    while v.producer() is not None and v.producer().op_type == "Reshape":
        v = v.producer().inputs[0]
    return v


def account(graph: ir.Graph, trainable: set[str], accounting: str = "paper", masks: bool = True) -> dict:
    """`masks`: activations store for backward (the paper: every method but `last`)."""
    if accounting == "paper":
        return _paper(graph, trainable, masks)
    if accounting == "exact":
        return _exact(graph, trainable)
    raise ValueError(accounting)


def _param_bytes(graph: ir.Graph, trainable: set[str], frozen_bytes: int) -> int:
    return sum(int(np.prod(v.shape)) * (4 if name in trainable else frozen_bytes)
               for name, v in graph.initializers.items() if _is_param(v))


def _paper_layer(node: ir.Node, trainable: set[str], masks: bool) -> tuple[str, float, float] | None:
    """(kind, temporary bytes, bytes stored for backward) of a conv, linear or activation node."""
    size = lambda v: _elements(v) * 4  # noqa: E731
    if node.op_type == "Conv":
        w = param_source(node.inputs[1])
        if w is None:  # a constant conv: a pooling
            return None
        x = size(node.inputs[0])
        return "conv", x + size(node.outputs[0]) // node.attributes.get_int("group", 1), x * (w.name in trainable)
    if node.op_type in ("Gemm", "MatMul"):
        weights = [param_source(v) for v in node.inputs[:2]]
        if node.op_type == "Gemm":
            weights[0] = None
        k = next((i for i, w in enumerate(weights) if w is not None), None)
        if k is None:  # data times data (attention) or times a constant (upsampling)
            return None
        x = size(node.inputs[1 - k])
        return "linear", x + size(node.outputs[0]), x * (weights[k].name in trainable)
    if node.op_type in ACT_1BIT:
        x = size(node.inputs[0])
        return "relu", x, x / 32 * masks
    if node.op_type in ACT_32BIT:
        x = size(node.inputs[0])
        return "smooth activation", x, x * masks
    return None


def _residual_spans(graph: ir.Graph, order: dict) -> list[tuple[int, int, float]]:
    """(first node, last node, bytes held) of each residual block: its input is held for the
    shortcut from the block's first reader of it to its Add, or to the Add that joins the block's
    lite module, which runs inside the block in the paper's network."""
    spans = []
    for x, _, merge in residual_segments(graph):
        readers = [order[id(u)] for u, _ in x.uses() if id(u) in order]
        if not readers:
            continue
        end, v = order[id(merge)], merge.outputs[0]
        while len(uses := list(v.uses())) == 1 and uses[0][0].op_type == "Add" and any(
                i is not v and i.producer() is not None and i.producer().meta.get(LITE) for i in uses[0][0].inputs):
            end, v = order[id(uses[0][0])], uses[0][0].outputs[0]
        spans.append((min(readers), end, _elements(x) * 4.0))
    return spans


def _paper(graph: ir.Graph, trainable: set[str], masks: bool) -> dict:
    """The paper's rules (module docstring)."""
    nodes = list(graph)
    order = {id(n): i for i, n in enumerate(nodes)}
    spans = _residual_spans(graph, order)
    norm_of = {id(n): norm for norm in find_norms(graph) for n in norm.nodes}
    stored, stored_by, seen = 0.0, {}, set()
    peak, peak_at = 0.0, None
    for i, node in enumerate(nodes):
        group = norm_of.get(id(node)) or node.meta.get(LOWERED)
        if group is not None:
            if id(group) in seen:
                continue
            seen.add(id(group))
        if id(node) in norm_of:
            norm = norm_of[id(node)]
            x = _elements(norm.input) * 4
            layer = "norm", x, x * any(p.name in trainable for p in norm.scales)
        elif LOWERED in node.meta:  # an activation written out (norms were found above)
            op, x = node.meta[LOWERED]
            layer = ("smooth activation", _elements(x) * 4, _elements(x) * 4 * masks) if op in ACT_32BIT else None
        else:
            layer = _paper_layer(node, trainable, masks)
        if layer is None:
            continue
        kind, temporary, keep = layer
        held = next((b for s, e, b in reversed(spans) if s <= i <= e), 0.0)
        if temporary + stored + held > peak:
            peak, peak_at = temporary + stored + held, node.name or node.op_type
        stored += keep
        if keep:
            stored_by[kind] = stored_by.get(kind, 0.0) + keep
    return {"accounting": "paper", "param_bytes": _param_bytes(graph, trainable, 1),
            "activation_bytes_per_sample": peak, "stored_bytes_per_sample": stored, "peak_at": peak_at,
            "stored_by": stored_by}


def _exact(graph: ir.Graph, trainable: set[str]) -> dict:
    param_bytes = _param_bytes(graph, trainable, 4)

    nodes = list(graph)
    sources = param_sources(graph)  # value -> initializers it is computed from (None: data)
    grad_after: dict[int, bool] = {}  # value -> does backward reach it (a trainable parameter at/before it)
    for node in nodes:
        flows = any(i is not None and (i.name in trainable or grad_after.get(id(i), False)) for i in node.inputs)
        for o in node.outputs:
            grad_after[id(o)] = flows

    def through(node: ir.Node) -> bool:
        return any(i is not None and grad_after.get(id(i), False) for i in node.inputs)

    def data(v: ir.Value | None) -> bool:
        return v is not None and sources.get(id(v), set()) is None

    # residual blocks: the block input is held from its first reader until the block's Add
    order = {id(n): i for i, n in enumerate(nodes)}
    spans = []
    for b in find_blocks(graph):
        add = b.merge
        if add is not None and add.op_type == "Add" and b.input in add.inputs:
            first = min((order[id(u)] for u, _ in b.input.uses() if id(u) in order), default=None)
            if first is not None:
                spans.append((first, order[id(add)], b.input))

    # the Div of a norm written out (x - mean) / std: its output is what a per-sample norm's backward reads
    norm_divs = {id(n) for norm in find_norms(graph) for n in norm.nodes if n.op_type == "Div"}
    stored, stored_ids, stored_by = 0.0, set(), {}
    peak, peak_at = 0.0, None
    for i, node in enumerate(nodes):
        inputs = [v for v in node.inputs if data(v)]
        out = sum(_elements(o) for o in node.outputs) * 4.0
        if node.op_type == "Conv" and not is_constant(node.inputs[1]):  # (a constant conv is a pooling)
            out /= node.attributes.get_int("group", 1)
        held = sum(_elements(x) * 4.0 for s, e, x in spans if s < i <= e and x not in inputs)
        layer = sum(_elements(v) * 4.0 for v in inputs) + out + stored + held
        if layer > peak:
            peak, peak_at = layer, node.name or node.op_type
        # what this layer stores for backward: (tensor, bytes per element)
        keep = None
        if node.op_type in ("Conv", "Gemm", "MatMul") and any(v is not None and v.name in trainable
                                                              for v in node.inputs[1:2]):
            keep = (node.inputs[0], 4.0)
        elif node.op_type == "Mul" and through(node) and len(inputs) == 1 and \
                {p.name for p in sources.get(id(next(v for v in node.inputs if not data(v))), set()) or ()} & trainable:
            keep = (inputs[0], 4.0)  # a norm whose scale trains keeps its (normalised) input
        elif node.op_type in ACT_1BIT and through(node):
            keep = (node.outputs[0], 1 / 8)
        elif node.op_type in ACT_32BIT and through(node):
            keep = (node.outputs[0], 4.0)
        elif id(node) in norm_divs and through(node):
            keep = (node.outputs[0], 4.0)  # the normalised input; its statistics are per sample
        if keep is not None and id(_root(keep[0])) not in stored_ids:
            stored_ids.add(id(_root(keep[0])))
            nbytes = _elements(keep[0]) * keep[1]
            stored += nbytes
            stored_by[node.op_type] = stored_by.get(node.op_type, 0.0) + nbytes
    return {"accounting": "exact", "param_bytes": int(param_bytes), "activation_bytes_per_sample": peak,
            "stored_bytes_per_sample": stored, "peak_at": peak_at, "stored_by": stored_by}


def analyze(model: str, method: str, *, resolution: int = 224, batch_size: int = 8, num_classes: int | None = None,
            accounting: str = "paper", pretrained: bool = False, lite=None, norm: str = "batch",
            lite_modules: bool = False) -> dict:
    """Memory of one training step of `method` on `model` by `accounting` (module docstring).
    `lite_modules`: the network carries lite residual modules whatever the method, as the paper
    profiles it (trained by full, lite and lite+bias; frozen otherwise)."""
    from tinytlc.pipeline import forward_graph
    if accounting not in ("paper", "exact"):
        raise ValueError(accounting)
    if accounting == "paper":  # the paper's modules: whole kernels, also where taps reach only padding
        from dataclasses import replace

        from tinytlc.passes.forward import LiteOptions
        lite = replace(lite or LiteOptions(), crop=False)
    irm, trainable, _, classes = forward_graph(model, method, num_classes, resolution, pretrained, lite, norm=norm,
                                               lite_modules=lite_modules, fold_norms=accounting != "paper")
    r = account(irm.graph, set(trainable), accounting, masks=method != "last")
    total = r["activation_bytes_per_sample"] * batch_size + r["param_bytes"]
    r.update(model=model, method=method, resolution=resolution, batch_size=batch_size, num_classes=classes,
             lite_modules=lite_modules or method.startswith("lite"),
             activation_bytes_per_sample=round(r["activation_bytes_per_sample"]),
             stored_bytes_per_sample=round(r["stored_bytes_per_sample"]),
             stored_by={k: round(v) for k, v in r["stored_by"].items()}, total_bytes=round(total))
    return r
