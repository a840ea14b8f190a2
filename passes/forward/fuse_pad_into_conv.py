"""Fold constant shape arithmetic, then merge zero Pad nodes into the Conv they feed.

Why: TensorFlow-style 'SAME' padding (EfficientNet, Keras MobileNetV2) exports as a Pad whose pads
are computed at run time; autodiff would then keep the padded copy of the activation for
ConvGrad. ONNX Conv takes asymmetric pads, so the Pad can go.
Exact: a convolution over a zero-padded input is that convolution with those pads.
Memory: removes one stored activation (the padded copy) per padded conv.
Both steps are onnxscript's (constant folding, the fuse_pad_into_conv rewrite rule). The folding
leaves alone every float value computed from float initializers: those are parameters seen through
ops (a standardised weight, a gathered table, a transposed Linear weight), and folding them would
train a precomputed copy under a new name instead of the parameter itself. What it does fold is
marked constant: never a parameter to train.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.optimizer import fold_constants
from onnxscript.rewriter import rewrite
from onnxscript.rewriter.rules.common import fuse_pad_into_conv_rule

from tinytlc.passes.forward._values import CONSTANT
from tinytlc.passes.forward.infer_shapes import InferShapesPass

# ConstantOfShape is not folded by default; the pads of an exported ZeroPad2d go through one.
_FOLD_ALSO = {"ConstantOfShape"}


def _from_parameters(graph: ir.Graph) -> set[str]:
    """Names of the values computed (in part) from float initializers (names, because the folder's
    shape inference rebuilds the graph's objects)."""
    seen = {v.name for v in graph.initializers.values() if v.dtype is not None and v.dtype.is_floating_point()}
    for node in graph:
        if any(v is not None and v.name in seen for v in node.inputs):
            seen.update(o.name for o in node.outputs)
    return seen


def _should_fold(from_parameters: set[str]):
    def should_fold(node: ir.Node) -> bool | None:
        if node.op_type in _FOLD_ALSO:
            return True
        if node.op_type in ("Shape", "Size"):  # integers, even of a weight
            return None
        if any(v is not None and v.name in from_parameters for v in node.inputs) and \
                not all(o.dtype is not None and not o.dtype.is_floating_point() for o in node.outputs):
            return False
        return None
    return should_fold


class FusePadIntoConvPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        pads_before = sum(n.op_type == "Pad" for n in model.graph)
        if not pads_before:
            return ir.passes.PassResult(model, False)
        before = set(model.graph.initializers)
        fold_constants(model, should_fold=_should_fold(_from_parameters(model.graph)))
        for name, v in model.graph.initializers.items():  # what folding wrote is a constant (a zero
            if name not in before:                          # shift of F.batch_norm(bias=None)), no parameter
                v.meta[CONSTANT] = True
        RemoveUnusedNodesPass()(model)
        InferShapesPass()(model)  # the rewrite rule needs the Pad input's rank
        model = rewrite(model, pattern_rewrite_rules=[fuse_pad_into_conv_rule])
        RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, sum(n.op_type == "Pad" for n in model.graph) < pads_before)
