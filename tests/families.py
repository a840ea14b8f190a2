"""Tiny versions of common model families, importable as `tests/families.py:function` model sources.

Each function mirrors the op sequence of torchvision's implementation of that family (same layers in
the same order, same forward code), so the exported ONNX looks like what a real user's model
exports to, but with few channels and 2-4 blocks, for 32x32 inputs: a compile and a training step
take a couple of seconds. Every function returns an eval-mode module with seeded weights and
non-trivial norm statistics/affine parameters. BLOCKS maps each function to its number of blocks.
"""

import sys
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from nets import randomize_bn
except ImportError:  # loaded by path (`tinytlc compile tests/families.py:NAME`): tests/ is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from nets import randomize_bn

NUM_CLASSES = 10


# ---------------------------------------------------------------------------------------------
# shared helpers (torchvision.ops.misc and friends)

def _make_divisible(v, divisor=8, min_value=None):
    """torchvision.models._utils._make_divisible."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.misc.Conv2dNormActivation: Conv2d [-> norm] [-> activation]."""

    def __init__(self, cin, cout, kernel_size=3, stride=1, padding=None, groups=1, norm_layer=nn.BatchNorm2d,
                 activation_layer=nn.ReLU, dilation=1, bias=None):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers = [nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(cout))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.misc.SqueezeExcitation: avgpool -> fc1 -> act -> fc2 -> scale_act -> * input."""

    def __init__(self, input_channels, squeeze_channels, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, x):
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, x):
        scale = self._scale(x)
        return scale * x


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    """torchvision.models.convnext.LayerNorm2d: LayerNorm over channels of an NCHW tensor."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


def _finish(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics (nets.randomize_bn) and LayerNorm affine parameters, eval mode.
    Parameters whose elements all start equal (nn.MultiheadAttention's zero biases, ConvNeXt's layer_scale)
    get seeded noise too, as a trained net's would: the TorchScript exporter merges initializers with
    equal values, which would tie such parameters across blocks."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                noise = torch.randn(p.shape, generator=g)
                p.copy_(p * (1 + 0.2 * noise) if p.flatten()[0] != 0 else 0.02 * noise)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            n = m.weight.numel()
            m.weight.data.copy_((torch.rand(n, generator=g) + 0.5).view_as(m.weight))
            m.bias.data.copy_((torch.randn(n, generator=g) * 0.2).view_as(m.bias))
    return randomize_bn(model, seed).eval()


# ---------------------------------------------------------------------------------------------
# ResNet (torchvision.models.resnet)

def conv3x3(cin, cout, stride=1, groups=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, groups=groups, bias=False, dilation=dilation)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    expansion = 4  # ResNet V1.5: the stride sits on the 3x3 conv

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, block, layers, widths, stem=8, stem_kernel=7, num_classes=NUM_CLASSES):
        super().__init__()
        self.inplanes = stem
        self.conv1 = nn.Conv2d(3, stem, stem_kernel, stride=2, padding=stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layers = nn.ModuleList(
            [self._make_layer(block, w, n, stride=1 if i == 0 else 2) for i, (w, n) in enumerate(zip(widths, layers))])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        for layer in self.layers:  # torchvision: self.layer1 ... self.layer4
            x = layer(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def resnet_basic():
    """Mirrors torchvision resnet18/34: conv7x7/s2-BN-ReLU-MaxPool stem, BasicBlocks (3: one strided with a
    1x1-conv projection shortcut), avgpool, fc."""
    torch.manual_seed(0)
    return _finish(ResNet(BasicBlock, layers=[1, 2], widths=[8, 16]))


def resnet_bottleneck():
    """Mirrors torchvision resnet50 (V1.5): Bottleneck blocks 1x1-3x3-1x1 with expansion 4 (3: two with a
    projection shortcut, the second strided on the 3x3)."""
    torch.manual_seed(0)
    return _finish(ResNet(Bottleneck, layers=[2, 1], widths=[4, 8]))


# ---------------------------------------------------------------------------------------------
# MobileNetV3 (torchvision.models.mobilenetv3)

class MNV3InvertedResidual(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, use_se, use_hs, stride):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        activation_layer = nn.Hardswish if use_hs else nn.ReLU
        layers = []
        if expanded != cin:
            layers.append(Conv2dNormActivation(cin, expanded, 1, norm_layer=norm_layer, activation_layer=activation_layer))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel, stride=stride, groups=expanded,
                                           norm_layer=norm_layer, activation_layer=activation_layer))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8), scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(expanded, cout, 1, norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MobileNetV3(nn.Module):
    # (input, kernel, expanded, output, use_se, use_hs, stride): like mobilenet_v3_small's first rows
    CONFIG = [(8, 3, 8, 8, True, False, 2),      # no expansion conv, SE, ReLU, strided
              (8, 3, 32, 16, False, True, 2),    # expansion, HardSwish, no SE, strided
              (16, 5, 48, 16, True, True, 1)]    # SE + HardSwish, residual skip

    def __init__(self, last_channel=64, num_classes=NUM_CLASSES):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        layers = [Conv2dNormActivation(3, self.CONFIG[0][0], 3, stride=2, norm_layer=norm_layer,
                                       activation_layer=nn.Hardswish)]
        layers += [MNV3InvertedResidual(*c) for c in self.CONFIG]
        lastconv_in = self.CONFIG[-1][3]
        lastconv_out = 6 * lastconv_in
        layers.append(Conv2dNormActivation(lastconv_in, lastconv_out, 1, norm_layer=norm_layer,
                                           activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(lastconv_out, last_channel), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=0.2, inplace=True), nn.Linear(last_channel, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def mobilenetv3():
    """Mirrors torchvision mobilenet_v3_small/large: HardSwish, SE with Hardsigmoid gate, inverted residuals
    with and without skip (3 blocks), head conv1x1-hswish-avgpool-Linear-Hardswish-Dropout-Linear."""
    torch.manual_seed(0)
    return _finish(MobileNetV3())


# ---------------------------------------------------------------------------------------------
# EfficientNet (torchvision.models.efficientnet)

class MBConv(nn.Module):
    def __init__(self, expand_ratio, kernel, stride, cin, cout):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        norm_layer = nn.BatchNorm2d
        expanded = _make_divisible(cin * expand_ratio, 8)
        layers = []
        if expanded != cin:
            layers.append(Conv2dNormActivation(cin, expanded, 1, norm_layer=norm_layer, activation_layer=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel, stride=stride, groups=expanded,
                                           norm_layer=norm_layer, activation_layer=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), activation=partial(nn.SiLU, inplace=True)))
        layers.append(Conv2dNormActivation(expanded, cout, 1, norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        # torchvision's StochasticDepth(p, "row") sits here; it returns its input in eval mode.

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class EfficientNet(nn.Module):
    # (expand_ratio, kernel, stride, input, output), B0's rows shrunk: ratio 1 first, 6 after
    CONFIG = [(1, 3, 1, 16, 8), (6, 3, 2, 8, 16), (6, 3, 1, 16, 16), (6, 5, 2, 16, 24)]

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        layers = [Conv2dNormActivation(3, self.CONFIG[0][3], 3, stride=2, activation_layer=nn.SiLU)]
        layers.append(nn.Sequential(*[MBConv(*c) for c in self.CONFIG]))  # torchvision: one Sequential per stage
        lastconv_in = self.CONFIG[-1][4]
        lastconv_out = 4 * lastconv_in
        layers.append(Conv2dNormActivation(lastconv_in, lastconv_out, 1, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(lastconv_out, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def efficientnet():
    """Mirrors torchvision efficientnet_b0: SiLU, MBConv (4: expand ratio 1 then 6, one with skip) with SE
    (SiLU inside, Sigmoid gate), conv1x1 head, Dropout, Linear."""
    torch.manual_seed(0)
    return _finish(EfficientNet())


# ---------------------------------------------------------------------------------------------
# ShuffleNetV2 (torchvision.models.shufflenetv2)

def channel_shuffle(x, groups: int):
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, num_channels, height, width)
    return x


class ShuffleUnit(nn.Module):
    """torchvision's shufflenetv2.InvertedResidual."""

    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                self.depthwise_conv(inp, inp, 3, stride=stride, padding=1), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, 1, 1, 0, bias=False), nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features), nn.ReLU(inplace=True),
            self.depthwise_conv(branch_features, branch_features, 3, stride=stride, padding=1),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, 1, 0, bias=False), nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True))

    @staticmethod
    def depthwise_conv(i, o, kernel_size, stride=1, padding=0, bias=False):
        return nn.Conv2d(i, o, kernel_size, stride, padding, bias=bias, groups=i)

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        out = channel_shuffle(out, 2)
        return out


class ShuffleNetV2(nn.Module):
    def __init__(self, stages_repeats=(2, 2), stages_out_channels=(8, 16, 32, 64), num_classes=NUM_CLASSES):
        super().__init__()
        input_channels = stages_out_channels[0]
        self.conv1 = nn.Sequential(nn.Conv2d(3, input_channels, 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(input_channels), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        for repeats, output_channels in zip(stages_repeats, stages_out_channels[1:]):
            seq = [ShuffleUnit(input_channels, output_channels, 2)]
            seq += [ShuffleUnit(output_channels, output_channels, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*seq))
            input_channels = output_channels
        self.stages = nn.Sequential(*stages)  # torchvision: self.stage2, self.stage3, self.stage4
        output_channels = stages_out_channels[-1]
        self.conv5 = nn.Sequential(nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
                                   nn.BatchNorm2d(output_channels), nn.ReLU(inplace=True))
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stages(x)
        x = self.conv5(x)
        x = x.mean([2, 3])  # globalpool
        x = self.fc(x)
        return x


def shufflenetv2():
    """Mirrors torchvision shufflenet_v2_x1_0: two stages of a stride-2 two-branch unit then a stride-1 chunk unit
    (4 units), channel_shuffle via view/transpose/contiguous/view, conv5 1x1, global mean, fc."""
    torch.manual_seed(0)
    return _finish(ShuffleNetV2())


# ---------------------------------------------------------------------------------------------
# Inception (torchvision.models.googlenet)

class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        x = self.conv(x)
        x = self.bn(x)
        return F.relu(x, inplace=True)


class Inception(nn.Module):
    def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(cin, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, ch3x3red, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        # torchvision's "5x5" branch really is a 3x3 conv (kept for weight compatibility)
        self.branch3 = nn.Sequential(BasicConv2d(cin, ch5x5red, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(cin, pool_proj, kernel_size=1))

    def forward(self, x):
        outputs = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(outputs, 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.conv1 = BasicConv2d(3, 8, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(8, 8, kernel_size=1)
        self.conv3 = BasicConv2d(8, 16, kernel_size=3, padding=1)
        # torchvision's maxpool2 is left out so the 32 px input keeps some spatial size
        self.inception3a = Inception(16, 8, 8, 8, 4, 4, 4)     # -> 24
        self.inception3b = Inception(24, 8, 8, 12, 4, 8, 4)    # -> 32
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(32, 12, 8, 12, 4, 4, 4)   # -> 32
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.conv3(self.conv2(x))
        x = self.inception3b(self.inception3a(x))
        x = self.inception4a(self.maxpool3(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        return self.fc(x)


def inception():
    """Mirrors torchvision googlenet (no aux heads): BasicConv2d (conv, BN eps 1e-3, relu) and Inception blocks (3)
    of four concatenated branches: 1x1; 1x1->3x3; 1x1->3x3 (torchvision's '5x5'); maxpool3x3/s1 ceil -> 1x1."""
    torch.manual_seed(0)
    return _finish(GoogLeNet())


# ---------------------------------------------------------------------------------------------
# DenseNet (torchvision.models.densenet)

class _DenseLayer(nn.Module):
    def __init__(self, num_input_features, growth_rate, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)

    def bn_function(self, inputs):
        concated_features = torch.cat(inputs, 1)
        return self.conv1(self.relu1(self.norm1(concated_features)))

    def forward(self, input):
        prev_features = [input] if isinstance(input, torch.Tensor) else input
        bottleneck_output = self.bn_function(prev_features)
        return self.conv2(self.relu2(self.norm2(bottleneck_output)))  # drop_rate 0: no dropout


class _DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers, num_input_features, bn_size, growth_rate):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size))

    def forward(self, init_features):
        features = [init_features]
        for name, layer in self.items():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    def __init__(self, growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(num_layers, num_features, bn_size, growth_rate))
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x):
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


def densenet():
    """Mirrors torchvision densenet121: two dense blocks of 2 _DenseLayers (norm-relu-conv1x1-norm-relu-conv3x3 over
    torch.cat of all previous features), a transition (norm, relu, conv1x1, AvgPool2d(2)), norm5, relu, avgpool."""
    torch.manual_seed(0)
    return _finish(DenseNet())


# ---------------------------------------------------------------------------------------------
# ConvNeXt (torchvision.models.convnext)

class CNBlock(nn.Module):
    def __init__(self, dim, layer_scale):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            norm_layer(dim),
            nn.Linear(in_features=dim, out_features=4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(in_features=4 * dim, out_features=dim, bias=True),
            Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        # torchvision's StochasticDepth(p, "row") sits here; it returns its input in eval mode.

    def forward(self, input):
        result = self.layer_scale * self.block(input)
        result += input
        return result


class ConvNeXt(nn.Module):
    # (input_channels, output_channels or None, num_layers)
    CONFIG = [(16, 32, 2), (32, None, 1)]

    def __init__(self, layer_scale=0.1, num_classes=NUM_CLASSES):
        # torchvision initialises layer_scale to 1e-6; a trained net's is far larger, so the blocks matter here
        super().__init__()
        norm_layer = partial(LayerNorm2d, eps=1e-6)
        first = self.CONFIG[0][0]
        layers = [Conv2dNormActivation(3, first, kernel_size=4, stride=4, padding=0, norm_layer=norm_layer,
                                       activation_layer=None, bias=True)]
        for cin, cout, n in self.CONFIG:
            layers.append(nn.Sequential(*[CNBlock(cin, layer_scale) for _ in range(n)]))
            if cout is not None:
                layers.append(nn.Sequential(norm_layer(cin), nn.Conv2d(cin, cout, kernel_size=2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = self.CONFIG[-1][1] or self.CONFIG[-1][0]
        self.classifier = nn.Sequential(norm_layer(last), nn.Flatten(1), nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = self.classifier(x)
        return x


def convnext():
    """Mirrors torchvision convnext_tiny: conv4x4/s4 + LayerNorm2d stem, CNBlocks (3: dwconv7x7, permute, LayerNorm,
    Linear 4x, GELU, Linear, permute, layer_scale, + input), LayerNorm2d + conv2x2/s2 downsample, LN2d head."""
    torch.manual_seed(0)
    return _finish(ConvNeXt())


# ---------------------------------------------------------------------------------------------
# Vision Transformer (torchvision.models.vision_transformer)

class MLPBlock(nn.Sequential):
    """torchvision's MLPBlock (an ops.misc.MLP): Linear, GELU, Dropout, Linear, Dropout."""

    def __init__(self, in_dim, mlp_dim, dropout):
        super().__init__(nn.Linear(in_dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(mlp_dim, in_dim), nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    def __init__(self, num_heads, hidden_dim, mlp_dim, dropout=0.0, attention_dropout=0.0):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.ln_1 = norm_layer(hidden_dim)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, dropout=attention_dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = norm_layer(hidden_dim)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, input):
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = x + input
        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class Encoder(nn.Module):
    def __init__(self, seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout=0.0):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout)) for i in range(num_layers)))
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, input):
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        input = input + self.pos_embedding
        return self.ln(self.layers(self.dropout(input)))


class VisionTransformer(nn.Module):
    def __init__(self, image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                 num_classes=NUM_CLASSES):
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        seq_length = (image_size // patch_size) ** 2
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        seq_length += 1
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim)
        self.heads = nn.Sequential(OrderedDict([("head", nn.Linear(hidden_dim, num_classes))]))
        with torch.no_grad():  # torchvision starts the class token at 0; a trained one is not
            self.class_token.normal_(std=0.02)

    def _process_input(self, x):
        n, c, h, w = x.shape
        p = self.patch_size
        torch._assert(h == self.image_size, f"Wrong image height! Expected {self.image_size} but got {h}!")
        torch._assert(w == self.image_size, f"Wrong image width! Expected {self.image_size} but got {w}!")
        n_h, n_w = h // p, w // p
        x = self.conv_proj(x)  # (n, c, h, w) -> (n, hidden_dim, n_h, n_w)
        x = x.reshape(n, self.hidden_dim, n_h * n_w)
        x = x.permute(0, 2, 1)  # (n, seq, hidden_dim)
        return x

    def forward(self, x):
        x = self._process_input(x)
        n = x.shape[0]
        batch_class_token = self.class_token.expand(n, -1, -1)
        x = torch.cat([batch_class_token, x], dim=1)
        x = self.encoder(x)
        x = x[:, 0]  # the class token
        x = self.heads(x)
        return x


def vit():
    """Mirrors torchvision vit_b_16: conv patch embedding (patch 8 on 32 px), class token, pos embedding,
    encoder blocks (2: LN -> nn.MultiheadAttention(batch_first) -> residual, LN -> MLP -> residual), LN, head."""
    torch.manual_seed(0)
    return _finish(VisionTransformer())


# ---------------------------------------------------------------------------------------------
# SqueezeNet (torchvision.models.squeezenet)

class Fire(nn.Module):
    def __init__(self, inplanes, squeeze_planes, expand1x1_planes, expand3x3_planes):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(  # squeezenet1_1's layout, fewer Fire modules
            nn.Conv2d(3, 16, kernel_size=3, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(16, 4, 8, 8), Fire(16, 4, 8, 8),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(16, 8, 16, 16))
        final_conv = nn.Conv2d(32, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.5), final_conv, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        x = self.features(x)
        x = self.classifier(x)
        return torch.flatten(x, 1)


def squeezenet():
    """Mirrors torchvision squeezenet1_1: no norm layers, Fire modules (3: squeeze 1x1, expand 1x1 || 3x3, cat),
    conv classifier Dropout -> Conv1x1(num_classes) -> ReLU -> AdaptiveAvgPool(1) -> flatten."""
    torch.manual_seed(0)
    return _finish(SqueezeNet())


# ---------------------------------------------------------------------------------------------
# VGG (torchvision.models.vgg)

class VGG(nn.Module):
    CFG = [8, "M", 16, "M", 32, 32, "M", 32, "M"]

    def __init__(self, num_classes=NUM_CLASSES, hidden=64, pool=2):
        super().__init__()
        layers, cin = [], 3
        for v in self.CFG:  # make_layers(cfg, batch_norm=True)
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        # torchvision: AdaptiveAvgPool2d((7, 7)) on the 7x7 map of a 224 px input; here 2x2 on a 32 px one
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(cin * pool * pool, hidden), nn.ReLU(True), nn.Dropout(p=0.5),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=0.5),
            nn.Linear(hidden, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def vgg():
    """Mirrors torchvision vgg11_bn: a plain chain of conv3x3-BN-ReLU and MaxPool (no residual, 5 convs),
    AdaptiveAvgPool2d, flatten, Linear-ReLU-Dropout x2, Linear."""
    torch.manual_seed(0)
    return _finish(VGG())


# ---------------------------------------------------------------------------------------------
# BiT (timm's ResNetV2, Big Transfer)

class StdConv2d(nn.Conv2d):
    """timm's StdConv2d: the weight standardised on every forward (a weight computed from the parameter)."""

    def forward(self, x):
        v, m = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (self.weight - m) / torch.sqrt(v + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PreActBottleneck(nn.Module):
    """timm's ResNetV2 PreActBottleneck: GroupNorm-ReLU before each StdConv, the projection from the
    pre-activated input."""

    def __init__(self, cin, cout, cmid, stride=1):
        super().__init__()
        self.norm1 = nn.GroupNorm(4, cin)
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.norm2 = nn.GroupNorm(4, cmid)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.norm3 = nn.GroupNorm(4, cmid)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        x_preact = F.relu(self.norm1(x))
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(F.relu(self.norm2(x)))
        x = self.conv3(F.relu(self.norm3(x)))
        return x + shortcut


class ResNetV2(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict([  # timm's 'fixed' stem padding: a zero Pad, then the pool
            ("conv", StdConv2d(3, 16, 7, stride=2, padding=3, bias=False)),
            ("pad", nn.ConstantPad2d(1, 0.0)), ("pool", nn.MaxPool2d(3, stride=2))]))
        self.stages = nn.Sequential(PreActBottleneck(16, 32, 8), PreActBottleneck(32, 32, 8),
                                    PreActBottleneck(32, 64, 16, stride=2))
        self.norm = nn.GroupNorm(4, 64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.norm(self.stages(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def bit():
    """Mirrors timm's resnetv2_50x1_bit: StdConv2d (weight standardisation), conv7x7/s2 -> ConstantPad2d(1, 0)
    -> MaxPool 3x3/s2 stem (the Pad stays a Pad: the map before it has negative values), GroupNorm
    pre-activation bottlenecks (3), final GroupNorm-ReLU, pool, Linear."""
    torch.manual_seed(0)
    return _finish(ResNetV2())


# ---------------------------------------------------------------------------------------------
# ResNet-D (timm's resnet50d: deep stem, average-pool shortcuts)

class DBlock(nn.Module):
    """timm's BasicBlock with an avg-down shortcut: AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
    conv1x1, BN."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity()
            self.downsample = nn.Sequential(pool, conv1x1(cin, cout), nn.BatchNorm2d(cout))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)) + shortcut)


class ResNetD(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        # deep stem (three 3x3 convs); unpadded here so that the first shortcut meets an odd 7x7 map at
        # 32 px, where ceil_mode adds a window of fewer values (timm pads it: 224 px gives even maps)
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                   conv3x3(8, 8), nn.BatchNorm2d(8), nn.ReLU(inplace=True), conv3x3(8, 16))
        self.bn1 = nn.BatchNorm2d(16)
        self.maxpool = nn.MaxPool2d(3, 2)
        self.layers = nn.Sequential(DBlock(16, 16, 1), DBlock(16, 32, 2), DBlock(32, 32, 2))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layers(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_d():
    """Mirrors timm's resnet18d: deep stem, BasicBlocks (3) whose strided shortcuts average 2x2 windows
    with ceil_mode and without counting padding (one on an odd map), then conv1x1-BN."""
    torch.manual_seed(0)
    return _finish(ResNetD())


# ---------------------------------------------------------------------------------------------
# Layers the families above do not use: InstanceNorm, GroupNorm(C, C) and (1, C), PReLU, ELU, SELU,
# CELU, Mish, Softplus, AvgPool without padding counted, MaxPool with ceil_mode

class OddLayers(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.InstanceNorm2d(16, affine=True),
                                  nn.PReLU(16), nn.MaxPool2d(3, 2, ceil_mode=True))  # 32 -> 16 (floor: 15)
        self.block1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.GroupNorm(16, 16), nn.ELU(),
                                    nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.SELU(),
                                    nn.AvgPool2d(3, 1, padding=1, count_include_pad=False))
        self.block2 = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), nn.GroupNorm(1, 24),
                                    nn.Mish(), nn.Conv2d(24, 24, 1), nn.CELU(0.5), nn.Conv2d(24, 24, 3, padding=1),
                                    nn.Softplus(), nn.PReLU())
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.block2(x + self.block1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def odd_layers():
    """A small net of the layers above, each where real nets put them (norm after conv, activation after norm)."""
    torch.manual_seed(0)
    return _finish(OddLayers())


# Swin (torchvision.models.swin_transformer, v1): tokens kept channels-last, (N, H, W, C)

def _patch_merging_pad(x):
    H, W, _ = x.shape[-3:]
    x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    x0 = x[..., 0::2, 0::2, :]
    x1 = x[..., 1::2, 0::2, :]
    x2 = x[..., 0::2, 1::2, :]
    x3 = x[..., 1::2, 1::2, :]
    return torch.cat([x0, x1, x2, x3], -1)


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        x = _patch_merging_pad(x)
        x = self.norm(x)
        return self.reduction(x)


def shifted_window_attention(input, qkv_weight, proj_weight, relative_position_bias, window_size, num_heads,
                             shift_size, qkv_bias=None, proj_bias=None):
    B, H, W, C = input.shape
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape
    shift_size = shift_size.copy()
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (C // num_heads) ** -0.5
    attn = q.matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift_size) > 0:
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
        count = 0
        for h in h_slices:
            for w in w_slices:
                attn_mask[h[0]: h[1], w[0]: w[1]] = count
                count += 1
        attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))
    attn = F.softmax(attn, dim=-1)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), C)
    x = F.linear(x, proj_weight, proj_bias)
    x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, C)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    x = x[:, :H, :W, :].contiguous()
    return x


class ShiftedWindowAttention(nn.Module):
    def __init__(self, dim, window_size, shift_size, num_heads):
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = window_size, shift_size, num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size[0]), torch.arange(window_size[1]), indexing="ij"))
        coords_flatten = torch.flatten(coords, 1)
        relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
        relative_coords = relative_coords.permute(1, 2, 0).contiguous()
        relative_coords[:, :, 0] += window_size[0] - 1
        relative_coords[:, :, 1] += window_size[1] - 1
        relative_coords[:, :, 0] *= 2 * window_size[1] - 1
        relative_position_index = relative_coords.sum(-1).flatten()
        self.register_buffer("relative_position_index", relative_position_index)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def get_relative_position_bias(self):
        N = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index]
        return bias.view(N, N, -1).permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x):
        return shifted_window_attention(x, self.qkv.weight, self.proj.weight, self.get_relative_position_bias(),
                                        self.window_size, self.num_heads, shift_size=self.shift_size,
                                        qkv_bias=self.qkv.bias, proj_bias=self.proj.bias)


class SwinBlock(nn.Module):
    def __init__(self, dim, num_heads, window_size, shift_size, mlp_ratio=2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, window_size, shift_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))  # (StochasticDepth: identity in eval)
        x = x + self.mlp(self.norm2(x))
        return x


class Swin(nn.Module):
    def __init__(self, embed_dim=16, depths=(2, 1), num_heads=(2, 4), window_size=(4, 4), num_classes=NUM_CLASSES):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, embed_dim, kernel_size=4, stride=4), Permute([0, 2, 3, 1]),
                                nn.LayerNorm(embed_dim))]
        for i, depth in enumerate(depths):
            dim = embed_dim * 2 ** i
            layers.append(nn.Sequential(*[
                SwinBlock(dim, num_heads[i], list(window_size), [0 if j % 2 == 0 else w // 2 for w in window_size])
                for j in range(depth)]))
            if i < len(depths) - 1:
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)
        num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(num_features)
        self.permute = Permute([0, 3, 1, 2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x):
        x = self.features(x)
        x = self.norm(x)
        x = self.permute(x)
        x = self.avgpool(x)
        x = self.flatten(x)
        return self.head(x)


def swin():
    """swin_t v1: patch-4 conv + LN, shifted-window attention (pad, roll, window partition, relative
    position bias gathered from a trainable table, -100 shift mask), PatchMerging (strided slices,
    concat, LN, Linear), LN, permute, avgpool, head. 32 px: 8x8 tokens, window 4, shift 2."""
    torch.manual_seed(0)
    return _finish(Swin())


# ---------------------------------------------------------------------------------------------
# MobileOne (timm byobnet's MobileOneBlock, train-time form: parallel conv-BN branches)

class ConvBN(nn.Sequential):
    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class MobileOneBlock(nn.Module):
    """The sum of a BN identity (stride 1, same width), a 1x1 conv-BN scale branch and
    `branches` kxk conv-BN branches, then ReLU; depthwise or pointwise as MobileOne alternates."""

    def __init__(self, cin, cout, k=3, stride=1, depthwise=True, branches=4):
        super().__init__()
        groups = cin if depthwise else 1
        self.identity = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None
        self.conv_kxk = nn.ModuleList([ConvBN(cin, cout, k, stride, groups) for _ in range(branches)])
        self.conv_scale = ConvBN(cin, cout, 1, stride, groups) if k > 1 else None
        self.act = nn.ReLU()

    def forward(self, x):
        out = (self.identity(x) if self.identity is not None else 0) + \
            (self.conv_scale(x) if self.conv_scale is not None else 0)
        for conv in self.conv_kxk:
            out = out + conv(x)
        return self.act(out)


class MobileOne(nn.Module):
    def __init__(self, widths=(8, 16), num_classes=10):
        super().__init__()
        layers, cin = [MobileOneBlock(3, widths[0], 3, 2, depthwise=False, branches=1)], widths[0]
        for cout in widths:  # a depthwise stride-2 block, then a pointwise one (kernel 1: no scale branch)
            layers += [MobileOneBlock(cin, cin, 3, 2, depthwise=True), MobileOneBlock(cin, cout, 1, 1, depthwise=False)]
            cin = cout
        self.stem_and_stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.stem_and_stages(x))


def mobileone():
    """MobileOne-S0's train-time blocks at 8 and 16 channels: 4 parallel depthwise kxk branches
    (8 channels: less than one NCHWc block on this CPU, 16)."""
    torch.manual_seed(0)
    return _finish(MobileOne())


FAMILIES = ["resnet_basic", "resnet_bottleneck", "mobilenetv3", "efficientnet", "shufflenetv2", "inception",
            "densenet", "convnext", "vit", "squeezenet", "vgg", "bit", "resnet_d", "odd_layers", "swin", "hrnet",
            "mobileone"]
# blocks per family (residual blocks, MBConvs, units, Inception/Fire modules, dense layers, encoder blocks, convs)
BLOCKS = {"resnet_basic": 3, "resnet_bottleneck": 3, "mobilenetv3": 3, "efficientnet": 4, "shufflenetv2": 4,
          "inception": 3, "densenet": 4, "convnext": 3, "vit": 2, "squeezenet": 3, "vgg": 5}


def resnet18():
    """torchvision's resnet18 at full size (11.7 M parameters, random weights): for `make bench`."""
    torch.manual_seed(0)
    return _finish(ResNet(BasicBlock, layers=[2, 2, 2, 2], widths=[64, 128, 256, 512], stem=64))


def resnet50():
    """torchvision's resnet50 at full size (25.6 M parameters, random weights): for `make bench`."""
    torch.manual_seed(0)
    return _finish(ResNet(Bottleneck, layers=[3, 4, 6, 3], widths=[64, 128, 256, 512], stem=64))


def mobilenetv3_large():
    """torchvision's mobilenet_v3_large at full size (its inverted-residual table, random weights): for `make bench`."""
    class Large(MobileNetV3):
        CONFIG = [(16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
                  (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
                  (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
                  (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
                  (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1),
                  (160, 5, 960, 160, True, True, 1)]
    torch.manual_seed(0)
    return _finish(Large(last_channel=1280))


def efficientnet_b0():
    """torchvision's efficientnet_b0 at full size (its stage table, random weights): for `make bench`."""
    stages = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]

    class B0(EfficientNet):
        CONFIG = [row for e, k, s, i, o, n in stages for row in [(e, k, s, i, o)] + [(e, k, 1, o, o)] * (n - 1)]
    torch.manual_seed(0)
    return _finish(B0())


def shufflenetv2_x1():
    """torchvision's shufflenet_v2_x1_0 at full size (random weights): for `make bench`."""
    torch.manual_seed(0)
    return _finish(ShuffleNetV2(stages_repeats=(4, 8, 4), stages_out_channels=(24, 116, 232, 464, 1024)))


def convnext_tiny():
    """torchvision's convnext_tiny at full size (random weights): for `make bench`."""
    class Tiny(ConvNeXt):
        CONFIG = [(96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)]
    torch.manual_seed(0)
    return _finish(Tiny())


def swin_t():
    """torchvision's swin_t at full size (window 7, random weights): for `make bench`."""
    torch.manual_seed(0)
    return _finish(Swin(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=(7, 7)))


# ---------------------------------------------------------------------------------------------
# HRNet (the official HighResolutionNet's classification model, Wang et al.)

class HRNet(nn.Module):
    """A stem, a transition that forks a half-resolution stream off the full one, residual BasicBlocks
    in each stream, one fusion (each stream adds the other's: 1x1 conv + BN + nearest upsampling from
    below, strided 3x3 conv + BN from above, then ReLU), and the classification head's merge of the
    high stream into the low one, a 1x1 conv, avgpool, fc. No single tensor separates the blocks of
    either stream: the two streams stay apart from the transition to the head."""

    def __init__(self, widths=(8, 16), blocks=2, num_classes=NUM_CLASSES):
        super().__init__()
        c1, c2 = widths
        self.stem = Conv2dNormActivation(3, c1, 3, stride=2)
        self.transition = Conv2dNormActivation(c1, c2, 3, stride=2)
        self.branches = nn.ModuleList([nn.Sequential(*[BasicBlock(c, c) for _ in range(blocks)]) for c in widths])
        self.fuse_up = nn.Sequential(conv1x1(c2, c1), nn.BatchNorm2d(c1), nn.Upsample(scale_factor=2, mode="nearest"))
        self.fuse_down = nn.Sequential(conv3x3(c1, c2, stride=2), nn.BatchNorm2d(c2))
        self.relu = nn.ReLU()
        self.downsample = Conv2dNormActivation(c1, c2, 3, stride=2)
        self.final = Conv2dNormActivation(c2, 4 * c2, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * c2, num_classes)

    def forward(self, x):
        x1 = self.stem(x)
        x2 = self.transition(x1)
        x1, x2 = self.branches[0](x1), self.branches[1](x2)
        x1, x2 = self.relu(x1 + self.fuse_up(x2)), self.relu(x2 + self.fuse_down(x1))
        x = self.final(x2 + self.downsample(x1))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def hrnet():
    """Two streams (16x16 and 8x8 at 32 px), two BasicBlocks in each, one fusion. 5 blocks: the stage from
    the stem's output to the head's merge (where the streams fork and join) with the stem, the first,
    and the 4 BasicBlocks inside it, which get the lite modules (every block but the first)."""
    torch.manual_seed(0)
    return _finish(HRNet())
