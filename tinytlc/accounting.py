"""`tinytlc analyze`: memory of a training step by accounting, from the compiled forward graph.

Two accountings, per sample (batch 1), then total = activations x batch + parameters:

`paper` - the TinyTL paper's rules:
- parameters: trainable at 32 bits, frozen at 8 bits; no gradient or optimizer state;
- stored for backward: the input of every conv/linear whose weight trains, the input of every
  norm whose scale trains, 1 bit per element of every ReLU/ReLU6/LeakyReLU and 32 bits per
  element of every sigmoid/h-swish/tanh that backward passes through;
- peak = max over layers of (layer input + layer output, a conv's output divided by its groups)
  + everything stored so far + the input held by an open residual block.

`exact` - what an exact backward must store, same peak rule: parameters at 32 bits (as tinytlc
keeps them), and a GroupNorm that backward passes through stores its normalised input (32 bits)
even when its scale is frozen: its statistics are per sample, so it is not a linear map, which
the paper's rules treat it as.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward import find_blocks
from tinytlc.passes.forward._values import is_constant

ACT_1BIT = {"Relu", "Clip", "LeakyRelu"}
ACT_32BIT = {"Sigmoid", "HardSwish", "HardSigmoid", "Tanh"}


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


def account(graph: ir.Graph, trainable: set[str], accounting: str = "paper") -> dict:
    if accounting not in ("paper", "exact"):
        raise ValueError(accounting)
    params = {name: v for name, v in graph.initializers.items() if _is_param(v)}
    frozen_bits = 8 if accounting == "paper" else 32
    param_bytes = sum(int(np.prod(v.shape)) * (4 if name in trainable else frozen_bits // 8)
                      for name, v in params.items())

    nodes = list(graph)
    sources: dict[int, set[str] | None] = {}  # value -> initializers it is computed from (None: data)
    grad_after: dict[int, bool] = {}  # value -> does backward reach it (a trainable parameter at/before it)
    for v in graph.inputs:
        sources[id(v)] = None
    for name, v in graph.initializers.items():
        sources[id(v)] = {name}
    for node in nodes:
        ins = [i for i in node.inputs if i is not None]
        src = set()
        for i in ins:
            s_i = sources.get(id(i), set())
            src = None if s_i is None or src is None else src | s_i
        flows = any(i.name in trainable or grad_after.get(id(i), False) for i in ins)
        for o in node.outputs:
            sources[id(o)] = src
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
                (sources.get(id(next(v for v in node.inputs if not data(v))), set()) or set()) & trainable:
            keep = (inputs[0], 4.0)  # a norm whose scale trains keeps its (normalised) input
        elif node.op_type in ACT_1BIT and through(node):
            keep = (node.outputs[0], 1 / 8)
        elif node.op_type in ACT_32BIT and through(node):
            keep = (node.outputs[0], 4.0)
        elif accounting == "exact" and node.op_type == "Div" and through(node) and _is_group_norm(node):
            keep = (node.outputs[0], 4.0)  # the normalised input; its statistics are per sample
        if keep is not None and id(_root(keep[0])) not in stored_ids:
            stored_ids.add(id(_root(keep[0])))
            nbytes = _elements(keep[0]) * keep[1]
            stored += nbytes
            stored_by[node.op_type] = stored_by.get(node.op_type, 0.0) + nbytes
    return {"accounting": accounting, "param_bytes": int(param_bytes), "activation_bytes_per_sample": int(peak),
            "stored_bytes_per_sample": int(stored), "peak_at": peak_at,
            "stored_by_op": {k: int(v) for k, v in stored_by.items()}}


def _is_group_norm(div: ir.Node) -> bool:
    """Div(x - mean, sqrt(var + eps)) of a GroupNorm written out (lite residual modules)."""
    num, den = div.inputs[:2]
    return num is not None and den is not None and num.producer() is not None and \
        num.producer().op_type == "Sub" and den.producer() is not None and den.producer().op_type == "Sqrt"


def analyze(model: str, method: str, *, resolution: int = 224, batch_size: int = 8, num_classes: int | None = None,
            accounting: str = "paper", pretrained: bool = False, lite=None, norm: str = "batch") -> dict:
    from tinytlc.pipeline import forward_graph
    irm, trainable, _, classes = forward_graph(model, method, num_classes, resolution, pretrained, lite, norm=norm)
    result = account(irm.graph, set(trainable), accounting)
    result.update(model=model, method=method, resolution=resolution, batch_size=batch_size, num_classes=classes,
                  total_bytes=int(result["activation_bytes_per_sample"] * batch_size + result["param_bytes"]))
    return result
