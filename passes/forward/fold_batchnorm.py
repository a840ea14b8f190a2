"""Fold inference-mode BatchNormalization into the Conv that feeds it.

Memory: the BN output and everything autodiff would keep for BN disappear; the conv computes the
normalised result directly. Used when a method trains neither the norm's scale nor its shift; the
folded conv gets a bias, which is what TinyTL-B trains ("conv bias after folding BN").
Exact: BN(conv(x)) = conv'(x) with s = gamma / sqrt(var + eps), W' = W * s (per output channel),
b' = (b - mean) * s + beta. Only folds when the conv output feeds the BN alone and the conv weight
has no other user.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import add_initializer, const_array, set_initializer


def conv_before(bn: ir.Node) -> ir.Node | None:
    """The Conv before `bn`, if `bn` is a single-output BatchNormalization and the conv's output
    feeds it alone."""
    if bn.op_type != "BatchNormalization" or bn.domain != "" or len(bn.outputs) != 1:
        return None
    conv = bn.inputs[0].producer()
    if conv is None or conv.op_type != "Conv" or len(bn.inputs[0].uses()) != 1:
        return None
    return conv


class FoldBatchNormIntoConvPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for bn in list(graph):
            conv = conv_before(bn)
            if conv is None:
                continue
            weight = conv.inputs[1]
            bias = conv.inputs[2] if len(conv.inputs) > 2 else None
            gamma, beta, mean, var = (const_array(v) for v in bn.inputs[1:5])
            w = const_array(weight)
            if any(a is None for a in (gamma, beta, mean, var, w)) or not weight.is_initializer():
                continue
            if len(weight.uses()) != 1 or bn.outputs[0].is_graph_output():
                continue
            b = const_array(bias) if bias is not None else np.zeros(w.shape[0], np.float32)
            if b is None or (bias is not None and (not bias.is_initializer() or len(bias.uses()) != 1)):
                continue
            eps = bn.attributes.get_float("epsilon", 1e-5)
            s = gamma / np.sqrt(var + eps)
            set_initializer(weight, w * s.reshape(-1, *([1] * (w.ndim - 1))))
            new_b = (b - mean) * s + beta
            if bias is None:
                stem = weight.name[: -len("weight")] if weight.name.endswith("weight") else weight.name + "."
                conv.resize_inputs(3)
                conv.replace_input_with(2, add_initializer(graph, stem + "bias", new_b))
            else:
                set_initializer(bias, new_b)
            ir.convenience.replace_all_uses_with(bn.outputs[0], conv.outputs[0])
            graph.remove(bn, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)
