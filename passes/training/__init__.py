"""Training-graph passes: they run on the graph ORT's autodiff generated, in this order; and the
forward passes that are chosen by name like them (compile runs those before autodiff)."""

from onnx_ir.passes.common import RemoveUnusedNodesPass

from tinytlc.passes.forward.fold_trained_batchnorm import FoldTrainedBatchNormPass
from tinytlc.passes.forward.gather_index_as_slice import GatherIndexAsSlicePass

from tinytlc.passes.training.activation_masks import ActivationMaskPass
from tinytlc.passes.training.conv_bias_add import ConvBiasAddPass
from tinytlc.passes.training.dense_input_grad import DenseInputGradPass
from tinytlc.passes.training.depthwise_input_grad import DepthwiseInputGradPass
from tinytlc.passes.training.depthwise_weight_grad import DepthwiseWeightGradPass
from tinytlc.passes.training.frozen_conv_backward import FrozenConvBackwardPass
from tinytlc.passes.training.gather_conv import GatherConvPass
from tinytlc.passes.training.layer_norm_grad import LayerNormGradPass
from tinytlc.passes.training.nchwc_conv import NchwcConvPass
from tinytlc.passes.training.pack_masks import PackMasksPass
from tinytlc.passes.training.pointwise_grad import PointwiseGradPass
from tinytlc.passes.training.recompute_gelu_input import RecomputeGeluInputPass
from tinytlc.passes.training.shapes_from_input import ShapesFromInputPass

PASSES = {
    "fold-trained-batchnorm": FoldTrainedBatchNormPass,  # forward passes (FORWARD_PASSES)
    "gather-as-slice": GatherIndexAsSlicePass,
    "frozen-conv": FrozenConvBackwardPass,
    "depthwise-input-grad": DepthwiseInputGradPass,
    "dense-input-grad": DenseInputGradPass,
    "depthwise-weight-grad": DepthwiseWeightGradPass,
    "pointwise-grad": PointwiseGradPass,
    "layer-norm-grad": LayerNormGradPass,
    "recompute-gelu-input": RecomputeGeluInputPass,
    "gather-conv": GatherConvPass,
    "activation-masks": ActivationMaskPass,
    "conv-bias-add": ConvBiasAddPass,
    "nchwc-conv": NchwcConvPass,
    "pack-masks": PackMasksPass,
    "shapes-from-input": ShapesFromInputPass,
    # Dead code: nodes whose results nothing reads (onnx_ir's pass; the others leave some behind).
    "dce": RemoveUnusedNodesPass,
}

# Forward passes in PASSES: compile runs them on the forward graph, where they apply (a method
# that trains the norms they fold), before ORT builds the backward; without them the graph is ORT's.
FORWARD_PASSES = ("fold-trained-batchnorm", "gather-as-slice")

# Passes that write ORT's NCHWc ops, whose layout depends on the CPU (compile records its block).
NCHWC_PASSES = ("depthwise-weight-grad", "nchwc-conv")

# What compile runs by default. pack-masks and recompute-gelu-input are exact and save memory (7/8 of
# the stored masks; the MLPs' GELU inputs) but cost step time (README), so they are opt-in:
# --passes +pack-masks, +recompute-gelu-input.
DEFAULT_PASSES = ["fold-trained-batchnorm", "gather-as-slice", "frozen-conv", "depthwise-input-grad", "dense-input-grad",
                  "depthwise-weight-grad", "pointwise-grad", "layer-norm-grad", "gather-conv", "activation-masks",
                  "conv-bias-add", "nchwc-conv", "shapes-from-input", "dce"]

__all__ = ["DEFAULT_PASSES", "FORWARD_PASSES", "NCHWC_PASSES", "PASSES", "ActivationMaskPass", "ConvBiasAddPass", "DenseInputGradPass",
           "DepthwiseInputGradPass", "DepthwiseWeightGradPass", "FrozenConvBackwardPass", "GatherConvPass", "LayerNormGradPass", "NchwcConvPass",
           "PackMasksPass", "PointwiseGradPass", "RecomputeGeluInputPass", "ShapesFromInputPass"]
