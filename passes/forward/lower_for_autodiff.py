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

Exact: each is the op's definition, written with the same float operations the reference uses
where it matters (HardSwish as torch computes it; the exponential units' exp(x) - 1 where torch
uses expm1, within 1e-7 of it). Memory: the written-out forms keep what their
parts' gradients need (a Clip keeps a mask once the activation-mask pass has run).
Parameter names are kept: scale and bias initializers feed the new Mul and Add.
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
    if node.op_type == "InstanceNormalization":
        y = normalize(graph, t, x, list(range(2, rank)), a.get_float("epsilon", 1e-5))
        return _affine(graph, t, y, node.inputs[1], node.inputs[2], rank)
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


def _affine(graph, t, y: ir.Value, scale: ir.Value, bias: ir.Value, rank: int) -> ir.Value:
    """y * scale + bias per channel; a constant scale of ones or bias of zeros (torch's GroupNorm
    export feeds its InstanceNormalization those, and applies its own parameters after a reshape)
    is left out, so that the parameters after it read as this norm's. Initializers never are: they
    are parameters, whatever they hold now."""
    s, b = (None if v.is_initializer() else const_array(v) for v in (scale, bias))
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
