"""Training-graph passes: they run on the graph ORT's autodiff generated, in this order."""

from onnx_ir.passes.common import RemoveUnusedNodesPass

from tinytlc.passes.training.activation_masks import ActivationMaskPass
from tinytlc.passes.training.conv_bias_add import ConvBiasAddPass
from tinytlc.passes.training.dense_input_grad import DenseInputGradPass
from tinytlc.passes.training.depthwise_input_grad import DepthwiseInputGradPass
from tinytlc.passes.training.depthwise_weight_grad import DepthwiseWeightGradPass
from tinytlc.passes.training.frozen_conv_backward import FrozenConvBackwardPass
from tinytlc.passes.training.gather_conv import GatherConvPass
from tinytlc.passes.training.nchwc_conv import NchwcConvPass
from tinytlc.passes.training.pack_masks import PackMasksPass
from tinytlc.passes.training.pointwise_grad import PointwiseGradPass
from tinytlc.passes.training.shapes_from_input import ShapesFromInputPass

PASSES = {
    "frozen-conv": FrozenConvBackwardPass,
    "depthwise-input-grad": DepthwiseInputGradPass,
    "dense-input-grad": DenseInputGradPass,
    "depthwise-weight-grad": DepthwiseWeightGradPass,
    "pointwise-grad": PointwiseGradPass,
    "gather-conv": GatherConvPass,
    "activation-masks": ActivationMaskPass,
    "conv-bias-add": ConvBiasAddPass,
    "nchwc-conv": NchwcConvPass,
    "pack-masks": PackMasksPass,
    "shapes-from-input": ShapesFromInputPass,
    # Dead code: nodes whose results nothing reads (onnx_ir's pass; the others leave some behind).
    "dce": RemoveUnusedNodesPass,
}

# Passes that write ORT's NCHWc ops, whose layout depends on the CPU (compile records its block).
NCHWC_PASSES = ("depthwise-weight-grad", "nchwc-conv")

# What compile runs by default. pack-masks is exact and saves 7/8 of the stored masks, but measured
# slower per step on MobileNetV2 (README), so it is opt-in: --passes ...,pack-masks.
DEFAULT_PASSES = ["frozen-conv", "depthwise-input-grad", "dense-input-grad", "depthwise-weight-grad", "pointwise-grad",
                  "gather-conv", "activation-masks", "conv-bias-add", "nchwc-conv", "shapes-from-input", "dce"]

__all__ = ["DEFAULT_PASSES", "NCHWC_PASSES", "PASSES", "ActivationMaskPass", "ConvBiasAddPass", "DenseInputGradPass",
           "DepthwiseInputGradPass", "DepthwiseWeightGradPass", "FrozenConvBackwardPass", "GatherConvPass", "NchwcConvPass",
           "PackMasksPass", "PointwiseGradPass", "ShapesFromInputPass"]
