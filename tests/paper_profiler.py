"""The TinyTL paper's memory profiler rules, on torch modules, written for the tests from the paper's
profiler (tinytl/utils/memory_cost_profiler.py) and training script: independent of tinytlc's
graph code. Also the paper's lite residual modules in torch, for the zoo's ProxylessNAS-Mobile."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinytlc.zoo.layers import GroupNorm, InvertedResidual, norm_layer

NORMS = (nn.BatchNorm2d, nn.GroupNorm, GroupNorm)


class LiteResidual(nn.Module):
    """main(x) + upsample(final_norm(conv2(relu(norm1(conv1(pool(x))))))), as the paper's module."""

    def __init__(self, main, cin, cout, kernel, stride, norm):
        super().__init__()
        self.main = main
        self.lite = nn.Sequential(nn.AvgPool2d(2, 2, 0),
                                  nn.Conv2d(cin, cin, kernel, stride, kernel // 2, groups=2, bias=False),
                                  norm_layer(norm, cin, 1e-5), nn.ReLU(),
                                  nn.Conv2d(cin, cout, 1, bias=False), norm_layer(norm, cout, 1e-5))

    def forward(self, x):
        y = self.main(x)
        return y + F.interpolate(self.lite(x), y.shape[2:], mode="bilinear")


def insert_lite_residual(net, norm: str) -> list[LiteResidual]:
    """The paper's insert_lite_residual: every block but the first, kernel 5 shrunk while it exceeds
    (reference resolution // 2), the reference starting at 128 and divided by each stage's stride."""
    max_resolution, modules = 128, []
    for block in list(net.blocks)[1:]:
        stride = block.conv[-2][0].stride[0]  # the depthwise conv's
        block_resolution = max(1, max_resolution // 2)
        max_resolution //= stride
        kernel = 5
        while block_resolution < kernel:
            kernel -= 2
        cin, cout = block.conv[0][0].in_channels, block.conv[-1][0].out_channels
        block.conv = LiteResidual(block.conv, cin, cout, kernel, stride, norm)
        modules.append(block.conv)
    return modules


def set_trainable(net, method: str, lite: list[LiteResidual]) -> None:
    """requires_grad as the paper's training script sets it for each method."""
    for p in net.parameters():
        p.requires_grad = method == "full"
    for p in net.classifier.parameters():
        p.requires_grad = True
    if method == "norm+last":
        for m in net.modules():
            if isinstance(m, NORMS):
                m.weight.requires_grad = m.bias.requires_grad = True
    if method.endswith("bias"):
        for name, p in net.named_parameters():
            if name.split(".")[-1] == "bias":
                p.requires_grad = True
    if method.startswith("lite"):
        for m in lite:
            for p in m.lite.parameters():
                p.requires_grad = True
            if method == "lite+bias":
                m.lite[-1].bias.requires_grad = False


def profile(net: nn.Module, resolution: int, batch_size: int, require_backward: bool) -> int:
    """Activation peak (per sample) x batch + parameters (trainable 32 bits, frozen 8), in bytes."""
    calls, residual = [], [0.0]

    def leaf(m, inputs, y):
        x = inputs[0].numel() * 4.0
        if isinstance(m, nn.Conv2d):
            calls.append((x + y.numel() * 4.0 // m.groups, x if m.weight.requires_grad else 0.0, residual[0]))
        elif isinstance(m, nn.Linear):
            calls.append((x + y.numel() * 4.0, x if m.weight.requires_grad else 0.0, residual[0]))
        elif isinstance(m, NORMS):
            calls.append((x, x if m.weight.requires_grad else 0.0, residual[0]))
        elif isinstance(m, (nn.ReLU, nn.ReLU6)):
            calls.append((x, x / 32 if require_backward else 0.0, residual[0]))

    def enter(m, inputs):
        if m.use_skip:
            residual[0] = inputs[0].numel() * 4.0

    def leave(m, inputs, y):
        residual[0] = 0.0

    handles = []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ReLU, nn.ReLU6) + NORMS):
            handles.append(m.register_forward_hook(leaf))
        if isinstance(m, InvertedResidual):
            handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    with torch.no_grad():
        net(torch.zeros(1, 3, resolution, resolution))
    for h in handles:
        h.remove()
    peak, stored = 0.0, 0.0
    for temporary, keep, held in calls:
        peak = max(peak, temporary + stored + held)
        stored += keep
    params = sum(p.numel() * (4 if p.requires_grad else 1) for p in net.parameters())
    return round(peak * batch_size + params)


def paper_total(method: str, resolution: int, batch_size: int, num_classes: int, norm: str,
                lite_modules: bool) -> int:
    from tinytlc.zoo.proxylessnas import proxylessnas_mobile
    net = proxylessnas_mobile(num_classes, resolution, norm=norm)
    lite = insert_lite_residual(net, norm) if lite_modules or method.startswith("lite") else []
    set_trainable(net, method, lite)
    return profile(net, resolution, batch_size, require_backward=method != "last")
