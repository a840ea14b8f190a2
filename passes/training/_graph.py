"""Helpers shared by the training-graph passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import Constants  # noqa: F401 (the training passes import it from here)


def wanted(v: ir.Value | None) -> bool:
    """An output somebody reads (ORT leaves unrequested gradient outputs unnamed)."""
    return v is not None and v.name != "" and (len(v.uses()) > 0 or v.is_graph_output())


def is_depthwise(w: ir.Value, group: int) -> bool:
    """A conv weight [C, 1, kh, kw] with one group per channel."""
    return w.shape is not None and len(w.shape) == 4 and w.shape[0] == group and w.shape[1] == 1


def after(const: Constants, tape: ir.tape.Tape, x: ir.Value, dy: ir.Value, rank: int = 4) -> ir.Value:
    """x + 0 * dY[0, .., 0]: x's values, made only once dY (a rank-`rank` gradient) exists. From
    weights or forward values alone ORT may compute x at the start of the step and hold it."""
    corner = tape.op("Slice", [dy, const([0] * rank), const([1] * rank)])
    return tape.op("Add", [x, tape.op("Mul", [corner, const(np.float32(0))])])


def forward_nodes(graph: ir.Graph) -> set[ir.Node]:
    """The nodes the loss (ORT's first training output) depends on; every other node runs after it."""
    seen, todo = set(), [graph.outputs[0].producer()]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(v.producer() for v in node.inputs if v is not None)
    return seen


def move_outputs(replacements: list[tuple[ir.Value, ir.Value]]) -> None:
    """Point every reader of each old value at its new one, which takes the old name (ORT's
    accumulator and optimizer wiring refers to gradients by name); the old value is left unnamed,
    so ORT's gradient op does not compute it."""
    for old, new in replacements:
        ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        new.shape, new.type = old.shape, old.type
        name, old.name = old.name, ""
        new.name = name


def replace_node_outputs(graph: ir.Graph, node: ir.Node, replacements: list[tuple[ir.Value, ir.Value]]) -> None:
    """move_outputs, then drop the node."""
    move_outputs(replacements)
    graph.remove(node, safe=True)
