"""Logits that average two classifier heads become one classifier over both heads' features.

Why: a distilled DeiT (timm's deit_*_distilled) ends in `(head(x[:, 0]) + head_dist(x[:, 1])) / 2`
in eval mode. Every method needs the one layer that produces the logits (the head to replace and
train); two heads averaged have none.
What it writes: s (A W1^T + b1 + B W2^T + b2), for heads over features A (N, D1) and B (N, D2) and a
constant scale s (the 1/2), is Gemm(Concat(A, B), s [W1 W2], s (b1 + b2)): one weight of shape
(K, D1 + D2) named after both ("head.weight+head_dist.weight"), one bias.
Exact: the same logits. Training the merged weight is training both heads at once: its gradient
is [dW1 dW2] / s, and --num-classes draws it anew, as for any head.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import add_initializer, const_array, replace_node
from tinytlc.passes.forward.replace_classifier import linear_layer


def _head(v: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray, str, str] | None:
    """(features (N, D), W (K, D), b (K,), weight name, bias name) of a linear layer producing v."""
    found = linear_layer(v)
    if found is None:
        return None
    node, weight, bias, out_by_in = found
    a, b = node.attributes, const_array(bias)
    if a.get_int("transA", 0) or (bias is not None and b is None):
        return None
    w = const_array(weight) if out_by_in else const_array(weight).T
    if node.op_type == "Gemm":
        w, b = w * a.get_float("alpha", 1.0), None if b is None else b * a.get_float("beta", 1.0)
    b = np.zeros(w.shape[0], np.float32) if b is None else np.broadcast_to(b, w.shape[:1])
    return node.inputs[0], w, b, weight.name, bias.name if bias is not None else ""


def _scale(node: ir.Node) -> tuple[ir.Node, float] | None:
    """(the Add of the heads, s) for Div(Add, c) and Mul(Add, c)."""
    if node is None or node.op_type not in ("Div", "Mul") or len(node.inputs) != 2:
        return None
    for i in (0, 1):
        c, add = const_array(node.inputs[1 - i]), node.inputs[i].producer()
        if c is not None and c.size == 1 and add is not None and add.op_type == "Add" and (node.op_type == "Mul" or i == 0):
            return add, float(1 / c.item() if node.op_type == "Div" else c.item())
    return None


class MergeAveragedHeadsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        out = graph.outputs[0].producer()
        found = _scale(out)
        if found is None:
            return ir.passes.PassResult(model, False)
        add, s = found
        heads = [_head(v) for v in add.inputs]
        if len(heads) != 2 or None in heads or heads[0][1].shape[0] != heads[1][1].shape[0] or \
                any(h[0].shape is None or len(h[0].shape) != 2 for h in heads):
            return ir.passes.PassResult(model, False)
        (x1, w1, b1, wn1, bn1), (x2, w2, b2, wn2, bn2) = heads
        t = ir.tape.Tape(graph)
        features = t.op("Concat", [x1, x2], attributes={"axis": 1})
        weight = add_initializer(graph, f"{wn1}+{wn2}", s * np.concatenate([w1, w2], axis=1))
        bias = add_initializer(graph, f"{bn1}+{bn2}" if bn1 and bn2 else "classifier.bias", s * (b1 + b2))
        y = t.op("Gemm", [features, weight, bias], attributes={"transB": 1}, name="merged_heads")
        replace_node(graph, out, t.nodes, y)
        return ir.passes.PassResult(model, True)
