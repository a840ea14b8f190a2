"""Weights held in Constant nodes become initializers, so tinytlc sees them as parameters.

Why: some converters write a layer's weight as a Constant node rather than an initializer; tinytlc
finds parameters among initializers, so `full` would silently train the classifier only, and a
network whose every weight is a Constant would have no classifier at all.
Which: a float Constant of rank >= 1 that is a layer's weight or bias: Conv, ConvTranspose, Gemm
inputs 1 and 2, the constant side of a MatMul, and a bias added to one of those layers' outputs,
seen through views (Identity, Reshape, Transpose, Unsqueeze, Squeeze, Flatten). Only in a graph
whose layers hold no weight in an initializer: where the others do, a Constant weight is a fixed
filter by design (torch writes a non-persistent buffer so: TResNet's anti-aliasing blur). Other
constants stay constants: the ones and zeros torch writes for InstanceNormalization inside a
GroupNorm, or a norm without affine parameters, are not parameters in PyTorch either.
Exact: an initializer holds the same tensor under the same name.
"""

from __future__ import annotations

import onnx_ir as ir

_VIEWS = {"Identity", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten"}
_LAYERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _is_weight(value: ir.Value) -> bool:
    for user, index in value.uses():
        if user.domain != "":
            continue
        if user.op_type in _VIEWS and index == 0 and _is_weight(user.outputs[0]):
            return True
        if user.op_type in ("Conv", "ConvTranspose", "Gemm") and index in (1, 2):
            return True
        if user.op_type == "MatMul":
            return True
        if user.op_type == "Add" and len(user.inputs) == 2:
            other = user.inputs[1 - index].producer()
            if other is not None and other.op_type in _LAYERS:
                return True
    return False


def _initializer_weights(graph: ir.Graph) -> bool:
    return any(v.dtype is not None and v.dtype.is_floating_point() and _is_weight(v) for v in graph.initializers.values())


class LiftWeightConstantsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        if _initializer_weights(graph):
            return ir.passes.PassResult(model, False)
        for node in list(graph):
            if node.op_type != "Constant" or node.domain != "" or set(node.attributes) != {"value"}:
                continue
            value = node.outputs[0]
            tensor = node.attributes["value"].as_tensor()
            if not tensor.dtype.is_floating_point() or len(tensor.shape) == 0 or value.is_graph_output() \
                    or value.name in graph.initializers or not _is_weight(value):
                continue
            weight = ir.Value(name=value.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                              const_value=tensor)
            graph.register_initializer(weight)
            value.replace_all_uses_with(weight)
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)
