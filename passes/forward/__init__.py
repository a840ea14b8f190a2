"""Forward-graph passes: they run before ORT builds the backward graph."""

from tinytlc.passes.forward.add_zero_bias import AddZeroBiasPass
from tinytlc.passes.forward.avgpool_to_conv import AveragePoolToConvPass
from tinytlc.passes.forward.batchnorm_to_affine import BatchNormToAffinePass
from tinytlc.passes.forward.explicit_pads import ExplicitPadsPass
from tinytlc.passes.forward.fold_batchnorm import FoldBatchNormIntoConvPass
from tinytlc.passes.forward.fold_trained_batchnorm import FoldTrainedBatchNormPass
from tinytlc.passes.forward.fuse_pad_into_conv import FusePadIntoConvPass
from tinytlc.passes.forward.infer_shapes import InferShapesPass
from tinytlc.passes.forward.gather_index_as_slice import GatherIndexAsSlicePass
from tinytlc.passes.forward.keep_pad_before_maxpool import KeepPadBeforeMaxPoolPass
from tinytlc.passes.forward.blocks import Block, find_blocks
from tinytlc.passes.forward.lift_weight_constants import LiftWeightConstantsPass
from tinytlc.passes.forward.einsum_as_matmul import EinsumAsMatMulPass
from tinytlc.passes.forward.lower_for_autodiff import LowerForAutodiffPass
from tinytlc.passes.forward.merge_averaged_heads import MergeAveragedHeadsPass
from tinytlc.passes.forward.lite_residual import LiteOptions, LiteResidualPass
from tinytlc.passes.forward.static_reshapes import StaticReshapesPass
from tinytlc.passes.forward.replace_classifier import ReplaceClassifierPass, find_classifier
from tinytlc.passes.forward.resize_as_matmul import ResizeAsMatMulPass
from tinytlc.passes.forward.split_bidirectional_rnn import SplitBidirectionalRnnPass

__all__ = ["AddZeroBiasPass", "Block", "AveragePoolToConvPass", "BatchNormToAffinePass", "ExplicitPadsPass", "FoldBatchNormIntoConvPass", "FoldTrainedBatchNormPass",
           "FusePadIntoConvPass", "GatherIndexAsSlicePass", "InferShapesPass", "KeepPadBeforeMaxPoolPass", "LiftWeightConstantsPass", "LiteOptions", "LiteResidualPass", "LowerForAutodiffPass", "EinsumAsMatMulPass", "MergeAveragedHeadsPass", "ReplaceClassifierPass", "ResizeAsMatMulPass", "SplitBidirectionalRnnPass", "StaticReshapesPass", "find_blocks",
           "find_classifier"]
