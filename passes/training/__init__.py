"""Training-graph passes: they run on the graph ORT's autodiff generated, in this order."""

from onnx_ir.passes.common import RemoveUnusedNodesPass

from tinytlc.passes.training.activation_masks import ActivationMaskPass
from tinytlc.passes.training.frozen_conv_backward import FrozenConvBackwardPass

PASSES = {
    "frozen-conv": FrozenConvBackwardPass,
    "activation-masks": ActivationMaskPass,
    # Dead code: nodes whose results nothing reads (onnx_ir's pass; the others leave some behind).
    "dce": RemoveUnusedNodesPass,
}

__all__ = ["PASSES", "ActivationMaskPass", "FrozenConvBackwardPass"]
