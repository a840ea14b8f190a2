"""Lite residual modules (TinyTL-L): a small trainable side branch beside each block but the first.

Blocks come from the graph's structure (blocks.py: cut points of the dataflow graph, any CNN).
Beside each block B with input x (C_in, H, W) and output y (C_out, H', W') the pass adds
    y + up(norm2(conv1x1(relu(norm1(gconv_kxk(avgpool2x2(x)))))))
with a k x k group conv (groups 2, width C_in * expand, the block's stride), GroupNorm (8 channels
per group), and a final norm whose scale starts at 0, so the network computes exactly what it did
before training starts. k = 5, shrunk by 2 while it exceeds the pooled size the block would have if
the first module's input were 128 px on a side (each stride before it halving that), as the paper
fixes its kernels; so modules do not grow with the input resolution. `reference=0` sizes k by the
real pooled size instead. Where k is wider than the map its outer taps can reach, only the taps that
reach it are made (`reach`: the same function and gradients, fewer weights).
Beside a bottleneck, a block whose narrowest conv is narrower than its input (ResNet-50's 1x1-3x3-1x1:
1024 channels in, 256 inside), the module is no wider than that conv, and its groups multiply so
that each still reads half the module's width, as the paper's 2 groups do (2 C_in / width groups).
The paper's module there held 12.7x the block's weights (149 M parameters beside ResNet-50's 23.5 M
at 128 px, so `lite` trained more than `full`); narrowed, at most 0.98x (16.5 M).
Budget: where the modules would still hold more weights than the blocks they sit beside, all in all
(ConvNeXt-T's 1.7x, Swin-T's 3x: `lite+bias` needed more memory than `full`), every image module's
width is halved, its groups doubled, until they do (up to 4 times; `budget` sets the ratio, 0 turns
it off). The paper's nets (MobileNetV2, ProxylessNAS, EfficientNet-Lite: 0.63x, 0.77x, 0.58x of
their blocks' weights at 128 px) widen inside their blocks and keep its module. Everything in the
branch is written with ops ONNX Runtime 1.19.2 differentiates on the CPU: average pooling as a
constant depthwise conv, GroupNorm as Reshape/ReduceMean/Sub/Mul/Sqrt/Div, bilinear upsampling
(torch's align_corners=False) as two MatMuls with fixed interpolation matrices.
Beside a transformer block (tokens x of shape (T, D_in), output (T, D_out)) the same idea over the
token sequence: y + norm2(relu(norm1(x W1)) W2), W1 of width D_in * expand, both norms LayerNorms
written out, the last one's scale 0 at start. There is no pooling: tokens have no grid to pool
(the class token), so this module stores its input at full size, like any adapter. Beside a block
that pools its tokens (MViTv2's, LeViT's, PiT's: side x side grid tokens in, fewer out, after
the same class tokens) the module first averages the grid read row by row over stride x stride
windows, as the block pools it (token_pooling).
Tokens laid out (T, N, D) (CLIP's transformer, nn.MultiheadAttention's default) take the same
module: it works per token. A block whose output is batched otherwise than its input (GCViT's global
query: images in, windows x images out) gets none; where shape inference cannot relate the two
batch axes (dynamo files name the batch anew after every shuffle), ORT runs the forward at batch 1
and 2 and their sizes are compared.
Channels-last images (Swin keeps (H, W, C) between blocks) get the image module between
Transposes, so it convolves over H and W, not over W and C (`channels_last`; a block may take
one layout and give the other).
Memory: what backward keeps is the branch's own (small, pooled) activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from tinytlc.errors import TinyTLError
from tinytlc.passes.forward._values import LITE, add_initializer, normalize
from tinytlc.passes.forward.blocks import LAYERS, VIEWS, Block, find_blocks, weight_sources
from tinytlc.passes.forward.static_reshapes import dimension


@dataclass
class LiteOptions:
    downsample: int = 2
    kernel: int = 5
    groups: int = 2
    expand: int = 1
    norm: str = "group"          # "group" (GroupNorm, 8 channels per group) or "affine"
    group_channels: int = 8
    final_scale: float = 0.0     # 0: the branch outputs zeros until it trains
    seed: int = 0
    reference: int = 128         # kernels sized as if the first module's input were this wide (0: real sizes)
    crop: bool = True            # make only the taps that reach the map (False: the paper's whole kernels)
    strict_groups: bool = False  # a width `groups` does not divide is an error (else: 1 group there)
    budget: float = 1.0          # image modules' weights at most this times their blocks' (0: no limit)


def reach(size: int, k: int, stride: int) -> tuple[int, int, int, int]:
    """Taps [a, b) of a k-tap kernel (padding k // 2 on each side, `stride`) that ever meet one of
    `size` input pixels, and the paddings (before, after) that keep the output size with only those.
    A 5x5 kernel over a 2x2 map reaches it with its middle 3x3 only: the outer taps multiply padding
    zeros at every output pixel and their gradient is always 0, so the module computes and learns
    exactly what it would with them; they are not made (2.8x fewer weights, and ORT's ConvGrad on
    [8, 464, 2, 2] took 9.0 ms with 5x5 against 3.7 with 3x3)."""
    p = k // 2
    out = (size + 2 * p - k) // stride + 1
    a, b = max(0, p - stride * (out - 1)), min(k, size + p)
    begin = p - a
    end = max(0, stride * (out - 1) + (b - a) - size - begin)
    return a, b, begin, end


def block_layers(block: Block) -> tuple[int | None, int]:
    """(the fewest channels a conv inside `block` gives out on a map larger than 1x1, the weights of
    its convs and matrix products). The first is a bottleneck's inner width (squeeze-and-excite convs
    on 1x1 maps do not count), None if it has no such conv or is not closed (a path to the output
    that does not pass its input); then the second is 0 too."""
    widths, weights, seen, todo = [], 0, set(), [block.output]
    while todo:
        v = todo.pop()
        if v is block.input or v is None or v.is_initializer():
            continue
        node = v.producer()
        if node is None:
            return None, 0  # a graph input other than the block's
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type not in ("Shape", "Size"):  # (a shape is no data: the batch size read from the images)
            todo.extend(node.inputs)
        y = node.outputs[0].shape
        if node.op_type == "Conv" and y is not None and len(y) == 4 and isinstance(y[1], int) and \
                any(isinstance(d, int) and d > 1 for d in list(y)[2:]):
            widths.append(y[1])
        if node.op_type in LAYERS:
            for x in node.inputs[1:2] if node.op_type != "MatMul" else node.inputs[:2]:
                weights += sum(math.prod(int(d) for d in w.shape) for w in _weights_of(x, node.op_type != "MatMul"))
    return min(widths, default=None), weights


def _weights_of(x: ir.Value | None, computed: bool) -> list[ir.Value]:
    """The initializers (not scalars) a layer's weight input `x` is: through views, or (`computed`: a
    conv's or Gemm's weight, which no data reaches) through any ops (BiT's standardized weights)."""
    if computed:
        found = weight_sources(x) or []
    else:
        while x is not None and not x.is_initializer() and x.producer() is not None and x.producer().op_type in VIEWS:
            x = x.producer().inputs[0]
        found = [x] if x is not None and x.is_initializer() else []
    return [v for v in found if v.shape is not None and len(v.shape) >= 1 and math.prod(int(d) for d in v.shape) > 1]


def group_count(cin: int, mid: int, want: float) -> int:
    """The fewest groups, at least `want`, that divide both `cin` and `mid` (else their gcd)."""
    common = math.gcd(cin, mid)
    return next((g for g in range(max(1, math.ceil(want)), common + 1) if common % g == 0), common)


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) matrix M with M @ v = torch's bilinear resize of v (align_corners=False)."""
    m = np.zeros((out_size, in_size), np.float32)
    scale = in_size / out_size
    for i in range(out_size):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        lam = src - i0
        m[i, i0] += 1 - lam
        m[i, i1] += lam
    return m


@dataclass
class LiteResidualPass(ir.passes.InPlacePass):
    options: LiteOptions = field(default_factory=LiteOptions)
    report: list[dict] = field(default_factory=list)   # one entry per module inserted
    blocks: int = 0                                     # blocks found (the first gets no module)
    skipped: list[dict] = field(default_factory=list)   # blocks that got none, and why
    factor: float = 1.0                                 # image modules' widths scaled by this (the budget's)

    def __post_init__(self):
        super().__init__()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        rng = np.random.default_rng(self.options.seed)
        self.report, self.skipped = [], []
        blocks = find_blocks(graph)
        self.blocks = len(blocks)
        spliced: dict[int, ir.Value] = {}  # a block output -> that output plus its lite branch
        reference = self.options.reference
        batch = graph.inputs[0].shape[0]
        measured = _measure(model, {i: b for i, b in enumerate(blocks) if i and _batch_unrelated(b, batch)})
        plan = []  # (index, block, why no module, the reference size its kernel is chosen by)
        for index, block in enumerate(blocks[1:], start=1):
            plan.append((index, block, _unsupported(block, batch, measured.get(index)), reference))
            reference //= max(1, block.stride)
        self.factor = self._width_factor([(b, size) for _, b, why, size in plan if not why and len(b.input.shape) == 4])
        for index, block, why, size in plan:
            block.input = spliced.get(id(block.input), block.input)  # a later block reads the sum
            if why:
                self.skipped.append({"block": index, "kind": block.kind, "reason": why})
                continue
            if len(block.input.shape) == 4:
                report, out = self._splice(graph, block, f"lite{index}", rng, size)
            else:
                report, out = self._splice_tokens(graph, block, f"lite{index}", rng)
            spliced[id(block.output)] = out
            self.report.append({"index": index, **report})
        return ir.passes.PassResult(model, bool(self.report))

    def _width_factor(self, blocks: list[tuple[Block, int]]) -> float:
        """1, or the largest 1 / 2^n (n <= 4) at which the image modules beside `blocks` hold no more
        weights than those blocks (options.budget times): the paper's module beside ConvNeXt's and
        Swin's blocks held 1.7x and 3x their weights, so that `lite+bias` needed more memory than `full`."""
        blocks = [(b, size, w) for b, size in blocks for w in [block_layers(b)[1]] if w]  # (those it can weigh)
        if not self.options.budget or not blocks:
            return 1.0
        weights, factor = self.options.budget * sum(w for _, _, w in blocks), 1.0
        while factor > 1 / 16 and sum(self._geometry(b, size, factor)["params"] for b, size, _ in blocks) > weights:
            factor /= 2
        return factor

    def _geometry(self, block: Block, reference: int, factor: float | None = None) -> dict:
        """A module's sizes beside an image `block`, without building it: its kernel, the taps that
        reach the map, its width and groups, its parameter count."""
        o = self.options
        last, last_out = channels_last(block.input), channels_last(block.output)
        _, cin, hin, win = [block.input.shape[i] for i in ((0, 3, 1, 2) if last else range(4))]
        _, cout, hout, wout = [block.output.shape[i] for i in ((0, 3, 1, 2) if last_out else range(4))]
        d = o.downsample if min(hin, win) >= o.downsample else 1  # a 1x1 input cannot be pooled further
        h, w = hin // d, win // d
        k, pooled = o.kernel, (max(1, reference // o.downsample) if reference else min(h, w))
        while k > pooled and k > 1:
            k -= 2
        narrowest = block_layers(block)[0]
        width = max(1, int(min(cin, narrowest or cin) * (self.factor if factor is None else factor)))
        if width >= cin:  # the paper's module
            mid, groups = cin * o.expand, o.groups if cin % o.groups == 0 else 1
        else:  # no wider than the block's narrowest layer (or the budget), each group as wide as the paper's
            mid, groups = width * o.expand, group_count(cin, width * o.expand, o.groups * cin / width)
        # the outer taps of a kernel wider than its map meet only padding: keep the ones that reach it
        whole = (0, k, k // 2, k // 2)
        rows, cols = (reach(n, k, block.stride) if o.crop else whole for n in (h, w))
        params = mid * (cin // groups) * (rows[1] - rows[0]) * (cols[1] - cols[0]) + cout * mid + 2 * (mid + cout)
        return {"last": last, "last_out": last_out, "cin": cin, "hin": hin, "win": win, "cout": cout, "hout": hout,
                "wout": wout, "d": d, "k": k, "rows": rows, "cols": cols, "mid": mid, "groups": groups,
                "params": params}

    def _param(self, graph, name, array, role="weight"):
        v = add_initializer(graph, name, array)
        v.meta[LITE] = role
        return v

    def _norm(self, graph, t: ir.tape.Tape, x, channels, h, w, name, scale, tokens: bool = False, final=False):
        """GroupNorm over (C, H, W) images, or LayerNorm over the channels of (T, D) tokens."""
        o = self.options
        shape = (channels,) if tokens else (channels, 1, 1)
        gamma = self._param(graph, f"{name}.weight", np.full(shape, scale, np.float32), "scale")
        beta = self._param(graph, f"{name}.bias", np.zeros(shape, np.float32), "final-shift" if final else "shift")
        if o.norm == "group":
            c = lambda n, a: add_initializer(graph, f"{name}.{n}", np.asarray(a), constant=True)  # noqa: E731
            if tokens:
                g = x
            else:
                groups = max(1, channels // o.group_channels) if channels % o.group_channels == 0 else 1
                g = t.op("Reshape", [x, c("grouped", np.array([0, groups, -1], np.int64))])
            x = normalize(graph, t, g, [2], 1e-5)
            if not tokens:
                x = t.op("Reshape", [x, c("shape", np.array([0, channels, h, w], np.int64))])
        return t.op("Add", [t.op("Mul", [x, gamma]), beta])

    def _splice(self, graph: ir.Graph, block: Block, name: str, rng, reference: int) -> tuple[dict, ir.Value]:
        o = self.options
        g = self._geometry(block, reference)
        last, last_out, cin, hin, win, cout, hout, wout, d, k, mid, groups = (g[n] for n in (
            "last", "last_out", "cin", "hin", "win", "cout", "hout", "wout", "d", "k", "mid", "groups"))
        (a0, b0, top, bottom), (a1, b1, left, right) = g["rows"], g["cols"]
        if cin % o.groups and o.strict_groups:
            raise TinyTLError(f"--lite-groups {o.groups} does not divide the width {cin} of block {name[4:]} "
                              f"({block.kind} {list(block.input.shape)[1:]}); choose a divisor of every block's width")
        t = ir.tape.Tape(graph)
        c = lambda n, a: add_initializer(graph, f"{name}.{n}", np.asarray(a), constant=True)  # noqa: E731
        x = t.op("Transpose", [block.input], attributes={"perm": [0, 3, 1, 2]}) if last else block.input
        h, w = hin, win
        if d > 1:
            x = _average_pool(t, c, x, cin, d)
            h, w = hin // d, win // d
        fan = (cin // groups) * k * k
        init = rng.normal(0, np.sqrt(2.0 / fan), (mid, cin // groups, k, k)).astype(np.float32)
        w1 = self._param(graph, f"{name}.conv1.weight", np.ascontiguousarray(init[:, :, a0:b0, a1:b1]))
        pads = [top, left, bottom, right]
        x = t.op("Conv", [x, w1], attributes={"kernel_shape": [b0 - a0, b1 - a1], "strides": [block.stride] * 2,
                                             "pads": pads, "group": groups})
        h, w = (h + 2 * (k // 2) - k) // block.stride + 1, (w + 2 * (k // 2) - k) // block.stride + 1
        x = t.op("Relu", [self._norm(graph, t, x, mid, h, w, f"{name}.norm1", 1.0)])
        w2 = self._param(graph, f"{name}.conv2.weight",
                         rng.normal(0, np.sqrt(1.0 / mid), (cout, mid, 1, 1)).astype(np.float32))
        x = t.op("Conv", [x, w2], attributes={"kernel_shape": [1, 1]})
        x = self._norm(graph, t, x, cout, h, w, f"{name}.norm2", o.final_scale, final=True)
        if (h, w) != (hout, wout):
            x = t.op("MatMul", [x, c("up_w", bilinear_matrix(wout, w).T.copy())])
            x = t.op("MatMul", [c("up_h", bilinear_matrix(hout, h)), x])
        if last_out:
            x = t.op("Transpose", [x], attributes={"perm": [0, 2, 3, 1]})
        out = _attach(graph, t, block.output, x)
        params = g["params"]
        return {"block": block.kind + " (channels last)" * (last or last_out), "input": [cin, hin, win],
                "output": [cout, hout, wout], "width": mid, "groups": groups, "stride": block.stride,
                "kernel": k, "taps": [b0 - a0, b1 - a1], "pads": pads,
                "pooled": [hin // d, win // d] if d > 1 else [hin, win], "params": params}, out

    def _splice_tokens(self, graph: ir.Graph, block: Block, name: str, rng) -> tuple[dict, ir.Value]:
        ax = batch_axis(block.input.shape)
        tokens, out_tokens = block.input.shape[1 - ax], block.output.shape[1 - ax]
        din, dout = block.input.shape[2], block.output.shape[2]
        mid = din * self.options.expand
        t = ir.tape.Tape(graph)
        x, stride = block.input, 1
        if out_tokens != tokens:  # pooled as the block pools its grid (_unsupported checked it can be)
            prefix, side, stride = token_pooling(tokens, out_tokens)
            x = self._pool_tokens(graph, t, x, name, prefix, side, stride, din)
        w1 = self._param(graph, f"{name}.fc1.weight", rng.normal(0, np.sqrt(2.0 / din), (din, mid)).astype(np.float32))
        x = t.op("Relu", [self._norm(graph, t, t.op("MatMul", [x, w1]), mid, 0, 0, f"{name}.norm1", 1.0,
                                     tokens=True)])
        w2 = self._param(graph, f"{name}.fc2.weight", rng.normal(0, np.sqrt(1.0 / mid), (mid, dout)).astype(np.float32))
        x = self._norm(graph, t, t.op("MatMul", [x, w2]), dout, 0, 0, f"{name}.norm2", self.options.final_scale,
                       tokens=True, final=True)
        out = _attach(graph, t, block.output, x)
        params = int(din * mid + mid * dout + 2 * (mid + dout))
        return {"block": block.kind, "input": [tokens, din], "output": [out_tokens, dout], "stride": stride, "kernel": 1,
                "pooled": [out_tokens], "params": params}, out

    def _pool_tokens(self, graph, t: ir.tape.Tape, x: ir.Value, name: str, prefix: int, side: int, stride: int,
                     dim: int) -> ir.Value:
        """(N, prefix + side^2, D) tokens -> (N, prefix + out^2, D): the grid, read row by row, averaged
        over stride x stride windows (end padding where out * stride > side); the prefix (a class
        token) kept as it is."""
        c = lambda n, a: add_initializer(graph, f"{name}.{n}", np.asarray(a), constant=True)  # noqa: E731
        tokens = prefix + side * side
        grid = x if not prefix else t.op("Slice", [x, c("grid_start", [prefix]), c("grid_end", [tokens]), c("axis", [1])])
        grid = t.op("Transpose", [t.op("Reshape", [grid, c("grid", [0, side, side, dim])])],
                    attributes={"perm": [0, 3, 1, 2]})
        out = -(-side // stride)
        grid = _average_pool(t, c, grid, dim, stride, end_pad=out * stride - side)
        grid = t.op("Reshape", [t.op("Transpose", [grid], attributes={"perm": [0, 2, 3, 1]}),
                                c("tokens", [0, out * out, dim])])
        if not prefix:
            return grid
        head = t.op("Slice", [x, c("prefix_start", [0]), c("prefix_end", [prefix]), c("axis", [1])])
        return t.op("Concat", [head, grid], attributes={"axis": 1})


def _average_pool(t: ir.tape.Tape, c, x: ir.Value, channels: int, size: int, end_pad: int = 0) -> ir.Value:
    """size x size average pooling at stride size, as a constant depthwise Conv (ORT's AveragePoolGrad
    fails with a symbolic batch; avgpool_to_conv.py); `end_pad` zeros after the map count."""
    return t.op("Conv", [x, c("pool", np.full((channels, 1, size, size), 1.0 / size ** 2, np.float32))],
                attributes={"kernel_shape": [size, size], "strides": [size, size], "group": channels,
                            **({"pads": [0, 0, end_pad, end_pad]} if end_pad else {})})


def token_pooling(tokens: int, out_tokens: int) -> tuple[int, int, int] | None:
    """(prefix, side, stride) when a block pools a square grid of tokens, side x side to
    ceil(side / stride) on a side, after `prefix` tokens it keeps (a class token, registers: 0 to 4;
    MViTv2's and LeViT's pooling blocks, PiT's); None otherwise."""
    for prefix in range(5):
        side, out = math.isqrt(max(0, tokens - prefix)), math.isqrt(max(0, out_tokens - prefix))
        if side * side != tokens - prefix or out * out != out_tokens - prefix or not 0 < out < side:
            continue
        stride = -(-side // out)
        if -(-side // stride) == out:
            return prefix, side, stride
    return None


# ops that keep a tensor's layout, and ops that tell it: an NCHW op, or one over the last axis
_SAME_LAYOUT = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "Identity", "Pad", "Slice", "Concat",
                "Dropout", "Neg", "Erf", "Tanh"}
_NCHW = {"Conv", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
         "InstanceNormalization"}


def _flattened(x: ir.Value, y: ir.Value) -> bool | None:
    """A Reshape of 4-D x into tokens: True for (N, H*W, C) (channels last, VOLO's reshape(B, -1, C)),
    False for (N, C, H*W) (a ViT's flatten(2)), None for anything else."""
    s, t = x.shape, y.shape
    if s is None or t is None or len(s) != 4 or len(t) != 3 or not all(isinstance(d, int) for d in list(s)[1:] + list(t)[1:]):
        return None
    if list(t)[1:] == [s[1], s[2] * s[3]]:
        return False
    return True if list(t)[1:] == [s[1] * s[2], s[3]] else None


def channels_last(x: ir.Value) -> bool:
    """A 4-D tensor laid out (N, H, W, C): its readers (looked through elementwise ops) reach a
    LayerNormalization over the last axis, a MatMul, a Transpose to NCHW or a Reshape into
    (N, H*W, C) tokens before any NCHW op."""
    seen, todo = set(), [x]
    while todo:
        v = todo.pop()
        for user, i in v.uses():
            if id(user) in seen or user.meta.get(LITE):
                continue
            seen.add(id(user))
            if user.op_type in _NCHW:
                return False
            if user.op_type == "Transpose":
                return tuple(user.attributes.get_ints("perm", [])) == (0, 3, 1, 2)
            if user.op_type == "Reshape" and i == 0 and (tokens := _flattened(v, user.outputs[0])) is not None:
                return tokens
            if (user.op_type == "LayerNormalization" and user.attributes.get_int("axis", -1) in (-1, 3)) or \
                    (user.op_type == "MatMul" and i == 0):
                return True
            if user.op_type in _SAME_LAYOUT:
                todo.extend(o for o in user.outputs if o.shape is not None and len(o.shape) == 4)
    return False


def batch_axis(shape: ir.Shape) -> int:
    """The axis of a block's input or output that holds the images' batch: 0, or 1 for tokens laid
    out (T, N, D) as nn.MultiheadAttention takes them by default (CLIP's transformer). The token
    module works per token over the last axis, so either layout takes it unchanged."""
    return 1 if len(shape) == 3 and isinstance(shape[0], int) and not isinstance(shape[1], int) else 0


def _shapes_known(block: Block) -> bool:
    x, y = block.input.shape, block.output.shape
    return x is not None and y is not None and len(x) == len(y) and len(x) in (3, 4) and \
        all(isinstance(d, int) for i, d in enumerate(x) if i != batch_axis(x)) and \
        all(isinstance(d, int) for i, d in enumerate(y) if i != batch_axis(y))


def _batch_sizes(block: Block, batch) -> list[tuple[int | None, int | None]]:
    """(input's, output's) size along the batch axis at batch 1 and at batch 2, where shape
    inference and static_reshapes.dimension can tell."""
    ax, ay = batch_axis(block.input.shape), batch_axis(block.output.shape)
    return [(dimension(block.input, ax, b, batch), dimension(block.output, ay, b, batch)) for b in (1, 2)]


def _batch_unrelated(block: Block, batch) -> bool:
    """Whether shape inference leaves the block's input and output batch axes unrelated: two
    symbols, at least one of which cannot be followed (dynamo files name the batch anew after
    every shuffle)."""
    if not _shapes_known(block):
        return False
    x, y = block.input.shape, block.output.shape
    return str(x[batch_axis(x)]) != str(y[batch_axis(y)]) and None in sum(_batch_sizes(block, batch), ())


def _measure(model: ir.Model, blocks: dict[int, Block]) -> dict[int, list[tuple[int, int]]]:
    """The input's and output's size along the batch axis of each of `blocks`, measured: the
    forward run by ORT at batch 1 and at batch 2 on random images. {} if it does not run."""
    if not blocks:
        return {}
    import onnx
    import onnxruntime as ort
    proto = ir.serde.serialize_model(model)
    values = list({v.name: v for b in blocks.values() for v in (b.input, b.output)}.values())  # (one output each)
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(v.name, (v.dtype or ir.DataType.FLOAT).value, None)
                              for v in values)
    image = model.graph.inputs[0]
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        runs = [session.run(None, {image.name: np.random.default_rng(0).random([n, *list(image.shape)[1:]],
                                                                              np.float32)}) for n in (1, 2)]
    except Exception:  # (the trial step at the end of compile names what ORT cannot run)
        return {}
    at = {v.name: k for k, v in enumerate(values)}
    return {i: [(run[at[b.input.name]].shape[batch_axis(b.input.shape)],
                 run[at[b.output.name]].shape[batch_axis(b.output.shape)]) for run in runs] for i, b in blocks.items()}


def _unsupported(block: Block, batch: ir.SymbolicDim, measured: list | None) -> str | None:
    """Why no module fits beside this block, or None. `batch`: the image input's batch dimension;
    `measured`: the block's batch sizes as _measure found them, where shape inference cannot tell."""
    x, y = block.input.shape, block.output.shape
    if x is None or y is None:
        return "shapes unknown after shape inference"
    if len(x) not in (3, 4) or len(x) != len(y):
        return f"input rank {len(x)}, output rank {len(y)}: a module needs images (4-D) or tokens (3-D)"
    if not _shapes_known(block):
        return "shapes unknown after shape inference"
    ax, ay = batch_axis(x), batch_axis(y)
    # the branch, made from the input, is added to the output: their batch axes must be one size
    # (not so for GCViT's global query: images in, windows x images out)
    sizes = measured or _batch_sizes(block, batch)
    if ax != ay or (str(x[ax]) != str(y[ay]) and any(i is None or i != o for i, o in sizes)):
        return f"its output's batch axis ({y[ay]}) is not its input's ({x[ax]})"
    if len(x) == 3 and x[1 - ax] != y[1 - ay] and (ax != 0 or token_pooling(x[1], y[1]) is None):
        return f"{x[1 - ax]} tokens in, {y[1 - ay]} out"
    return None


def _attach(graph: ir.Graph, t: ir.tape.Tape, y: ir.Value, branch: ir.Value) -> ir.Value:
    """y + branch in place of y for every reader of y (the graph output included)."""
    readers = list(y.uses())
    for node in t.nodes:  # the side branch (blocks.py looks past it: it is no part of the network's blocks)
        node.meta[LITE] = True
    out = t.op("Add", [y, branch])
    out.shape, out.type = y.shape, y.type
    graph.insert_after(y.producer(), t.nodes)
    for user, i in readers:
        user.replace_input_with(i, out)
    for i, v in enumerate(graph.outputs):
        if v is y:
            graph.outputs[i] = out
    return out
