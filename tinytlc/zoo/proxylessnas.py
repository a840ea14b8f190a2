"""ProxylessNAS-Mobile (Cai, Zhu, Han, ICLR 2019), the backbone of the TinyTL paper.

Architecture from the paper's searched mobile network; no weights ship offline, so it is randomly
initialised (memory figures do not depend on weight values). norm="group" uses GroupNorm with 8
channels per group everywhere, as the TinyTL paper does.
"""

from __future__ import annotations

import torch.nn as nn

from tinytlc.zoo.layers import Classifier, ConvBN, InvertedResidual

# One entry per stage: (out, stride of the first block, [(kernel, expand), ...]).
# The stage to 32 channels keeps only two of its four searched blocks (the others are "zero" ops).
STAGES = [
    (16, 1, [(3, 1)]),
    (32, 2, [(5, 3), (3, 3)]),
    (40, 2, [(7, 3), (3, 3), (5, 3), (5, 3)]),
    (80, 2, [(7, 6), (5, 3), (5, 3), (5, 3)]),
    (96, 1, [(5, 6), (5, 3), (5, 3), (5, 3)]),
    (192, 2, [(7, 6), (7, 6), (7, 3), (7, 3)]),
    (320, 1, [(7, 6)]),
]
PREPROCESS = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class ProxylessNASMobile(nn.Module):
    def __init__(self, num_classes: int = 1000, resolution: int = 224, norm: str = "batch"):
        super().__init__()
        eps = 1e-3
        self.stem = ConvBN(3, 32, 3, 2, resolution, eps=eps, norm=norm)
        size, cin, blocks = self.stem.out_size, 32, []
        for cout, stride, layers in STAGES:
            for i, (kernel, expand) in enumerate(layers):
                block = InvertedResidual(cin, cout, kernel, stride if i == 0 else 1, expand, size, eps=eps, norm=norm)
                blocks.append(block)
                size, cin = block.out_size, cout
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(cin, 1280, 1, 1, size, eps=eps, norm=norm)
        self.classifier = Classifier(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.head(self.blocks(self.stem(x))))


def proxylessnas_mobile(num_classes: int = 1000, resolution: int = 224, pretrained: bool = False,
                        norm: str = "batch") -> nn.Module:
    model = ProxylessNASMobile(num_classes, resolution, norm)
    model.pretrained = False  # no weights ship offline
    return model.eval()
