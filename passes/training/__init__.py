"""Training-graph passes: they run on the graph ORT's autodiff generated, in this order."""

from tinytlc.passes.training.activation_masks import ActivationMaskPass
from tinytlc.passes.training.frozen_conv_backward import FrozenConvBackwardPass

PASSES = {
    "frozen-conv": FrozenConvBackwardPass,
    "activation-masks": ActivationMaskPass,
}

__all__ = ["PASSES", "ActivationMaskPass", "FrozenConvBackwardPass"]
