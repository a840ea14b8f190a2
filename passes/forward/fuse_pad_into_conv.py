"""Fold constant shape arithmetic, then merge zero Pad nodes into the Conv they feed.

Why: TensorFlow-style 'SAME' padding (EfficientNet, Keras MobileNetV2) exports as a Pad whose pads
are computed at run time; autodiff would then keep the padded copy of the activation for
ConvGrad. ONNX Conv takes asymmetric pads, so the Pad can go.
Exact: a convolution over a zero-padded input is that convolution with those pads.
Memory: removes one stored activation (the padded copy) per padded conv.
Both steps are onnxscript's (constant folding, the fuse_pad_into_conv rewrite rule).
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass
from onnxscript.optimizer import fold_constants
from onnxscript.rewriter import rewrite
from onnxscript.rewriter.rules.common import fuse_pad_into_conv_rule

# ConstantOfShape is not folded by default; the pads of an exported ZeroPad2d go through one.
_FOLD_ALSO = {"ConstantOfShape"}


class FusePadIntoConvPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        pads_before = sum(n.op_type == "Pad" for n in model.graph)
        if not pads_before:
            return ir.passes.PassResult(model, False)
        fold_constants(model, should_fold=lambda n: True if n.op_type in _FOLD_ALSO else None)
        RemoveUnusedNodesPass()(model)
        ShapeInferencePass()(model)  # the rewrite rule needs the Pad input's rank
        model = rewrite(model, pattern_rewrite_rules=[fuse_pad_into_conv_rule])
        RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, sum(n.op_type == "Pad" for n in model.graph) < pads_before)
