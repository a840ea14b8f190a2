"""Logits that average classifier heads become one classifier over all heads' features.

Why: a distilled DeiT (timm's deit_*_distilled) ends in `(head(x[:, 0]) + head_dist(x[:, 1])) / 2`
in eval mode, CrossViT in `torch.mean(torch.stack([head_0(x0), head_1(x1)]), 0)`. Every method
needs the one layer that produces the logits (the head to replace and train); averaged heads have
none.
What it writes: s sum_i (X_i W_i^T + b_i), for heads over features X_i (N, D_i) and a constant
scale s (1/2 for the sum's Div or Mul, 1/n for the mean of n stacked heads), is
Gemm(Concat(X_1, ..., X_n), s [W_1 ... W_n], s sum_i b_i): one weight of shape (K, sum_i D_i)
named after all ("head.weight+head_dist.weight"), one bias.
Exact: the same logits. Training the merged weight is training every head at once: its gradient
is [dW_1 ... dW_n] / s, and --num-classes draws it anew, as for any head.
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


def _scale(node: ir.Node) -> tuple[list[ir.Value], float] | None:
    """(the heads' outputs, s) for Div(Add(h1, h2), c) and Mul(Add(h1, h2), c)."""
    if node is None or node.op_type not in ("Div", "Mul") or len(node.inputs) != 2:
        return None
    for i in (0, 1):
        c, add = const_array(node.inputs[1 - i]), node.inputs[i].producer()
        if c is not None and c.size == 1 and add is not None and add.op_type == "Add" and (node.op_type == "Mul" or i == 0):
            return list(add.inputs), float(1 / c.item() if node.op_type == "Div" else c.item())
    return None


def _stacked_mean(node: ir.Node) -> tuple[list[ir.Value], float] | None:
    """(the heads' outputs, 1/n) for ReduceMean(Concat(Unsqueeze(h_i, 0)...), axis 0), torch's
    mean(stack(heads), 0)."""
    if node is None or node.op_type != "ReduceMean" or node.attributes.get_int("keepdims", 1) != 0:
        return None
    axes = const_array(node.inputs[1]) if len(node.inputs) > 1 else node.attributes.get_ints("axes", None)
    cat = node.inputs[0].producer()
    if axes is None or list(np.ravel(axes)) != [0] or cat is None or cat.op_type != "Concat" or \
            cat.attributes.get_int("axis") != 0:
        return None
    heads = []
    for v in cat.inputs:
        u = v.producer()
        axes = None if u is None or u.op_type != "Unsqueeze" else \
            const_array(u.inputs[1]) if len(u.inputs) > 1 else u.attributes.get_ints("axes", None)
        if axes is None or list(np.ravel(axes)) != [0]:
            return None
        heads.append(u.inputs[0])
    return heads, 1 / len(heads)


class MergeAveragedHeadsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        out = graph.outputs[0].producer()
        found = _scale(out) or _stacked_mean(out)
        if found is None:
            return ir.passes.PassResult(model, False)
        outputs, s = found
        heads = [_head(v) for v in outputs]
        if len(heads) < 2 or None in heads or len({h[1].shape[0] for h in heads}) != 1 or \
                any(h[0].shape is None or len(h[0].shape) != 2 for h in heads):
            return ir.passes.PassResult(model, False)
        t = ir.tape.Tape(graph)
        features = t.op("Concat", [h[0] for h in heads], attributes={"axis": 1})
        weight = add_initializer(graph, "+".join(h[3] for h in heads), s * np.concatenate([h[1] for h in heads], axis=1))
        bias_names = [h[4] for h in heads]
        bias = add_initializer(graph, "+".join(bias_names) if all(bias_names) else "classifier.bias", s * sum(h[2] for h in heads))
        y = t.op("Gemm", [features, weight, bias], attributes={"transB": 1}, name="merged_heads")
        replace_node(graph, out, t.nodes, y)
        return ir.passes.PassResult(model, True)
