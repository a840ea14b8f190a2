"""Give every Conv and Gemm without a bias a zero bias initializer, unless a norm or a bias follows it.

Why: TinyTL-B trains biases; a conv exported without one and with no norm after it would
otherwise have nothing to train. A conv that feeds a norm (directly or through a Concat along
channels) gets none, as in the paper: the norm's shift is trained instead and a bias before it
adds next to nothing (nothing at all before a BatchNorm over frozen statistics). Nor one followed by an Add of a per-channel parameter
(functional PyTorch, TensorFlow's BiasAdd): that is its bias already, and a second one trained
beside it would move with it, at twice the step. Not a pooling written as a conv or a fixed filter
(a Constant node's: TResNet's anti-aliasing blur), nor a lite-module conv.
Exact: adding zero changes no output. Memory: one vector per layer; a bias gradient is a sum of dY
and needs no saved activation.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import LITE, add_initializer, const_array, is_constant
from tinytlc.passes.forward.blocks import param_source
from tinytlc.passes.forward.norms import find_norms


def bias_name(weight: ir.Value) -> str:
    return weight.name[: -len("weight")] + "bias" if weight.name.endswith("weight") else weight.name + ".bias"


def is_bias(v: ir.Value) -> bool:
    """One value per channel: (C,), (1, C, 1, 1), (C, 1, 1)..."""
    return v.shape is not None and sum(d != 1 for d in v.shape) <= 1


def bias_parts(value: ir.Value | None) -> list[ir.Value]:
    """The parameters a bias input is made of: itself (or what it is a view of), or the vectors a
    Concat joins (BEiT's qkv bias, cat(q_bias, zero k_bias, v_bias)); [] for anything else."""
    source = param_source(value)
    if source is not None:
        return [source]
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Concat":
        return []
    parts = [param_source(v) for v in node.inputs]
    return [v for v in parts if v is not None] if all(v is None or (v.shape is not None and len(v.shape) == 1)
                                                      for v in parts) else []


def added_bias(node: ir.Node) -> list[ir.Value]:
    """The per-channel parameters an Add adds to a layer's output (Add(MatMul(x, W), b), as torch
    exports a Linear on tokens; Add(Conv(x, W), b); views such as Slice are followed), else []."""
    if node.op_type != "Add" or len(node.inputs) != 2:
        return []
    for i, v in enumerate(node.inputs):
        layer, parts = node.inputs[1 - i].producer(), bias_parts(v)
        if layer is not None and layer.op_type in ("MatMul", "Gemm", "Conv") and parts and all(map(is_bias, parts)):
            return parts
    return []


def _channel_axis(concat: ir.Node) -> bool:
    rank = len(concat.outputs[0].shape) if concat.outputs[0].shape is not None else None
    axis = concat.attributes.get_int("axis", 0)
    return rank is not None and rank >= 3 and axis in (1, 1 - rank)


class AddZeroBiasPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        normed = {id(n.input) for n in find_norms(graph)}
        for node in reversed(list(graph)):  # convs concatenated along channels before a norm (MixNet's MixedConv2d)
            if node.op_type == "Concat" and id(node.outputs[0]) in normed and _channel_axis(node):
                normed |= {id(v) for v in node.inputs}
        for node in list(graph):
            if node.op_type not in ("Conv", "Gemm") or (len(node.inputs) > 2 and node.inputs[2] is not None):
                continue
            if id(node.outputs[0]) in normed or any(added_bias(use) for use, _ in node.outputs[0].uses()):
                continue
            w = const_array(node.inputs[1])
            # not a pooling written as a conv (a constant or a Constant node's filter: TResNet's blur),
            # nor a lite-module conv
            if w is None or not node.inputs[1].is_initializer() or is_constant(node.inputs[1]) \
                    or node.inputs[1].meta.get(LITE):
                continue
            if node.op_type == "Conv":
                width = w.shape[0]
            else:
                width = w.shape[0] if node.attributes.get_int("transB", 0) else w.shape[1]
            node.resize_inputs(3)
            node.replace_input_with(2, add_initializer(graph, bias_name(node.inputs[1]), np.zeros(width, np.float32)))
            modified = True
        return ir.passes.PassResult(model, modified)
