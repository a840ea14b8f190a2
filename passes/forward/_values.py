"""Small helpers shared by the forward passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of an initializer or Constant output, else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def fresh_name(graph: ir.Graph, wanted: str) -> str:
    """`wanted`, or `wanted.1`, `wanted.2`... whichever no value in the graph uses yet."""
    taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs} | {v.name for v in graph.inputs}
    name, i = wanted, 0
    while name in taken:
        i += 1
        name = f"{wanted}.{i}"
    return name


CONSTANT = "tinytlc.constant"  # Value.meta key: an initializer a pass made that is no parameter
PARAMETER = "tinytlc.parameter"  # Value.meta key: a PyTorch module's parameter (a 0-d one too)
# Value.meta key: a parameter of a lite residual module, with its role ("weight", "scale", "shift",
# "final-shift"); Node.meta key: a node of a lite module's side branch (not the Add that joins it)
LITE = "tinytlc.lite"
# Node.meta key: a node written in place of another op (op type, its input): one layer for accounting
LOWERED = "tinytlc.lowered"


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray, constant: bool = False) -> ir.Value:
    """A new initializer under a fresh name; floating arrays are stored as float32.

    `constant=True` marks it as part of how an op is written (pooling weights, frozen
    statistics), never a parameter a method may train."""
    name = fresh_name(graph, name)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    value.meta[CONSTANT] = constant
    graph.register_initializer(value)
    return value


def add_constant(graph: ir.Graph, name: str, array) -> ir.Value:
    """add_initializer(..., constant=True) for any array-like (lists of ints become int64)."""
    array = np.asarray(array, np.int64) if isinstance(array, list) else np.asarray(array)
    return add_initializer(graph, name, array, constant=True)


class Constants:
    """Small constants (shapes, axes, slice bounds, zeros) for one pass over one graph: one
    initializer per distinct value, however many nodes read it."""

    def __init__(self, graph: ir.Graph, name: str = "tinytlc.const"):
        self.graph, self.name, self.made = graph, name, {}

    def __call__(self, value, name: str | None = None) -> ir.Value:
        """`value` as an initializer; `name` names it where it is made first."""
        array = np.asarray(value, np.int64) if isinstance(value, list) else np.asarray(value)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.made:
            self.made[key] = add_constant(self.graph, name or self.name, array)
        return self.made[key]


def is_constant(value: ir.Value) -> bool:
    return bool(value.meta.get(CONSTANT, False))


def set_initializer(value: ir.Value, array: np.ndarray) -> None:
    """Give an initializer new contents (same name, so it stays addressable as a parameter)."""
    value.const_value = ir.tensor(array.astype(np.float32), name=value.name)
    value.shape = ir.Shape(array.shape)


def opset(graph: ir.Graph) -> int:
    """The graph's ai.onnx opset (new nodes must be written for it)."""
    return graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 17))


def reduce_mean(graph: ir.Graph, tape: ir.tape.Tape, x: ir.Value, axes: list[int]) -> ir.Value:
    """ReduceMean over `axes`, keepdims, written for the graph's opset (axes are an input from 18)."""
    if opset(graph) >= 18:
        return tape.op("ReduceMean", [x, add_constant(graph, "tinytlc.axes", axes)], attributes={"keepdims": 1})
    return tape.op("ReduceMean", [x], attributes={"axes": axes, "keepdims": 1})


def normalize(graph: ir.Graph, tape: ir.tape.Tape, x: ir.Value, axes: list[int], eps: float) -> ir.Value:
    """(x - mean) / sqrt(var + eps) over `axes`, with ops ORT 1.19.2 differentiates on the CPU (as the
    zoo's GroupNorm, zoo/layers.py, is written)."""
    d = tape.op("Sub", [x, reduce_mean(graph, tape, x, axes)])
    var = reduce_mean(graph, tape, tape.op("Mul", [d, d]), axes)
    return tape.op("Div", [d, tape.op("Sqrt", [tape.op("Add", [var, add_constant(graph, "tinytlc.eps", np.float32(eps))])])])


def replace_node(graph: ir.Graph, node: ir.Node, new_nodes: list[ir.Node], value: ir.Value) -> None:
    """Put `new_nodes` where `node` was, `value` taking the place of its (single) output."""
    graph.insert_before(node, new_nodes)
    value.shape, value.type = node.outputs[0].shape, node.outputs[0].type
    ir.convenience.replace_all_uses_with(node.outputs[0], value, replace_graph_outputs=True)
    graph.remove(node, safe=True)
