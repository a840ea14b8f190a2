"""Layers shared by the zoo's mobile CNNs. Padding is static (computed from the input size at
build time) so the exported graph has no shape arithmetic."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding for one axis: (before, after), the smaller half first."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class GroupNorm(nn.Module):
    """GroupNorm (channels_per_group channels a group) written with elementary tensor ops.

    torch exports nn.GroupNorm as Reshape + InstanceNormalization, which onnxruntime-training
    1.19.2 cannot differentiate; this exports as Reshape/ReduceMean/Sub/Mul/Sqrt/Div."""

    def __init__(self, channels: int, channels_per_group: int = 8, eps: float = 1e-5):
        super().__init__()
        self.groups = max(1, channels // channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x):
        n, c, h, w = x.shape
        g = x.reshape(n, self.groups, -1)
        d = g - g.mean(-1, keepdim=True)
        y = d / torch.sqrt((d * d).mean(-1, keepdim=True) + self.eps)
        return y.reshape(n, c, h, w) * self.weight + self.bias


def norm_layer(kind: str, channels: int, eps: float) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=eps)
    if kind == "group":
        return GroupNorm(channels)
    raise ValueError(kind)


class ConvBN(nn.Sequential):
    """Conv (no bias) + norm (BatchNorm, or GroupNorm) + optional ReLU6, padded 'same' for an input
    of `size` pixels.

    `tf_same=True` pads like TensorFlow (asymmetric when stride 2 meets an even size), as the
    pretrained TF-trained weights expect; otherwise padding is the symmetric kernel // 2.
    """

    def __init__(self, cin, cout, kernel, stride, size, groups=1, act=True, tf_same=False, eps=1e-5, norm="batch"):
        layers = []
        before, after = same_padding(size, kernel, stride) if tf_same else (kernel // 2, kernel // 2)
        if before != after:
            layers.append(nn.ZeroPad2d((before, after, before, after)))
            pad = 0
        else:
            pad = before
        layers += [nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False), norm_layer(norm, cout, eps)]
        if act:
            layers.append(nn.ReLU6(inplace=False))
        super().__init__(*layers)
        self.out_size = (size + before + after - kernel) // stride + 1


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, kxk depthwise, 1x1 linear project, identity skip when the
    shape is unchanged."""

    def __init__(self, cin, cout, kernel, stride, expand, size, tf_same=False, eps=1e-5, norm="batch"):
        super().__init__()
        mid = cin * expand
        layers = []
        if expand != 1:
            layers.append(ConvBN(cin, mid, 1, 1, size, eps=eps, norm=norm))
        dw = ConvBN(mid, mid, kernel, stride, size, groups=mid, tf_same=tf_same, eps=eps, norm=norm)
        layers += [dw, ConvBN(mid, cout, 1, 1, dw.out_size, act=False, eps=eps, norm=norm)]
        self.conv = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout
        self.out_size = dw.out_size

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_skip else y


class Classifier(nn.Sequential):
    """Global average pool, flatten, dropout, linear."""

    def __init__(self, cin, num_classes, dropout=0.2):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes))
