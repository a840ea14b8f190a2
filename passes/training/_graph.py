"""Helpers shared by the training-graph passes."""

from __future__ import annotations

import onnx_ir as ir


def wanted(v: ir.Value | None) -> bool:
    """An output somebody reads (ORT leaves unrequested gradient outputs unnamed)."""
    return v is not None and v.name != "" and (len(v.uses()) > 0 or v.is_graph_output())


def replace_node_outputs(graph: ir.Graph, node: ir.Node, replacements: list[tuple[ir.Value, ir.Value]]) -> None:
    """Point every reader of node's outputs at the new values, drop the node, keep the old names
    (ORT's accumulator and optimizer wiring refers to gradients by name)."""
    for old, new in replacements:
        ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        new.shape, new.type = old.shape, old.type
    graph.remove(node, safe=True)
    for old, new in replacements:
        new.name = old.name
