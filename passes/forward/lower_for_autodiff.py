"""Write ops that ONNX Runtime 1.19.2 cannot differentiate on the CPU with ops that it can.

| op                    | why                                     | written as                               |
|-----------------------|-----------------------------------------|------------------------------------------|
| HardSwish             | no gradient builder                     | x * Clip(x + 3, 0, 6) / 6 (torch's form)  |
| HardSigmoid           | no gradient builder                     | Clip(alpha x + beta, 0, 1)               |
| Gelu (opset 20)       | no gradient builder for the ONNX op     | 0.5 x (1 + erf(x / sqrt 2)), or the tanh form |
| LayerNormalization    | the builder needs the Mean and InvStdDev outputs, which exporters leave off | the same node with them declared (declare_layer_norm_statistics, on the final model) |
| InstanceNormalization | no gradient builder (torch's GroupNorm exports through it) | (x - mean) / sqrt(var + eps) * scale + bias |
| GroupNormalization    | no gradient builder                     | the same, over groups                    |
| GlobalMaxPool         | no gradient builder                     | MaxPool with a window of the whole image |
| Dropout (inference)   | with a ratio input, ORT's builder fails | Identity (what it computes at inference)  |
| PRelu                 | no gradient builder                     | Relu(x) - slope * Relu(-x)               |
| Elu, Selu, Celu       | no gradient builder                     | Relu(x) + alpha (exp(min(x, 0) [/ alpha]) - 1) [* gamma] |
| Softplus, Mish        | no gradient builder (torch's Mish exports through Softplus) | Relu(x) + log(1 + exp(-abs x)) [x tanh of it] |
| Pad, reflect / edge / wrap | the builder takes constant mode only | per padded axis, Concat of Slices of x (Gathers where reflected) |
| ReduceMax, ReduceMin  | no gradient builder                     | MaxPool with a window of the reduced axes (of -x for Min) |
| DepthToSpace, SpaceToDepth | no gradient builder (torch's pixel_shuffle; MobileViT-v2 exportable) | Reshape to 6-D, Transpose, Reshape: the ONNX definition (DCR or CRD) |

Exact: each is the op's definition, written with the same float operations the reference uses
where it matters (HardSwish as torch computes it; the exponential units' exp(x) - 1 where torch
uses expm1, within 1e-7 of it). Memory: the written-out forms keep what their
parts' gradients need (a Clip keeps a mask once the activation-mask pass has run).
Parameter names are kept: scale and bias initializers feed the new Mul and Add.

Pad (torch's ReflectionPad2d, ReplicationPad2d, F.pad(mode="reflect"/"replicate"/"circular"), timm's
BlurPool): its pads must be constant (an input from opset 11, an attribute before; an opset-18 axes
input is read). Each axis with nonzero pads (b, e) becomes, in turn, a Slice cropping any negative
side (as ORT does, before padding), then Concat(before, x, after) with before / after: reflect
x[b:0:-1] / x[n-2:n-2-e:-1] (a Gather of those constant indices: ORT 1.19.2's SliceGrad fails on a
negative step, narrowing_error), edge b copies of x[0:1] / e of x[n-1:], wrap x[n-b:] / x[:e]: the
mode's definition element for element, so the values are copies and exact; ORT's SliceGrad,
GatherGrad and ConcatGrad route each output's gradient back to the element it copies (summing
where one is copied twice, as torch's reflect / replicate backward does). The axis' size must be
static; a reflect wider than the axis less one (a wrap wider than the axis) is left alone (ORT
refuses it too). Nothing is stored for the backward but shapes and the constant indices.
ReduceMax over axes (torch's amax; timm's CBAM: x.amax((2, 3), keepdim=True), x.amax(1,
keepdim=True)), the axes an attribute or (opset 18) an input, keepdims 0 or 1, the reduced axes of
static size and not the batch: over image axes only, a MaxPool whose window is those axes' whole
extent (1 on the others), as GlobalMaxPool; over any other axes (channels) the input is
transposed to (N, kept axes..., reduced axes...) and reshaped to (N, kept, reduced) for a 1-D
MaxPool over the whole reduced extent; then reshaped to the output's shape (keepdims or not).
ReduceMin is -ReduceMax(-x). Exact in value (a max of the same floats); the gradient goes to the
maximal element, as torch's max_pool does. At ties it all goes to the first of them (ORT's
MaxPool's argmax) where torch's amax splits it evenly among them: the gradients differ only where
two inputs of one reduction are equal and maximal. Float activations from a conv practically
never are; tied zeros after a Relu are (a pixel whose channels are all negative), but there
both routes end at the Relu, whose gradient at 0 is 0, so the trained tensors' gradients agree.
The MaxPool keeps its argmax indices (int64, one per output), not its input.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir

from tinytlc.passes.forward._values import LOWERED, add_constant, const_array, normalize, replace_node


def _scalar(graph: ir.Graph, value: float) -> ir.Value:
    return add_constant(graph, "tinytlc.scalar", np.float32(value))


# exponential units: alpha's default, and whether x is divided by alpha in the exponent
_EXP_UNITS = {"Elu": (1.0, False), "Selu": (1.6732632423543772, False), "Celu": (1.0, True)}


def _per_channel(graph, t, v: ir.Value, rank: int) -> ir.Value:
    """A (C,) parameter as (C, 1, ..., 1) to broadcast over (N, C, ...)."""
    return t.op("Reshape", [v, add_constant(graph, "tinytlc.channel_shape", [-1] + [1] * (rank - 2))])


def gelu(graph: ir.Graph, t: ir.tape.Tape, x: ir.Value, tanh: bool) -> ir.Value:
    """0.5 x (1 + erf(x / sqrt 2)), or with tanh(sqrt(2 / pi) (x + 0.044715 x^3)) for the erf."""
    if tanh:
        inner = t.op("Mul", [t.op("Add", [x, t.op("Mul", [t.op("Mul", [t.op("Mul", [x, x]), x]),
                                                       _scalar(graph, 0.044715)])]),
                             _scalar(graph, math.sqrt(2 / math.pi))])
        gate = t.op("Tanh", [inner])
    else:
        gate = t.op("Erf", [t.op("Div", [x, _scalar(graph, math.sqrt(2))])])
    return t.op("Mul", [t.op("Mul", [x, t.op("Add", [gate, _scalar(graph, 1)])]), _scalar(graph, 0.5)])


def _lower(graph: ir.Graph, node: ir.Node, t: ir.tape.Tape) -> ir.Value | None:
    a = node.attributes
    x = node.inputs[0]
    if node.op_type == "HardSwish":
        relu6 = t.op("Clip", [t.op("Add", [x, _scalar(graph, 3)]), _scalar(graph, 0), _scalar(graph, 6)])
        return t.op("Div", [t.op("Mul", [x, relu6]), _scalar(graph, 6)])
    if node.op_type == "HardSigmoid":
        alpha, beta = a.get_float("alpha", 0.2), a.get_float("beta", 0.5)
        if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:  # torch's: relu6(x + 3) / 6
            relu6 = t.op("Clip", [t.op("Add", [x, _scalar(graph, 3)]), _scalar(graph, 0), _scalar(graph, 6)])
            return t.op("Div", [relu6, _scalar(graph, 6)])
        return t.op("Clip", [t.op("Add", [t.op("Mul", [x, _scalar(graph, alpha)]), _scalar(graph, beta)]),
                             _scalar(graph, 0), _scalar(graph, 1)])
    if node.op_type == "Gelu":
        return gelu(graph, t, x, tanh=a.get_string("approximate", "none") == "tanh")
    if node.op_type in _EXP_UNITS:  # Relu(x) + scale * (exp(min(x, 0) / a) - 1), min(x, 0) = -Relu(-x)
        default, divide = _EXP_UNITS[node.op_type]
        alpha = a.get_float("alpha", default)
        negative = t.op("Neg", [t.op("Relu", [t.op("Neg", [x])])])
        if divide:
            negative = t.op("Div", [negative, _scalar(graph, alpha)])
        tail = t.op("Mul", [t.op("Sub", [t.op("Exp", [negative]), _scalar(graph, 1)]), _scalar(graph, alpha)])
        y = t.op("Add", [t.op("Relu", [x]), tail])
        return t.op("Mul", [y, _scalar(graph, a.get_float("gamma", 1.0507009873554805))]) if node.op_type == "Selu" else y
    if node.op_type == "PRelu":  # Relu(x) - slope * Relu(-x)
        return t.op("Sub", [t.op("Relu", [x]), t.op("Mul", [node.inputs[1], t.op("Relu", [t.op("Neg", [x])])])])
    if node.op_type in ("Softplus", "Mish"):  # Relu(x) + log(1 + exp(-|x|)), |x| = Relu(x) + Relu(-x)
        positive, negative = t.op("Relu", [x]), t.op("Relu", [t.op("Neg", [x])])
        tail = t.op("Log", [t.op("Add", [t.op("Exp", [t.op("Neg", [t.op("Add", [positive, negative])])]),
                                          _scalar(graph, 1)])])
        y = t.op("Add", [positive, tail])
        return y if node.op_type == "Softplus" else t.op("Mul", [x, t.op("Tanh", [y])])
    if node.op_type == "Dropout":  # inference semantics (no training_mode): the identity
        training = node.inputs[2] if len(node.inputs) > 2 else None
        if training is None or not bool(const_array(training) if const_array(training) is not None else True):
            return t.op("Identity", [x])
        return None
    if x.shape is None:
        return None
    rank = len(x.shape)
    if node.op_type == "GlobalMaxPool" and all(isinstance(d, int) for d in x.shape[2:]):
        return t.op("MaxPool", [x], attributes={"kernel_shape": list(x.shape[2:])})
    if node.op_type == "Pad" and a.get_string("mode", "constant") in ("reflect", "edge", "wrap"):
        return _pad(graph, node, t, x, rank)
    if node.op_type in ("ReduceMax", "ReduceMin"):
        axes = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] is not None else None
        axes = const_array(axes) if axes is not None else a.get_ints("axes", None)
        if axes is None or len(axes) == 0:  # all axes (the batch too), or with noop_with_empty_axes, none
            return t.op("Identity", [x]) if a.get_int("noop_with_empty_axes", 0) and axes is not None else None
        if node.op_type == "ReduceMin":
            y = _reduce_max(graph, t, t.op("Neg", [x]), x.shape, [int(i) for i in axes], a.get_int("keepdims", 1))
            return None if y is None else t.op("Neg", [y])
        return _reduce_max(graph, t, x, x.shape, [int(i) for i in axes], a.get_int("keepdims", 1))
    if node.op_type in ("DepthToSpace", "SpaceToDepth") and all(isinstance(d, int) for d in x.shape[1:]) and rank == 4:
        return _depth_space(graph, t, node, x.shape)
    if node.op_type == "InstanceNormalization":
        y = normalize(graph, t, x, list(range(2, rank)), a.get_float("epsilon", 1e-5))
        return _affine(graph, t, y, node.inputs[1], node.inputs[2], rank, _group_norm_export(node))
    if node.op_type == "GroupNormalization" and isinstance(x.shape[1], int):
        groups, channels = a.get_int("num_groups"), x.shape[1]
        grouped = t.op("Reshape", [x, add_constant(graph, "tinytlc.grouped", [0, groups, -1])])
        y = normalize(graph, t, grouped, [2], a.get_float("epsilon", 1e-5))
        y = t.op("Reshape", [y, t.op("Shape", [x])])
        scale, bias = node.inputs[1], node.inputs[2]
        if scale.shape is not None and scale.shape[0] != channels:  # opset 18: one per group
            repeat = add_constant(graph, "tinytlc.group_index", np.repeat(np.arange(groups), channels // groups))
            scale, bias = t.op("Gather", [scale, repeat]), t.op("Gather", [bias, repeat])
        return _affine(graph, t, y, scale, bias, rank)
    return None


def _ints(graph, values) -> ir.Value:
    return add_constant(graph, "tinytlc.slice", [int(v) for v in values])


def _slice(graph, t, x: ir.Value, axis: int, start: int, end: int) -> ir.Value:
    return t.op("Slice", [x, _ints(graph, [start]), _ints(graph, [end]), _ints(graph, [axis])])


def _reversed(graph, t, x: ir.Value, axis: int, start: int, end: int) -> ir.Value:
    """x[start:end:-1] along `axis`, as a Gather: ORT 1.19.2's SliceGrad fails on a negative step
    (narrowing_error)."""
    return t.op("Gather", [x, add_constant(graph, "tinytlc.reflect", np.arange(start, end, -1, dtype=np.int64))],
                attributes={"axis": axis})


def _pad(graph, node: ir.Node, t, x: ir.Value, rank: int) -> ir.Value | None:
    """A reflect / edge / wrap Pad as Slices and a Concat per padded axis (module docstring)."""
    mode = node.attributes.get_string("mode")
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        pads = const_array(node.inputs[1])
    else:
        pads = node.attributes.get_ints("pads", None)
    if pads is None:
        return None
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        given = const_array(node.inputs[3])
        if given is None:
            return None
        axes = [int(i) % rank for i in np.asarray(given).reshape(-1)]
    if len(pads) != 2 * len(axes):
        return None
    y, changed = x, False
    for i, axis in enumerate(axes):
        before, after = pads[i], pads[i + len(axes)]
        if before == 0 and after == 0:
            continue
        n = x.shape[axis]
        if not isinstance(n, int):
            return None
        if before < 0 or after < 0:  # crop first
            y = _slice(graph, t, y, axis, max(-before, 0), n + min(after, 0))
            n += min(before, 0) + min(after, 0)
            before, after = max(before, 0), max(after, 0)
        if n <= 0 or (mode == "reflect" and max(before, after) > n - 1) or (mode == "wrap" and max(before, after) > n):
            return None
        parts = []
        if before:
            if mode == "reflect":
                parts.append(_reversed(graph, t, y, axis, before, 0))
            elif mode == "edge":
                parts += [_slice(graph, t, y, axis, 0, 1)] * before
            else:
                parts.append(_slice(graph, t, y, axis, n - before, n))
        parts.append(y)
        if after:
            if mode == "reflect":
                parts.append(_reversed(graph, t, y, axis, n - 2, n - 2 - after))
            elif mode == "edge":
                parts += [_slice(graph, t, y, axis, n - 1, n)] * after
            else:
                parts.append(_slice(graph, t, y, axis, 0, after))
        y = t.op("Concat", parts, attributes={"axis": axis}) if len(parts) > 1 else y
        changed = True
    return y if changed else t.op("Identity", [x])


def _reduce_max(graph, t, x: ir.Value, shape, axes: list[int], keepdims: int) -> ir.Value | None:
    """ReduceMax of x over `axes` as a MaxPool over their whole extent (module docstring)."""
    rank = len(shape)
    axes = sorted({i % rank for i in axes})
    if 0 in axes or rank < 2 or any(not isinstance(shape[i], int) for i in range(1, rank)):
        return None
    kept = [i for i in range(1, rank) if i not in axes]
    out_shape = [0] + [1 if i in axes else shape[i] for i in range(1, rank)] if keepdims else [0] + [shape[i] for i in kept]
    if axes[0] >= 2 and rank <= 5:  # image axes only: a window over them, as GlobalMaxPool (ORT pools 1 to 3 axes)
        y = t.op("MaxPool", [x], attributes={"kernel_shape": [shape[i] if i in axes else 1 for i in range(2, rank)]})
        return y if keepdims else t.op("Reshape", [y, _ints(graph, out_shape)])
    perm = [0] + kept + axes
    v = x if perm == list(range(rank)) else t.op("Transpose", [x], attributes={"perm": perm})
    reduced = int(np.prod([shape[i] for i in axes]))
    v = t.op("Reshape", [v, _ints(graph, [0, int(np.prod([shape[i] for i in kept])), reduced])])
    y = t.op("MaxPool", [v], attributes={"kernel_shape": [reduced]})
    return t.op("Reshape", [y, _ints(graph, out_shape)])


def _depth_space(graph, t, node: ir.Node, shape) -> ir.Value:
    """DepthToSpace / SpaceToDepth as the ONNX spec defines them: a 6-D Reshape, a Transpose, a
    Reshape (0 keeps the batch). Copies only, so exact; their gradients are a Transpose and Reshapes."""
    (_, c, h, w), b = shape, node.attributes.get_int("blocksize")
    if node.op_type == "SpaceToDepth":
        six, perm, out = [0, c, h // b, b, w // b, b], [0, 3, 5, 1, 2, 4], [0, c * b * b, h // b, w // b]
    elif node.attributes.get_string("mode", "DCR") == "CRD":
        six, perm, out = [0, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3], [0, c // (b * b), h * b, w * b]
    else:
        six, perm, out = [0, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2], [0, c // (b * b), h * b, w * b]
    v = t.op("Transpose", [t.op("Reshape", [node.inputs[0], _ints(graph, six)])], attributes={"perm": perm})
    return t.op("Reshape", [v, _ints(graph, out)])


def _group_norm_export(node: ir.Node) -> bool:
    """torch's GroupNorm as exported: an InstanceNormalization over (N, G, -1), a Reshape back, then
    a Mul by the norm's own weight (and an Add of its bias)."""
    readers = node.outputs[0].uses()
    if len(readers) != 1 or readers[0][0].op_type != "Reshape":
        return False
    after = readers[0][0].outputs[0].uses()
    return len(after) == 1 and after[0][0].op_type == "Mul"


def _affine(graph, t, y: ir.Value, scale: ir.Value, bias: ir.Value, rank: int, exporters: bool = False) -> ir.Value:
    """y * scale + bias per channel; a constant scale of ones or bias of zeros (torch's GroupNorm
    export feeds its InstanceNormalization those, and applies its own parameters after a reshape)
    is left out, so that the parameters after it read as this norm's. Initializers are left in
    (they are parameters, whatever they hold now) unless `exporters`: in a GroupNorm's export they
    are the exporter's ones and zeros, which the dynamo exporter writes as initializers."""
    s, b = (None if v.is_initializer() and not exporters else const_array(v) for v in (scale, bias))
    if s is None or not np.all(s == 1):
        y = t.op("Mul", [y, _per_channel(graph, t, scale, rank)])
    if b is None or np.any(b != 0):
        y = t.op("Add", [y, _per_channel(graph, t, bias, rank)])
    return y


class LowerForAutodiffPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for node in list(graph):
            if node.domain not in ("", "ai.onnx") or not node.inputs:
                continue
            t = ir.tape.Tape(graph)
            y = _lower(graph, node, t)
            if y is None:
                continue
            origin = (node.op_type, node.inputs[0])  # one tuple for the group: accounting counts one layer
            for n in t.nodes:
                n.meta[LOWERED] = origin
            replace_node(graph, node, t.nodes, y)
            modified = True
        return ir.passes.PassResult(model, modified)


def declare_layer_norm_statistics(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every LayerNormalization its Mean and InvStdDev outputs and a bias, which ORT's gradient reads.
    Done on the serialized model, last: onnx_ir's dead-code pass drops unread outputs."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.input) < 3 and node.input[1] in inits:  # the builder reads a bias: a zero one
            zero = onnx.numpy_helper.from_array(np.zeros(inits[node.input[1]].dims, np.float32), f"{node.input[1]}.zero_bias")
            model.graph.initializer.append(zero)
            node.input.append(zero.name)
        if len(node.output) == 1:
            node.output.extend([f"{node.output[0]}.mean", f"{node.output[0]}.inv_std_dev"])
    return model
