"""Small nets for tests, importable as `tests/nets.py:function` model sources."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """Inverted bottleneck with a residual add, depthwise conv, ReLU6, and a dilated conv."""

    def __init__(self, c=8):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, padding=2, dilation=2, groups=2 * c, bias=False),
                                nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.1))
        self.project = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.dw(self.expand(x)))


class SmallNet(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        # TF-style asymmetric 'SAME' padding before a stride-2 conv
        self.stem = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 3, stride=2, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU())  # has a bias, no BN
        self.block = Block(8)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.head(self.pool(self.block(self.grouped(self.stem(x)))))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so BN rewrites are really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def small_net():
    torch.manual_seed(0)
    return randomize_bn(SmallNet())


def tiny_net():
    """For training tests: quick to train on synthetic data."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


def group_norm_net():
    """GroupNorm exports as InstanceNormalization, which ORT 1.19.2 cannot differentiate (tinytlc writes
    it out)."""
    torch.manual_seed(8)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def not_a_module():
    return 42


def odd_net():
    """Activation sizes that are not multiples of 8 (mask packing pads them)."""
    torch.manual_seed(1)
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU6(),
        nn.Conv2d(5, 7, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(7, 3)))


class IRBlock(nn.Module):
    """Inverted bottleneck: 1x1 expand, 3x3 depthwise, 1x1 project (+ skip when shapes allow)."""

    def __init__(self, cin, cout, stride, expand=2):
        super().__init__()
        mid = cin * expand
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.skip else self.conv(x)


class LiteNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(IRBlock(8, 8, 1), IRBlock(8, 16, 2), IRBlock(16, 16, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def lite_net():
    torch.manual_seed(2)
    return randomize_bn(LiteNet())


class Bottleneck(nn.Module):
    """ResNet-50's bottleneck: 1x1 down to `inner`, 3x3, 1x1 up, a projection shortcut where the
    shape changes; `se`: squeeze-and-excite through that many channels, on a 1x1 map."""

    def __init__(self, cin, inner, cout, stride=1, se=0):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(cin, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, inner, 3, stride, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, se, 1), nn.ReLU(), nn.Conv2d(se, cout, 1),
                                nn.Sigmoid()) if se else None
        self.skip = nn.Identity() if stride == 1 and cin == cout else \
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.f(x)
        return torch.relu((y * self.se(y) if self.se is not None else y) + self.skip(x))


class BottleneckNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(Bottleneck(32, 8, 32), Bottleneck(32, 8, 32), Bottleneck(32, 8, 32, se=2),
                                    Bottleneck(32, 16, 64, stride=2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 3))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def bottleneck_net():
    torch.manual_seed(5)
    return randomize_bn(BottleneckNet())


class BasicBlock(nn.Module):
    """A plain residual block with no depthwise conv (ResNet-style)."""

    def __init__(self, c):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1))

    def forward(self, x):
        return torch.relu(x + self.f(x))


def resnet_like():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), BasicBlock(8), BasicBlock(8), BasicBlock(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def one_conv_net():
    """Conv 3->4 (1x1) + ReLU + pool + Linear 4->2: small enough to account by hand."""
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


def paper_rules_net():
    """conv 3->4 (1x1) + BatchNorm + ReLU, depthwise 3x3 + GroupNorm written out (2 groups) + ReLU6,
    pool, Linear 4->2: every kind of layer the paper's accounting has, small enough to do by hand."""
    torch.manual_seed(9)
    from tinytlc.zoo.layers import GroupNorm
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), GroupNorm(4, channels_per_group=2), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))


class _MixedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Conv2d(3, 4, 5, padding=2, bias=False)
        self.c = nn.Conv2d(3, 2, 1, bias=False)  # concatenated along the image axis: feeds no norm's channel

    def forward(self, x):
        return torch.cat([torch.cat([self.a(x), self.b(x)], 1), torch.cat([self.c(x)] * 4, 2)[:, :, :x.shape[2]].repeat(1, 4, 1, 1)], 1)


def mixed_conv_net():
    """timm's MixedConv2d: convs of several kernels whose outputs are concatenated along channels,
    then BatchNorm (and a conv concatenated along the height, which is no norm's channel)."""
    torch.manual_seed(4)
    return randomize_bn(nn.Sequential(_MixedConv(), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(16, 3)))


class MixedConv2d(nn.Module):
    """timm's MixedConv2d: the channels split, one conv per split (kernels 3, 5, ...), concatenated."""

    def __init__(self, cin, cout, kernels, stride=1, depthwise=False):
        super().__init__()
        splits = lambda c: [c // len(kernels) + (i < c % len(kernels)) for i in range(len(kernels))]  # noqa: E731
        self.splits = splits(cin)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride, k // 2, groups=i if depthwise else 1, bias=False)
                                   for i, o, k in zip(self.splits, splits(cout), kernels))

    def forward(self, x):
        return torch.cat([c(p) for c, p in zip(self.convs, torch.split(x, self.splits, 1))], 1)


def _mix_block(cin, cout, stride, mixed):
    mid = cin * 3
    conv = (lambda i, o, ks, s=1, dw=False: MixedConv2d(i, o, ks, s, dw)) if mixed else \
        (lambda i, o, ks, s=1, dw=False: nn.Conv2d(i, o, ks[0], s, ks[0] // 2, groups=i if dw else 1, bias=False))
    return nn.Sequential(conv(cin, mid, [1, 1]), nn.BatchNorm2d(mid), nn.ReLU(),
                         conv(mid, mid, [3, 5, 7], stride, True), nn.BatchNorm2d(mid), nn.ReLU(),
                         conv(mid, cout, [1, 1]), nn.BatchNorm2d(cout))


def mixnet_net(mixed=True):
    """MixNet's inverted bottlenecks without skips (stride 2), whose convs are MixedConv2d (or, for
    comparison, plain convs of the first kernel)."""
    torch.manual_seed(6)
    return randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      _mix_block(8, 12, 2, mixed), _mix_block(12, 16, 2, mixed),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)))


def mixnet_net_plain():
    return mixnet_net(mixed=False)


class _Picks(nn.Module):
    """torchvision Swin's `q, k, v = qkv[0], qkv[1], qkv[2]`, a class token `x[:, 0]`, a last row
    `x[:, :, -1]`, and a row of a parameter table picked by a constant index."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Conv2d(4, 12, 1)
        self.table = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        n, c, h, w = x.shape
        qkv = self.qkv(x).reshape(n, 3, 4, h * w).permute(1, 0, 3, 2)  # (3, n, hw, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(1, 2)).softmax(-1) @ v  # (n, hw, 4)
        return attn[:, 0] + attn[:, :, -1].sum(1, keepdim=True) + self.table[2]


def picks_net():
    torch.manual_seed(8)
    return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), _Picks(), nn.Linear(4, 3))


class _BeitAttention(nn.Module):
    """BEiT's (timm's): the qkv bias is cat(q_bias, a zero k_bias buffer, v_bias), F.linear on tokens."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.v_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Beit(nn.Module):
    """timm's BEiT, small: a class token expanded with `x.shape[0]` (and no absolute position
    embedding to tell shape inference the token count), an attention and an MLP block, the head on
    the mean of the tokens but the class token. Its LayerNorms keep their fresh ones and zeros, which
    ORT's ConstantSharing merges where they are frozen."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8) * 0.1)
        self.norm1, self.norm2 = nn.LayerNorm(8), nn.LayerNorm(8)
        self.attn = _BeitAttention()
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat((self.cls_token.expand(t.shape[0], -1, -1), t), dim=1)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return self.head(t[:, 1:].mean(1))


def beit_net():
    torch.manual_seed(9)
    return _Beit().eval()


class _GRNBlock(nn.Module):
    """ConvNeXt V2's block (timm's), small: its GlobalResponseNorm writes the affine with
    torch.addcmul, which exports a Mul by 1 between the scale and the shift."""

    def __init__(self, dim=8):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.grn_weight = nn.Parameter(torch.randn(2 * dim) * 0.1)
        self.grn_bias = nn.Parameter(torch.randn(2 * dim) * 0.1)

    def forward(self, x):
        y = F.gelu(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1))))
        g = y.norm(p=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        y = y + torch.addcmul(self.grn_bias.view(1, 1, 1, -1), self.grn_weight.view(1, 1, 1, -1), y * n)
        return x + self.fc2(y).permute(0, 3, 1, 2)


def grn_net():
    torch.manual_seed(10)
    return nn.Sequential(nn.Conv2d(3, 8, 4, 4), _GRNBlock(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


def _cbr(cin, cout, k=1, stride=1, groups=1, act=True):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU() if act else nn.Identity())


class _UIB(nn.Module):
    """MobileNetV4's universal inverted bottleneck (timm's), without skip where the width or stride
    changes: an optional depthwise conv before the expansion (ExtraDW), an optional one after it."""

    def __init__(self, cin, cout, dw_start, dw_mid, stride, expand):
        super().__init__()
        mid = cin * expand
        self.dw_start = _cbr(cin, cin, dw_start, stride if not dw_mid else 1, cin, act=False) if dw_start else nn.Identity()
        self.pw_exp = _cbr(cin, mid)
        self.dw_mid = _cbr(mid, mid, dw_mid, stride, mid) if dw_mid else nn.Identity()
        self.pw_proj = _cbr(mid, cout, act=False)
        self.skip = cin == cout and stride == 1

    def forward(self, x):
        y = self.pw_proj(self.dw_mid(self.pw_exp(self.dw_start(x))))
        return x + y if self.skip else y


def mnv4_net():
    """A FusedMBConv (EdgeResidual: 3x3 expand, 1x1 project) after the stem, an inverted bottleneck
    with skip, an ExtraDW block (dw, expand, dw, project) and a ConvNeXt-like one (dw, expand, project)."""
    torch.manual_seed(11)
    return randomize_bn(nn.Sequential(_cbr(3, 8, 3, 2), nn.Sequential(_cbr(8, 32, 3, 2), _cbr(32, 8, act=False)),
                                      _UIB(8, 8, 0, 3, 1, 2), _UIB(8, 12, 3, 3, 2, 2), _UIB(12, 16, 3, 0, 2, 2),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))).eval()


class _DwResidual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(_cbr(c, c, 3, 1, c), _cbr(c, c))

    def forward(self, x):
        return x + self.body(x)


def replk_stem_net():
    """RepLKNet's stem (3x3 s2, depthwise 3x3, 1x1, depthwise 3x3 s2): one block with what follows it."""
    torch.manual_seed(15)
    return randomize_bn(nn.Sequential(_cbr(3, 8, 3, 2), _cbr(8, 8, 3, 1, 8), _cbr(8, 8), _cbr(8, 8, 3, 2, 8),
                                      _DwResidual(8), _DwResidual(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))).eval()


def mobilenetv1_net():
    """MobileNetV1's separable convs (dw, then a widening 1x1), each its own block."""
    torch.manual_seed(12)
    return randomize_bn(nn.Sequential(_cbr(3, 8, 3, 2), _cbr(8, 8, 3, 1, 8), _cbr(8, 16), _cbr(16, 16, 3, 2, 16),
                                      _cbr(16, 24), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 3))).eval()


def conv_kinds_net():
    """Every case of the frozen-conv backward: dilated depthwise, grouped with a non-square kernel
    (stride 1: Conv with a flipped weight), 1x1 (Conv over the transposed weight), strided depthwise
    and strided grouped 5x5 whose input size the stride rounds away (Conv over zeros between dY's
    elements), and a 1x1 conv on a map smaller than its weight (ConvTranspose)."""
    torch.manual_seed(10)
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), nn.ReLU(),
        nn.Conv2d(16, 16, (3, 5), padding=(1, 2), groups=4), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.ReLU(),
        nn.Conv2d(16, 16, 5, stride=2, padding=2, groups=4), nn.ReLU(),
        nn.Conv2d(16, 32, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3)))


class _Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1))

    def forward(self, x):
        return x + self.f(x)


def residual_net():
    """stem conv 3->2, then x + conv(relu(conv(x))), pool, Linear 2->2: a residual block to account."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(3, 2, 1), _Res(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).eval()


def group_norm_written_net():
    torch.manual_seed(6)
    from tinytlc.zoo.layers import GroupNorm  # written with elementary ops, 2 groups of 2 channels here
    return nn.Sequential(nn.Conv2d(3, 4, 1), GroupNorm(4, channels_per_group=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2)).eval()


def mlp_head_net():
    """Two linear layers after the pool: the first one's weight is frozen under bias-only training."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


class _ProdPool(nn.Module):
    def forward(self, x):
        return x.prod(dim=3).prod(dim=2)


def prod_reduce_net():
    """A global product written as ReduceProd, which has no gradient in onnxruntime-training 1.19.2
    (and which tinytlc does not write out)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), _ProdPool(), nn.Linear(4, 2)).eval()


class _Recurrent(nn.Module):
    """Patches read as a sequence by an LSTM (Sequencer2D's idea, one direction)."""

    def __init__(self):
        super().__init__()
        self.embed, self.lstm, self.head = nn.Conv2d(3, 4, 4, 4), nn.LSTM(4, 4, batch_first=True), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.lstm(self.embed(x).flatten(2).transpose(1, 2))[0].mean(1))


def lstm_net():
    torch.manual_seed(13)
    return _Recurrent().eval()


class _BiRecurrent(nn.Module):
    """Sequencer2D's: bidirectional recurrences along the rows (an LSTM) and along the columns (a GRU
    here), batch_first, summed."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Conv2d(3, 4, 4, 4), nn.Linear(6, 3)
        self.rows = nn.LSTM(4, 3, batch_first=True, bidirectional=True)
        self.cols = nn.GRU(4, 3, batch_first=True, bidirectional=True)

    def forward(self, x):
        f = self.embed(x).permute(0, 2, 3, 1)  # (n, h, w, c)
        n, h, w, c = f.shape
        rows = self.rows(f.reshape(n * h, w, c))[0].reshape(n, h, w, -1)
        cols = self.cols(f.transpose(1, 2).reshape(n * w, h, c))[0].reshape(n, w, h, -1).transpose(1, 2)
        return self.head((rows + cols).mean((1, 2)))


def bilstm_net():
    torch.manual_seed(16)
    return _BiRecurrent().eval()


class _AuxHead(nn.Module):
    """VOLO's eval output (timm, use_aux_head=True): head(class token) + 0.5 * aux_head(tokens).max(1)."""

    def __init__(self):
        super().__init__()
        self.embed, self.head, self.aux_head = nn.Conv2d(3, 4, 4, 4), nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(t[:, 0]) + 0.5 * self.aux_head(t[:, 1:]).max(1)[0]


def aux_head_net():
    torch.manual_seed(14)
    return _AuxHead().eval()


def global_max_net():
    """AdaptiveMaxPool2d(1) exports as GlobalMaxPool (no gradient in ORT 1.19.2; tinytlc writes a MaxPool)."""
    torch.manual_seed(9)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Hardswish(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(6, 3)).eval()


class WideLiteNet(LiteNet):
    """LiteNet with 16 and 32 channels: wide enough for ORT's NCHWc kernels (blocks of 16 channels)."""

    def __init__(self):
        nn.Module.__init__(self)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(IRBlock(16, 16, 1), IRBlock(16, 16, 2), IRBlock(16, 16, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


def wide_lite_net():
    torch.manual_seed(5)
    return randomize_bn(WideLiteNet())


def clip_boundary_net():
    """A ReLU6 whose inputs sit exactly on its bounds and beyond: a 1x1 conv with zero weights and
    biases 0, 6, -1, 7, 3 (every channel constant), then a trained-through 3x3 conv."""
    torch.manual_seed(6)
    first = nn.Conv2d(3, 5, 1)
    nn.init.zeros_(first.weight)
    first.bias.data = torch.tensor([0.0, 6.0, -1.0, 7.0, 3.0])
    return nn.Sequential(first, nn.ReLU6(), nn.Conv2d(5, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def depthwise_kinds_net():
    """Depthwise convs on small maps for depthwise-weight-grad, 16 and 32 channels (whole NCHWc
    blocks): 5x5 stride 2, a non-square 3x5 kernel with strides (2, 1), and one without padding."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(),
                         nn.Conv2d(16, 16, 5, stride=2, padding=2, groups=16), nn.ReLU(),
                         nn.Conv2d(16, 32, 1), nn.ReLU(),
                         nn.Conv2d(32, 32, (3, 5), stride=(2, 1), padding=(1, 2), groups=32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, groups=32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3))


def wide_kernel_net():
    """ConvNeXt's 7x7 depthwise conv and a 3x3 one, 16 channels, on the whole input map."""
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(),
                         nn.Conv2d(16, 16, 7, padding=3, groups=16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


class DenseNet(nn.Module):
    """ResNet's stem and plain 3x3 convs, small: conv, ReLU, then a 3x3 stride-2 MaxPool (ORT's
    ReluGrad reads that ReLU's input, not its output), 3x3 convs of 16 input channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3))

    def forward(self, x):
        return self.head(self.conv2(self.pool(self.conv1(self.stem(x)))))


def dense_net():
    torch.manual_seed(6)
    return randomize_bn(DenseNet())


def gather_net():
    """Trained k x k convs on small maps for gather-conv (RES 15): a 3x3 on the 15 x 15 map
    (225 output pixels: keeps ConvGrad), then on maps of at most 8 x 8 a 3x3 stride 2, a 2-group
    5x5 (a lite module's), a 3x5 kernel with strides (2, 1), a dilated 3-group 3x3 and an
    asymmetrically padded stride-2 3x3."""
    torch.manual_seed(8)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 5, padding=2, groups=2, bias=False), nn.ReLU(),
                         nn.Conv2d(16, 24, (3, 5), stride=(2, 1), padding=(1, 2)), nn.ReLU(),
                         nn.Conv2d(24, 24, 3, padding=2, dilation=2, groups=3), nn.ReLU(),
                         nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(24, 32, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3))


def stacked_activations_net():
    """A ReLU straight into a ReLU6 (both gradients read the same float: the ReLU's output is the
    ReLU6's input), then a ReLU into a 1x1 conv (whose weight gradient reads that ReLU's output)."""
    torch.manual_seed(9)
    return randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.ReLU6(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)))


class _Windows(nn.Module):
    """Folds the batch with the channels, as Swin's window attention does: (n, 8, h, w) ->
    (2n, 4, h, w), a conv and global pooling there, and back to (n, 8)."""

    def __init__(self):
        super().__init__()
        self.stem, self.inner = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        n, _, h, w = x.shape
        x = F.adaptive_avg_pool2d(self.inner(x.reshape(2 * n, 4, h, w)), 1)  # (a target computed from the batch)
        return self.head(x.reshape(-1, 8))


def windows_net():
    torch.manual_seed(9)
    return _Windows()


class _TokenMLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class _ChannelsLast(nn.Module):
    """Swin's and ConvNeXt-style layout: residual blocks on (n, h, w, c) tensors between two permutes;
    `tokens`: read as (n, h*w, c) tokens after the blocks instead (VOLO's reshape(B, -1, C))."""

    def __init__(self, tokens=False):
        super().__init__()
        self.tokens = tokens
        self.stem, self.norm = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.LayerNorm(8)
        self.blocks = nn.Sequential(_TokenMLP(8), _TokenMLP(8), _TokenMLP(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.blocks(self.norm(self.stem(x).permute(0, 2, 3, 1)))
        if self.tokens:
            return self.head(x.reshape(x.shape[0], -1, x.shape[-1]).mean(1))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 1), 1))


def channels_last_net():
    torch.manual_seed(10)
    return _ChannelsLast()


def channels_last_tokens_net():
    torch.manual_seed(10)
    return _ChannelsLast(tokens=True)


class _Fusion(nn.Module):
    """HRNet's branch fusion and an FPN's top-down path: a low-resolution branch upsampled (nearest
    x2, bilinear to a size, bilinear with align_corners) and added to the high-resolution one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.lateral = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        low = self.down(x)
        h, w = x.shape[-2:]
        x = x + F.interpolate(low, scale_factor=2.0, mode="nearest")[..., :h, :w]
        x = x + F.interpolate(self.lateral(low), size=(h, w), mode="bilinear", align_corners=False)
        x = F.relu(x + F.interpolate(low, size=(h, w), mode="bilinear", align_corners=True))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def fusion_net():
    torch.manual_seed(11)
    return randomize_bn(_Fusion())


class _Distilled(nn.Module):
    """A distilled DeiT's ending: two tokens, two heads, averaged in eval mode; `stacked`: CrossViT's,
    the mean of the stacked heads (of three tokens here)."""

    def __init__(self, stacked=False):
        super().__init__()
        self.stacked = stacked
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.tokens = nn.Parameter(torch.randn(1, 3 if stacked else 2, 16) * 0.5)
        self.norm = nn.LayerNorm(16)
        self.mix = nn.Linear(16, 16)
        self.head, self.head_dist = nn.Linear(16, 3), nn.Linear(16, 3)
        self.head_2 = nn.Linear(16, 3) if stacked else None

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.tokens.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.norm(x + self.mix(x.mean(1, keepdim=True)))
        if self.stacked:
            return torch.mean(torch.stack([self.head(x[:, 0]), self.head_dist(x[:, 1]), self.head_2(x[:, 2])], dim=0), dim=0)
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2


def distilled_net():
    torch.manual_seed(12)
    return _Distilled()


def stacked_heads_net():
    torch.manual_seed(12)
    return _Distilled(stacked=True)


class _Affine(nn.Module):
    """ResMLP's norm (timm's Affine): a per-channel scale and shift, no statistics."""

    def __init__(self, dim):
        super().__init__()
        self.alpha = nn.Parameter(torch.rand(1, 1, dim) + 0.5)
        self.beta = nn.Parameter(torch.randn(1, 1, dim) * 0.2)

    def forward(self, x):
        return torch.addcmul(self.beta, self.alpha, x)


class _ResMLPBlock(nn.Module):
    def __init__(self, dim, tokens):
        super().__init__()
        self.norm1, self.norm2 = _Affine(dim), _Affine(dim)
        self.linear_tokens = nn.Linear(tokens, tokens)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ls1, self.ls2 = nn.Parameter(torch.rand(dim) * 0.5), nn.Parameter(torch.rand(dim) * 0.5)

    def forward(self, x):
        x = x + self.ls1 * self.linear_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.ls2 * self.mlp(self.norm2(x))


class _ResMLP(nn.Module):
    def __init__(self, dim=8, tokens=9):  # 3 x 3 patches of a 15 px image (test_gradients' RES)
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(*[_ResMLPBlock(dim, tokens) for _ in range(2)])
        self.norm = _Affine(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.blocks(self.stem(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(x).mean(1))


def resmlp_net():
    """ResMLP: its Affine norms read the residual stream the block adds back to."""
    torch.manual_seed(11)
    return _ResMLP().eval()


class _CosineAttention(nn.Module):
    """Swin V2's attention (timm): cosine similarity * exp(clamped per-head logit scale) + 16 *
    sigmoid(continuous position bias MLP over fixed coordinates): a scale and a shift made from
    parameters, around no norm."""

    def __init__(self, dim=8, heads=2, tokens=9):  # 3 x 3 patches of a 15 px image (test_gradients' RES)
        super().__init__()
        self.heads, self.tokens = heads, tokens
        self.qkv = nn.Linear(dim, 3 * dim)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(heads, 1, 1)) + 0.1 * torch.randn(heads, 1, 1))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, heads, bias=False))
        self.register_buffer("coords", torch.randn(tokens * tokens, 2))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        bias = self.cpb_mlp(self.coords).view(N, N, self.heads).permute(2, 0, 1)
        attn = attn + 16 * torch.sigmoid(bias).unsqueeze(0)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))


class _CosineAttentionNet(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.attn, self.norm = _CosineAttention(dim), nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = x + self.norm(self.attn(x))  # (res-post-norm, as Swin V2)
        return self.head(x.mean(1))


def cosine_attention_net():
    """Swin V2's cosine attention: its scale and position bias are no norm's affine."""
    torch.manual_seed(13)
    model = _CosineAttentionNet()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5), model.norm.bias.normal_(0, 0.2)
    return model.eval()


class _Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def _window_partition(x, ws: int):
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, C)


def _window_reverse(windows, ws: int, size):
    (H, W), C = size, windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, H, W, C)


class _SwinV2Block(nn.Module):
    """timm's SwinTransformerV2Block: padded (shifted) windows of cosine attention, written back with
    windows.view(-1, H, W, C); res-post-norm; its MLP on x.reshape(B, -1, C)."""

    def __init__(self, dim=8, ws=2, shift=0):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.attn, self.norm1 = _CosineAttention(dim, tokens=ws * ws), nn.LayerNorm(dim)
        self.mlp, self.norm2 = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)), nn.LayerNorm(dim)

    def _attn(self, x):
        B, H, W, C = x.shape
        x = torch.roll(x, (-self.shift, -self.shift), (1, 2)) if self.shift else x
        x = F.pad(x, (0, 0, 0, (self.ws - W % self.ws) % self.ws, 0, (self.ws - H % self.ws) % self.ws))
        _, Hp, Wp, _ = x.shape
        windows = self.attn(_window_partition(x, self.ws).view(-1, self.ws * self.ws, C)).view(-1, self.ws, self.ws, C)
        x = _window_reverse(windows, self.ws, (Hp, Wp))[:, :H, :W, :]
        return torch.roll(x, (self.shift, self.shift), (1, 2)) if self.shift else x

    def forward(self, x):
        B, H, W, C = x.shape
        x = x + self.norm1(self._attn(x))
        x = x.reshape(B, -1, C)
        x = x + self.norm2(self.mlp(x))
        return x.reshape(B, H, W, C)


def swinv2_net():
    """Two Swin V2 blocks (the second shifted) on a 3 x 3 map, padded to 2 x 2 windows."""
    torch.manual_seed(15)
    stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), _Permute(0, 2, 3, 1))
    model = nn.Sequential(stem, _SwinV2Block(), _SwinV2Block(shift=1), nn.LayerNorm(8), _Permute(0, 3, 1, 2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    return model.eval()


class _LateClassToken(nn.Module):
    """ConViT: the class token is concatenated before the last blocks (local_up_to_layer)."""

    def __init__(self, d=8):
        super().__init__()
        self.proj, self.cls_token = nn.Conv2d(3, d, 5, 5), nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.blocks, self.head = nn.ModuleList([_TokenMLP(d) for _ in range(3)]), nn.Linear(d, 3)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        for i, block in enumerate(self.blocks):
            if i == 2:
                x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            x = block(x)
        return self.head(x[:, 0])


def late_class_token_net():
    torch.manual_seed(16)
    return _LateClassToken().eval()


class _PixelPatchBlock(nn.Module):
    """timm's TNT Block: an inner transformer on each patch's pixels [B * patches, pixels, c], added
    into the patch tokens as proj(norm(pixels).reshape(B, N - 1, -1)), then an outer one."""

    def __init__(self, inner, outer, pixels):
        super().__init__()
        self.inner, self.norm1_proj = _TokenMLP(inner), nn.LayerNorm(inner)
        self.proj, self.outer = nn.Linear(inner * pixels, outer), _TokenMLP(outer)

    def forward(self, pixel_embed, patch_embed):
        pixel_embed = self.inner(pixel_embed)
        B, N, C = patch_embed.size()
        patch_embed = torch.cat([patch_embed[:, 0:1], patch_embed[:, 1:] +
                                 self.proj(self.norm1_proj(pixel_embed).reshape(B, N - 1, -1))], dim=1)
        return pixel_embed, self.outer(patch_embed)


class _PixelPatch(nn.Module):
    def __init__(self, inner=4, outer=8):
        super().__init__()
        self.pixels = nn.Conv2d(3, inner, 3, 3, padding=2)  # 15 px: a 6 x 6 map, 9 patches of 2 x 2 pixels
        self.proj, self.cls_token = nn.Linear(4 * inner, outer), nn.Parameter(torch.randn(1, 1, outer) * 0.5)
        self.blocks = nn.ModuleList([_PixelPatchBlock(inner, outer, 4) for _ in range(2)])
        self.head = nn.Linear(outer, 3)

    def forward(self, x):
        B = x.shape[0]
        p = self.pixels(x)
        p = p.reshape(B, -1, 3, 2, 3, 2).permute(0, 2, 4, 3, 5, 1).reshape(B * 9, 4, -1)
        patch = torch.cat((self.cls_token.expand(B, -1, -1), self.proj(p.reshape(B, 9, -1))), dim=1)
        for block in self.blocks:
            p, patch = block(p, patch)
        return self.head(patch[:, 0])


def pixel_patch_net():
    """TNT: pixel tokens per patch beside patch tokens (see _PixelPatchBlock)."""
    torch.manual_seed(17)
    return _PixelPatch().eval()


def pixel_shuffle_net():
    """Trained convs on both sides of a pixel shuffle and unshuffle (DepthToSpace and SpaceToDepth in
    ONNX, which ORT cannot differentiate)."""
    torch.manual_seed(12)
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.PixelShuffle(2), nn.Conv2d(4, 8, 3, 1, 1),
                         nn.PixelUnshuffle(2), nn.Conv2d(32, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3)).eval()


class _PEG(nn.Module):
    """Twins' position encoding generator: tokens read as an image, a depthwise conv added back."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, h, w):
        feat = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
        return (self.proj(feat) + feat).flatten(2).transpose(1, 2)


class _Twins(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.ModuleList([_TokenMLP(dim) for _ in range(3)])
        self.peg = _PEG(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x)
        h, w = x.shape[2:]
        x = self.blocks[1](self.blocks[0](x.flatten(2).transpose(1, 2)))
        x = self.blocks[2](self.peg(x, h, w))
        return self.head(x.mean(1))


def peg_net():
    """Twins-SVT: after a block its tokens are read as [B, C, N] (a Transpose) by the position conv."""
    torch.manual_seed(13)
    return _Twins().eval()


class _ConvResidual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        return x + F.relu(self.bn(self.conv(x)))


class _PatchBlock(nn.Module):
    """timm's MobileVitV2Block, small: the map resized to a multiple of the 2x2 patch with a size read
    from its shape, unfolded with x.reshape(B, C, -1, patches), mixed, folded back."""

    def __init__(self, c):
        super().__init__()
        self.conv_1x1 = nn.Conv2d(c, c, 1, bias=False)
        self.norm1, self.norm2 = nn.GroupNorm(1, c), nn.GroupNorm(1, c)
        self.attn = nn.Conv2d(c, c, 1)
        self.mlp = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.GELU(), nn.Conv2d(2 * c, c, 1))
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        nh, nw = math.ceil(h / 2), math.ceil(w / 2)
        x = self.conv_1x1(F.interpolate(x, size=(2 * nh, 2 * nw), mode="bilinear", align_corners=True))
        c = x.shape[1]
        x = x.reshape(b, c, nh, 2, nw, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c, -1, nh * nw)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        b, c = x.shape[:2]
        x = x.reshape(b, c, 2, 2, nh, nw).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * nh, 2 * nw)
        return self.proj(x)


def resized_patches_net():
    """MobileViT-v2 on a map of odd size (5 x 5 from RES 15): interpolated to 6 x 6, then patches."""
    torch.manual_seed(14)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 3, 1), _ConvResidual(8), _PatchBlock(8), _ConvResidual(8), _ConvResidual(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


class _StarReLU(nn.Module):
    """timm's MetaFormer activation: s * relu(x)^2 + b, a scalar scale and bias."""

    def __init__(self):
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.tensor([0.8])), nn.Parameter(torch.tensor([-0.3]))

    def forward(self, x):
        return self.scale * F.relu(x) ** 2 + self.bias


def starrelu_net():
    """ConvFormer's MLP: its activation has a bias of its own."""
    torch.manual_seed(15)
    return nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.BatchNorm2d(8), nn.Conv2d(8, 16, 1), _StarReLU(), nn.Conv2d(16, 8, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


class _EinsumAttention(nn.Module):
    """Attention over a (B, H, W, C) map written with torch.einsum, with SAM's decomposed relative
    positions (einsum("bhwc,hkc->bhwk") over B x heads): ORT 1.19.2 has no Einsum gradient."""

    def __init__(self, dim=8, heads=2, size=3):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Parameter(torch.randn(dim, dim) * 0.3)
        self.rel_h = nn.Parameter(torch.randn(2 * size - 1, dim // heads) * 0.5)
        self.rel_w = nn.Parameter(torch.randn(2 * size - 1, dim // heads) * 0.5)
        self.register_buffer("idx", torch.arange(size)[:, None] - torch.arange(size)[None, :] + size - 1,
                             persistent=False)

    def forward(self, x):
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = torch.einsum("bhid,bhjd->bhij", q, k) * (q.shape[-1] ** -0.5)
        r_q = q.reshape(B * self.heads, H, W, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, self.rel_h[self.idx])
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, self.rel_w[self.idx])
        attn = (attn.view(B * self.heads, H, W, H, W) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :])
        out = torch.einsum("bhij,bhjd->bhid", attn.view(B, self.heads, H * W, H * W).softmax(-1), v)
        out = torch.einsum("bhnd->bnhd", out).reshape(B, H, W, C)
        return torch.einsum("...c,cd->...d", out, self.proj)


class _EinsumNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.norm, self.attn = nn.Conv2d(3, 8, 4, 4), nn.LayerNorm(8), _EinsumAttention()
        self.bilinear, self.head = nn.Parameter(torch.randn(8, 8) * 0.3), nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        x = x + self.attn(self.norm(x))
        pooled = x.mean((1, 2))
        return self.head(pooled + torch.einsum("bi,ij", pooled, self.bilinear))  # (implicit output: bj)


def einsum_net():
    """torch.einsum in attention, relative positions, a projection over '...' and an implicit form."""
    torch.manual_seed(18)
    return _EinsumNet().eval()


class _GlobalQueryBlock(nn.Module):
    """GCViT's block: window attention whose query is, in every other block, made once per image
    from the whole map and repeated over the image's windows (batched by windows x images)."""

    def __init__(self, c, use_global, window=2, heads=2):
        super().__init__()
        self.window, self.heads, self.use_global = window, heads, use_global
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, (2 if use_global else 3) * c), nn.Linear(c, c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, x, q_global):  # x: (B, H, W, C); q_global: (B, window, window, C)
        B, H, W, C = x.shape
        w, h = self.window, self.heads
        win = self.norm1(x).view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
        B_, N, _ = win.shape
        if self.use_global:
            k, v = self.qkv(win).reshape(B_, N, 2, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)
            q = q_global.repeat(B_ // q_global.shape[0], 1, 1, 1).reshape(B_, N, h, C // h).permute(0, 2, 1, 3)
        else:
            q, k, v = self.qkv(win).reshape(B_, N, 3, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)
        q = q * (C // h) ** -0.5
        out = self.proj(((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(B_, N, C))
        out = out.view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        x = x + out
        return x + self.mlp(self.norm2(x))


class _GlobalQuery(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.Conv2d(c, c, 3, 2, 1))
        self.query = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.blocks = nn.ModuleList([_GlobalQueryBlock(c, i % 2 == 1) for i in range(2)])
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.stem(x)  # (15 px: 4 x 4, four 2 x 2 windows)
        q_global = F.max_pool2d(self.query(x) + x, 3, 2, 1).permute(0, 2, 3, 1)  # (B, 2, 2, C)
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x, q_global)
        return self.head(x.mean((1, 2)))


def global_query_net():
    """GCViT: a global query repeated over each image's windows."""
    torch.manual_seed(19)
    return _GlobalQuery().eval()


class _ClipBlock(nn.Module):
    """CLIP's ResidualAttentionBlock (QuickGELU MLP); nn.MultiheadAttention takes (T, N, D) tokens
    unless batch_first."""

    def __init__(self, d, batch_first):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=batch_first)
        self.c_fc, self.c_proj = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.c_fc(self.ln_2(x))
        return x + self.c_proj(h * torch.sigmoid(1.702 * h))


class _Clip(nn.Module):
    def __init__(self, batch_first, d=8):
        super().__init__()
        self.batch_first = batch_first
        self.conv1 = nn.Conv2d(3, d, 5, 5, bias=False)  # 15 px: 9 patches
        self.class_embedding, self.positional_embedding = nn.Parameter(torch.randn(d)), nn.Parameter(torch.randn(10, d))
        self.ln_pre, self.ln_post, self.head = nn.LayerNorm(d), nn.LayerNorm(d), nn.Linear(d, 3)
        self.blocks = nn.ModuleList([_ClipBlock(d, batch_first) for _ in range(3)])

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], 1) + self.positional_embedding
        x = self.ln_pre(x)
        x = x if self.batch_first else x.permute(1, 0, 2)  # NLD -> LND
        for block in self.blocks:
            x = block(x)
        x = x if self.batch_first else x.permute(1, 0, 2)
        return self.head(self.ln_post(x[:, 0]))


def clip_net(batch_first=False):
    """OpenAI CLIP's visual transformer: its blocks run on (tokens, batch, dim)."""
    torch.manual_seed(20)
    return _Clip(batch_first).eval()


def clip_batch_first_net():
    """clip_net with the same weights, its blocks on (batch, tokens, dim)."""
    return clip_net(batch_first=True)


class _TokenPool(nn.Module):
    """Next-ViT's E_MHSA: keys and values from tokens averaged by nn.AvgPool1d (a 1-D AveragePool),
    then BatchNorm1d; a padded ceil-mode pool that does not count its padding beside it."""

    def __init__(self, d=8):
        super().__init__()
        self.stem = nn.Conv2d(3, d, 3, 3)  # 12 px: 16 tokens
        self.q, self.kv, self.head = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, 3)
        self.sr = nn.AvgPool1d(4, 4)
        self.sr_padded = nn.AvgPool1d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.norm = nn.BatchNorm1d(d)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        pooled = torch.cat([self.sr(x.transpose(1, 2)), self.sr_padded(x.transpose(1, 2))], 2)
        k, v = self.kv(self.norm(pooled).transpose(1, 2)).chunk(2, -1)
        out = (self.q(x) @ k.transpose(1, 2) * 8 ** -0.5).softmax(-1) @ v
        return self.head((x + out).mean(1))


def token_pool_net():
    """1-D average pools over tokens (Next-ViT's spatial reduction)."""
    torch.manual_seed(21)
    return randomize_bn(_TokenPool()).eval()


class _PoolTokens(nn.Module):
    """PiT's pooling between stages: the grid tokens pooled by a stride-2 depthwise conv (its width
    doubled), the class token by a Linear; `subsample`: LeViT's, every other grid token kept."""

    def __init__(self, d, subsample=False):
        super().__init__()
        self.subsample = subsample
        out = d if subsample else 2 * d
        self.conv = nn.Conv2d(d, out, 3, 2, 1, groups=d) if not subsample else nn.Linear(d, out)
        self.fc = nn.Linear(d, out)

    def forward(self, x):
        cls, grid = x[:, :1], x[:, 1:]
        B, N, C = grid.shape
        side = int(N ** 0.5)
        grid = grid.transpose(1, 2).reshape(B, C, side, side)
        grid = grid[:, :, ::2, ::2] if self.subsample else self.conv(grid)
        grid = grid.flatten(2).transpose(1, 2)
        return torch.cat([self.fc(cls), self.conv(grid) if self.subsample else grid], 1)


class _PooledTokens(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.proj, self.cls_token = nn.Conv2d(3, d, 3, 3), nn.Parameter(torch.randn(1, 1, d) * 0.5)  # 15 px: 5 x 5
        self.blocks = nn.Sequential(_TokenMLP(d), _PoolTokens(d), _TokenMLP(2 * d), _PoolTokens(2 * d, True),
                                    _TokenMLP(2 * d))
        self.head = nn.Linear(2 * d, 3)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.head(self.blocks(x)[:, 0])


def pooled_tokens_net():
    """PiT's and LeViT's pooling of a class token and a 5 x 5 grid: 26 tokens, then 10, then 5."""
    torch.manual_seed(22)
    return _PooledTokens().eval()


class _CeilAveragePools(nn.Module):
    """Average pools that ceil_mode extends past the end padding while padding counts (torch's
    default count_include_pad=True): a padded 3x3/2 pool on a 12 px map (its last window reaches one
    past the padding), and Hugging Face EfficientNet's pooler, AvgPool2d(kernel wider than the map,
    ceil_mode=True), which torch computes as a global average. ORT 1.19.2 divides both otherwise."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.norm, self.head = nn.BatchNorm2d(16), nn.Linear(16, 3)
        self.pool, self.pooler = nn.AvgPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(64, ceil_mode=True)

    def forward(self, x):
        x = self.pool(torch.relu(self.stem(x)))
        return self.head(self.pooler(torch.relu(self.norm(self.conv(x)))).flatten(1))


def ceil_avg_pool_net():
    torch.manual_seed(6)
    return randomize_bn(_CeilAveragePools()).eval()


class _InterpolatedPositions(nn.Module):
    """DINOv2's position embeddings as Hugging Face interpolates them while tracing: the stored
    grid's side is n ** 0.5 of a traced shape (a Pow in the graph), then a bicubic resize of the
    trained embeddings to the image's patch grid (2 x 2 stored, 3 x 3 at 12 px)."""

    def __init__(self, d=8, grid=2, patch=4):
        super().__init__()
        self.patch, self.head = nn.Conv2d(3, d, patch, patch), nn.Linear(d, 3)
        self.pos = nn.Parameter(torch.randn(1, grid * grid, d))

    def forward(self, x):
        t = self.patch(x)
        n, d, h, w = t.shape
        side = self.pos.shape[1] ** 0.5
        side = side.to(torch.int64) if isinstance(side, torch.Tensor) else int(side)
        pos = self.pos.reshape(1, side, side, d).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        tokens = t.flatten(2).transpose(1, 2) + pos.flatten(2).transpose(1, 2)
        return self.head(torch.relu(tokens).mean(1))


def interpolated_positions_net():
    torch.manual_seed(7)
    return _InterpolatedPositions().eval()
