"""Lite residual modules (TinyTL-L): a small trainable side branch beside each block but the first.

Blocks are found from the graph's structure (networkx over the ONNX graph), not from names:
- an inverted bottleneck: [1x1 conv, activation,] depthwise conv, activation, 1x1 conv
  [+ the block input]; its stride is the depthwise conv's;
- a plain residual block: Add(x, f(x)) where x reaches f(x) through the graph.
Beside each block B with input x (C_in, H, W) and output y (C_out, H', W') the pass adds
    y + up(norm2(conv1x1(relu(norm1(gconv_kxk(avgpool2x2(x)))))))
with a k x k group conv (groups 2, width C_in * expand, the block's stride, k = 5 shrunk by 2 while it
exceeds the pooled size), GroupNorm (8 channels per group), and a final norm whose scale starts at 0,
so the network computes exactly what it did before training starts. Everything in the branch is
written with ops ONNX Runtime 1.19.2 differentiates on the CPU: average pooling as a constant
depthwise conv, GroupNorm as Reshape/ReduceMean/Sub/Mul/Sqrt/Div, bilinear upsampling
(torch's align_corners=False) as two MatMuls with fixed interpolation matrices.
Memory: what backward keeps is the branch's own (small, pooled) activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import add_initializer, const_array

LITE = "tinytlc.lite"  # Value.meta: a parameter of a lite residual module
ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "HardSwish", "Sigmoid"}


@dataclass
class Block:
    input: ir.Value
    output: ir.Value
    stride: int
    kind: str


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


def _conv(node: ir.Node | None, kernel: int | None = None, depthwise: bool | None = None) -> bool:
    if node is None or node.op_type != "Conv":
        return False
    w = node.inputs[1]
    if w is None or w.shape is None:
        return False
    group = node.attributes.get_int("group", 1)
    is_dw = group > 1 and w.shape[1] == 1
    if depthwise is not None and is_dw != depthwise:
        return False
    return kernel is None or list(w.shape[2:]) == [kernel, kernel]


def _skip_activation(v: ir.Value) -> ir.Value:
    node = v.producer()
    return node.inputs[0] if node is not None and node.op_type in ACTIVATIONS else v


def find_blocks(graph: ir.Graph) -> list[Block]:
    """Blocks in graph order: inverted bottlenecks and plain residual blocks."""
    g = nx.DiGraph()
    for node in graph:
        for i in node.inputs:
            if i is not None:
                for o in node.outputs:
                    g.add_edge(i.name, o.name)
    blocks, covered = [], set()
    for dw in graph:
        if not _conv(dw, depthwise=True):
            continue
        expand = _skip_activation(dw.inputs[0]).producer()
        x = expand.inputs[0] if _conv(expand, kernel=1, depthwise=False) else dw.inputs[0]  # else expand 1
        post = dw.outputs[0]
        act = next((u for u, _ in post.uses() if u.op_type in ACTIVATIONS), None)
        post = act.outputs[0] if act is not None else post
        project = next((u for u, _ in post.uses() if _conv(u, kernel=1, depthwise=False)), None)
        if project is None:
            continue
        y = project.outputs[0]
        add = next((u for u, _ in y.uses() if u.op_type == "Add" and x in u.inputs), None)
        if add is not None:
            y = add.outputs[0]
            covered.add(add.name)
        strides = dw.attributes.get_ints("strides", [1, 1])
        blocks.append(Block(x, y, int(strides[0]), "inverted-bottleneck"))
    for add in graph:
        if add.op_type != "Add" or add.name in covered or len(add.inputs) != 2:
            continue
        a, b = add.inputs
        if a is None or b is None or a.name not in g or b.name not in g:
            continue
        for x, fx in ((a, b), (b, a)):
            if x.producer() is not None and nx.has_path(g, x.name, fx.name) and x.shape == add.outputs[0].shape:
                blocks.append(Block(x, add.outputs[0], 1, "residual"))
                break
    order = {n.outputs[0].name: i for i, n in enumerate(graph) if n.outputs}
    return sorted(blocks, key=lambda b: order.get(b.output.name, 0))


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
    report: list[dict] = field(default_factory=list)

    def __post_init__(self):
        super().__init__()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        rng = np.random.default_rng(self.options.seed)
        self.report = []
        blocks = find_blocks(graph)
        spliced: dict[int, ir.Value] = {}  # a block output -> that output plus its lite branch
        for index, block in enumerate(blocks[1:], start=1):
            block.input = spliced.get(id(block.input), block.input)  # a later block reads the sum
            report, out = self._splice(graph, block, f"lite{index}", rng)
            spliced[id(block.output)] = out
            self.report.append(report)
        return ir.passes.PassResult(model, bool(self.report))

    def _param(self, graph, name, array):
        v = add_initializer(graph, name, array)
        v.meta[LITE] = True
        return v

    def _norm(self, graph, t: ir.tape.Tape, x, channels, h, w, name, scale):
        o = self.options
        gamma = self._param(graph, f"{name}.weight", np.full(channels, scale, np.float32).reshape(-1, 1, 1))
        beta = self._param(graph, f"{name}.bias", np.zeros((channels, 1, 1), np.float32))
        if o.norm == "group":
            groups = max(1, channels // o.group_channels) if channels % o.group_channels == 0 else 1
            c = lambda n, a: add_initializer(graph, f"{name}.{n}", np.asarray(a), constant=True)  # noqa: E731
            g = t.op("Reshape", [x, c("grouped", np.array([0, groups, -1], np.int64))])
            # axes as an attribute: the graph is opset 17 (ReduceMean takes an axes input from 18)
            mean = t.op("ReduceMean", [g], attributes={"axes": [2], "keepdims": 1})
            d = t.op("Sub", [g, mean])
            var = t.op("ReduceMean", [t.op("Mul", [d, d])], attributes={"axes": [2], "keepdims": 1})
            std = t.op("Sqrt", [t.op("Add", [var, c("eps", np.array(1e-5, np.float32))])])
            x = t.op("Reshape", [t.op("Div", [d, std]), c("shape", np.array([0, channels, h, w], np.int64))])
        return t.op("Add", [t.op("Mul", [x, gamma]), beta])

    def _splice(self, graph: ir.Graph, block: Block, name: str, rng) -> tuple[dict, ir.Value]:
        o = self.options
        _, cin, hin, win = block.input.shape
        _, cout, hout, wout = block.output.shape
        t = ir.tape.Tape(graph)
        c = lambda n, a: add_initializer(graph, f"{name}.{n}", np.asarray(a), constant=True)  # noqa: E731
        d = o.downsample if min(hin, win) >= o.downsample else 1  # a 1x1 input cannot be pooled further
        x = block.input
        h, w = hin, win
        if d > 1:
            x = t.op("Conv", [x, c("pool", np.full((cin, 1, d, d), 1.0 / (d * d), np.float32))],
                     attributes={"kernel_shape": [d, d], "strides": [d, d], "group": cin})
            h, w = hin // d, win // d
        k = o.kernel
        while k > min(h, w) and k > 1:
            k -= 2
        mid, groups = cin * o.expand, o.groups if cin % o.groups == 0 else 1
        fan = (cin // groups) * k * k
        w1 = self._param(graph, f"{name}.conv1.weight",
                         rng.normal(0, np.sqrt(2.0 / fan), (mid, cin // groups, k, k)).astype(np.float32))
        x = t.op("Conv", [x, w1], attributes={"kernel_shape": [k, k], "strides": [block.stride] * 2,
                                             "pads": [k // 2] * 4, "group": groups})
        h, w = (h + 2 * (k // 2) - k) // block.stride + 1, (w + 2 * (k // 2) - k) // block.stride + 1
        x = t.op("Relu", [self._norm(graph, t, x, mid, h, w, f"{name}.norm1", 1.0)])
        w2 = self._param(graph, f"{name}.conv2.weight",
                         rng.normal(0, np.sqrt(1.0 / mid), (cout, mid, 1, 1)).astype(np.float32))
        x = t.op("Conv", [x, w2], attributes={"kernel_shape": [1, 1]})
        x = self._norm(graph, t, x, cout, h, w, f"{name}.norm2", o.final_scale)
        if (h, w) != (hout, wout):
            x = t.op("MatMul", [x, c("up_w", bilinear_matrix(wout, w).T.copy())])
            x = t.op("MatMul", [c("up_h", bilinear_matrix(hout, h)), x])
        readers = list(block.output.uses())
        out = t.op("Add", [block.output, x])
        out.shape, out.type = block.output.shape, block.output.type
        producer = block.output.producer()
        graph.insert_after(producer, t.nodes)
        for user, i in readers:
            user.replace_input_with(i, out)
        for i, v in enumerate(graph.outputs):
            if v is block.output:
                graph.outputs[i] = out
        params = int(sum(np.prod(v.shape) for v in (w1, w2)) + 2 * (mid + cout))
        return {"block": block.kind, "input": [cin, hin, win], "output": [cout, hout, wout], "stride": block.stride,
                "kernel": k, "pooled": [hin // d, win // d] if d > 1 else [hin, win], "params": params}, out
