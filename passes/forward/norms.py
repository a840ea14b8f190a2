"""Norm layers of a forward graph, however they are written: one `Norm` per layer.

- a BatchNormalization or LayerNormalization node;
- a norm written out, as torch exports the zoo's GroupNorm and as tinytlc writes InstanceNorm,
  GroupNorm and its lite modules' norms: (x - mean) / sqrt(var + eps) (x possibly reshaped into
  groups), then optionally a reshape back, * scale, + shift;
- an affine over frozen statistics (BatchNorm after BatchNormToAffinePass): x * scale + shift with
  per-channel scale and shift computed from parameters only (a constant factor between them, as
  torch.addcmul writes, included: ConvNeXt V2's GRN affine), or a learned affine with no statistics
  (ResMLP's Affine, whose input is also the residual stream).
The shift, too, holds one value per channel: Swin V2's attention scales its
logits per head and adds a position bias made from parameters (an MLP's output, one value per head
and pair of tokens), which is no norm.
A norm is one layer whatever the number of ONNX nodes it takes (the paper's accounting counts it
once, and a bias right before it is redundant with its shift).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from tinytlc.passes.forward._values import is_constant

RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}


@dataclass
class Norm:
    input: ir.Value                 # what is normalised (before any reshape into groups)
    output: ir.Value
    scales: list[ir.Value] = field(default_factory=list)  # parameters the scale is computed from
    shifts: list[ir.Value] = field(default_factory=list)
    nodes: list[ir.Node] = field(default_factory=list)


def param_sources(graph: ir.Graph) -> dict[int, set | None]:
    """For every value (by id): the initializers it is computed from, or None when it depends on
    data (a graph input). One pass in graph order."""
    sources: dict[int, set | None] = {id(v): None for v in graph.inputs}
    sources.update({id(v): {v} for v in graph.initializers.values()})
    for node in graph:
        src: set | None = set()
        for i in node.inputs:
            s = sources.get(id(i), set()) if i is not None else set()
            if s is None:
                src = None
                break
            src = src | s
        for o in node.outputs:
            sources[id(o)] = src
    return sources


def _params(v: ir.Value, sources: dict) -> list[ir.Value] | None:
    """The parameters (not constants) a per-channel value is made of, or None for data."""
    s = sources.get(id(v), set())
    if s is None:
        return None
    return [p for p in s if not is_constant(p)]


def _one_axis(v: ir.Value, sources: dict) -> bool:
    """At most one dimension other than 1 (of the value, or of its parameters where shapes are not
    inferred yet): one value per channel, or a single one."""
    shapes = [v.shape] if v.shape is not None else [p.shape for p in (_params(v, sources) or [])]
    return bool(shapes) and all(s is not None and sum(d != 1 for d in s) <= 1 for s in shapes)


def _per_channel(v: ir.Value, sources: dict) -> bool:
    """A scale with one value per channel (not a layer scale over a whole tensor)."""
    return _one_axis(v, sources) and (v.shape is None or len(v.shape) >= 2)


def _single_user(v: ir.Value, op_types: set[str]) -> ir.Node | None:
    uses = list(v.uses())
    if len(uses) == 1 and uses[0][0].op_type in op_types:
        return uses[0][0]
    return None


def _scale_shift(y: ir.Value, sources: dict, mul: ir.Node | None = None):
    """After y: Mul(y, scale) then Add(., shift) with parameter-made scale and shift (per channel), if present.
    `mul`: the scaling Mul, given where y has other readers (an affine norm on a residual stream)."""
    scales, shifts, nodes = [], [], []
    mul = mul or _single_user(y, {"Mul"})
    if mul is not None:
        other = next((i for i in mul.inputs if i is not y), None)
        p = _params(other, sources) if other is not None else None
        if p is not None:
            scales, nodes, y = p, [mul], mul.outputs[0]
    while (mul := _single_user(y, {"Mul"})) is not None and scales:  # addcmul's `value` (1): GRN's
        other = next((i for i in mul.inputs if i is not y), None)
        if other is None or _params(other, sources) != [] or other.shape is None or any(d != 1 for d in other.shape):
            break
        nodes, y = nodes + [mul], mul.outputs[0]
    add = _single_user(y, {"Add"})
    if add is not None:
        shift = next((i for i in add.inputs if i is not y), None)
        p = _params(shift, sources) if shift is not None and _one_axis(shift, sources) else None
        if p is not None:
            shifts, y = p, add.outputs[0]
            nodes.append(add)
    return scales, shifts, nodes, y


def _between(start: ir.Value, end: ir.Value) -> list[ir.Node]:
    """Nodes that compute `end` from `start` (and from parameters)."""
    seen, stack, nodes = set(), [end], []
    while stack:
        v = stack.pop()
        p = v.producer()
        if v is start or p is None or id(p) in seen:
            continue
        seen.add(id(p))
        nodes.append(p)
        stack.extend(i for i in p.inputs if i is not None)
    return nodes


def _written_out(div: ir.Node) -> tuple[ir.Value, ir.Value] | None:
    """(x, normalised output) if `div` is Div(x - mean(x), sqrt(...)), x through a reshape."""
    num, den = div.inputs[0], div.inputs[1] if len(div.inputs) > 1 else None
    if num is None or den is None or num.producer() is None or den.producer() is None:
        return None
    if num.producer().op_type != "Sub" or den.producer().op_type != "Sqrt":
        return None
    x = num.producer().inputs[0]
    mean = num.producer().inputs[1]
    if mean is None or mean.producer() is None or mean.producer().op_type != "ReduceMean" or \
            mean.producer().inputs[0] is not x:
        return None
    y = div.outputs[0]
    if x.producer() is not None and x.producer().op_type in RESHAPES:
        x = x.producer().inputs[0]
        back = _single_user(y, RESHAPES)
        if back is not None:
            y = back.outputs[0]
    return x, y


def find_norms(graph: ir.Graph) -> list[Norm]:
    """Every norm layer in graph order (module docstring)."""
    sources = param_sources(graph)
    norms, claimed = [], set()
    for node in graph:
        if id(node) in claimed:
            continue
        norm = None
        if node.op_type in ("BatchNormalization", "LayerNormalization") and node.domain in ("", "ai.onnx"):
            scale = [v for v in node.inputs[1:2] if v is not None and v.is_initializer()]
            shift = [v for v in node.inputs[2:3] if v is not None and v.is_initializer()]
            norm = Norm(node.inputs[0], node.outputs[0], scale, shift, [node])
        elif node.op_type == "Div" and (found := _written_out(node)) is not None and \
                sources.get(id(found[0]), set()) is None:  # (of data: not a standardised weight)
            x, y = found
            scales, shifts, _, out = _scale_shift(y, sources)
            norm = Norm(x, out, scales, shifts, _between(x, out))
        elif node.op_type == "Mul" and len(node.inputs) == 2:
            for i, x in enumerate(node.inputs):
                other = node.inputs[1 - i]
                if x is None or other is None or sources.get(id(x), set()) is not None:
                    continue
                if not _per_channel(other, sources):
                    continue
                # x may have other readers: ResMLP's Affine reads the residual stream the block adds to
                scales, shifts, nodes, out = _scale_shift(x, sources, node)
                if scales and shifts:
                    norm = Norm(x, out, scales, shifts, _between(x, out))
                break
        if norm is not None:
            claimed.update(id(n) for n in norm.nodes)
            norms.append(norm)
    return norms
