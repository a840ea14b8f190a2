"""Blocks of a network, found from its dataflow graph: no op patterns, no names.

1. The data path: every float tensor computed from the image. Shape arithmetic is not data
   (Shape and Size outputs carry no pixels), so a reshape to `x.size()` does not tie layers together.
2. Cuts: the tensors every path from the image to the logits passes through (the dominators of the
   logits in the data-path graph, from networkx). Between two consecutive cuts lies a segment: one
   op of a plain chain, or a region where paths fork and join (a residual block with an identity or
   projection shortcut, an Inception or dense block, a ShuffleNet unit, a transformer sub-block).
3. Layers: ops whose weight is a parameter (Conv, Gemm, MatMul; the classifier excluded). A region
   with a layer is a block. A region without one (a norm, SiLU or GELU written out as several ops)
   and a gate (squeeze-and-excitation: a side path pooled to 1x1 that scales the main path) belong to
   the block around them.
4. Chains of single layers (a conv over split channels, concatenated, is one: MixNet's) are
   grouped: a depthwise conv takes the plain conv before it (expand, or the stem; not a narrowing
   1x1, which projects the block before) and the 1x1 conv after it (project), an inverted
   bottleneck; a group that ends widening (a depthwise conv then an expanding 1x1, MobileNetV4's
   ExtraDW; a widening dense conv, a FusedMBConv) runs on to the next narrowing 1x1; a depthwise
   conv left alone joins a chain before it that ends in a 1x1 (RepLKNet's stem); any other layer
   is a block of its own (a VGG conv, a DenseNet transition). Segments without a layer join the
   block before.
5. The stem (single layers before the first block of several layers) joins that block, so "every
   block but the first" skips the stem and the first block together, as the paper does; trailing
   1x1 layers after the last spatial op are the head (MobileNet's 1x1 conv to 1280), not a block.
6. Parallel streams: HRNet keeps a full- and a half-resolution stream apart from a transition to the
   head, exchanging only at fusions, so no single tensor separates the blocks inside either stream
   and the whole stage is one segment. A fork-and-join region that is no residual block and whose
   join takes two or more paths besides its entry is looked into: along each path, the cuts are the
   dominators of the path's end back to the entry (step 2 within the region), and a segment between
   two of them whose paths meet in an Add of its own input (an identity shortcut), with no tensor
   read outside it, is a residual block (its ReLU included); any other fork-and-join segment there is
   looked into the same way (a fusion's output joins both streams). The stage stays a block too.
A block ends at the last cut of its span with the rank of its input, never after a global pool
or a Slice of tokens, nor at a Transpose of its output; a token block at the last one that still
holds its input's tokens (not after a class token is concatenated, ConViT, or its pixels are
regrouped into patches, TNT), where a lite module fits.
Blocks are listed by where their input is computed (a stage before the blocks inside it).
Lite residual modules' side branches are looked past: the blocks are those of the network itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import onnx_ir as ir

from tinytlc.passes.forward._values import LITE, const_array, is_constant

LAYERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
VIEWS = {"Transpose", "Reshape", "Slice", "Unsqueeze", "Squeeze", "Identity", "Cast", "Flatten", "Split"}
POOLS = {"MaxPool", "AveragePool", "LpPool"}
NOT_DATA = {"Shape", "Size"}
HEAD_OPS = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "Flatten", "Gather"}


@dataclass
class Block:
    input: ir.Value
    output: ir.Value
    stride: int
    kind: str               # residual, residual-projection, concat, inverted-bottleneck, conv, ...
    merge: ir.Node | None = None    # where the paths of a fork-and-join block meet (the residual Add)


def param_source(value: ir.Value | None) -> ir.Value | None:
    """The parameter `value` is a view of (through Transpose, Reshape, Slice...), else None."""
    while value is not None and not value.is_initializer():
        node = value.producer()
        if node is None or node.op_type not in VIEWS:
            return None
        value = node.inputs[0]
    return value if value is not None and not is_constant(value) else None


def is_layer(node: ir.Node) -> bool:
    if node.op_type not in LAYERS:
        return False
    weights = node.inputs[1:2] if node.op_type != "MatMul" else node.inputs[:2]
    return any(param_source(w) is not None or _made_from_parameters(w) for w in weights)


def _made_from_parameters(value: ir.Value | None) -> bool:
    """A weight computed from parameters alone (a standardised or weight-normalised conv weight)."""
    sources = weight_sources(value)
    return sources is not None and any(not is_constant(v) for v in sources)


def weight_sources(value: ir.Value | None) -> list[ir.Value] | None:
    """The initializers `value` is computed from, or None if a graph input (data) reaches it."""
    seen, stack, found = set(), [value], []
    while stack:
        v = stack.pop()
        if v is None or id(v) in seen:
            continue
        seen.add(id(v))
        if v.is_initializer():
            found.append(v)
        elif v.producer() is None:
            return None  # a graph input: data
        else:
            stack.extend(v.producer().inputs)
    return found


def is_spatial(node: ir.Node) -> bool:
    """A conv with a kernel larger than 1x1 or a stride, or a pooling window."""
    if node.op_type in ("Conv", "ConvTranspose") and node.inputs[1] is not None and node.inputs[1].shape is not None:
        kernel = [d for d in node.inputs[1].shape[2:]]
        return any(k != 1 for k in kernel) or any(s != 1 for s in node.attributes.get_ints("strides", [1]))
    return node.op_type in POOLS


def is_depthwise(node: ir.Node) -> bool:
    w = node.inputs[1] if node.op_type == "Conv" else None
    return w is not None and w.shape is not None and node.attributes.get_int("group", 1) > 1 and w.shape[1] == 1


def _is_pointwise(node: ir.Node) -> bool:
    return node.op_type in ("Gemm", "MatMul") or (node.op_type == "Conv" and not is_spatial(node)
                                                  and node.attributes.get_int("group", 1) == 1)


def _widths(seg: "_Segment", sign: int, pointwise: bool = True) -> bool:
    """Whether the segment is an ungrouped conv (1x1 unless not `pointwise`) that widens (sign 1) or
    narrows (-1) the channels."""
    node = seg.layers[0] if seg.kind == "layer" else None
    if node is None or node.op_type != "Conv" or node.attributes.get_int("group", 1) != 1 or \
            (pointwise and not _is_pointwise(node)):
        return False
    w = node.inputs[1].shape
    return w is not None and len(w) == 4 and isinstance(w[0], int) and isinstance(w[1], int) and \
        (w[0] - w[1]) * sign > 0


def _rank(v: ir.Value) -> int | None:
    return len(v.shape) if v.shape is not None else None


def _is_gate(node: ir.Node, data: set) -> bool:
    """Mul(x, s) with s of spatial size 1 (squeeze-and-excitation)."""
    if node.op_type != "Mul":
        return False
    for v in node.inputs:
        if v in data and v.shape is not None and len(v.shape) == 4 and list(v.shape)[2:] == [1, 1]:
            return True
    return False


@dataclass
class _Segment:
    start: int                    # index of the cut it starts at
    nodes: list[ir.Node]
    layers: list[ir.Node]
    kind: str                     # "branch", "layer", or "other" (no layer, or a gate)
    merge: ir.Node | None = None


def _data_graph(graph: ir.Graph) -> tuple[nx.DiGraph, set]:
    image = graph.inputs[0]
    g, data = nx.DiGraph(), {image}
    g.add_node(image)
    for node in graph:
        if node.op_type in NOT_DATA or node.meta.get(LITE):
            continue
        ins = [i for i in node.inputs if i is not None and i in data]
        if not ins:
            continue
        for o in node.outputs:
            if o.dtype is not None and not o.dtype.is_floating_point():
                continue
            data.add(o)
            for i in ins:
                g.add_edge(i, o)
    return g, data


def _segments(graph: ir.Graph, classifier: ir.Node | None) -> tuple[list[ir.Value], list[_Segment], tuple]:
    """The cuts and the segments between them; and (data-path graph, data, dominators) for _inner."""
    g, data = _data_graph(graph)
    image, logits = graph.inputs[0], graph.outputs[0]
    if logits not in g:
        return [], [], (g, data, {})
    idom = nx.immediate_dominators(g, image)
    cuts = _chain(idom, logits, image)
    on_path = nx.ancestors(g, logits) | {logits}
    return cuts, _split(list(graph), cuts, idom, on_path, data, classifier), (g, data, idom)


def _chain(idom: dict, v: ir.Value, root: ir.Value) -> list[ir.Value]:
    """The dominators of v from root to v itself."""
    chain = [v]
    while chain[-1] is not root:
        chain.append(idom[chain[-1]])
    return chain[::-1]


def _split(nodes: list[ir.Node], cuts: list[ir.Value], idom: dict, on_path: set, data: set,
           classifier: ir.Node | None) -> list[_Segment]:
    """The segments between consecutive cuts: a node (with an output on the path) belongs to the
    segment of the nearest cut that dominates its output."""
    index = {id(c): i for i, c in enumerate(cuts)}
    members: list[list[ir.Node]] = [[] for _ in cuts[1:]]
    for node in nodes:
        out = next((o for o in node.outputs if o in on_path), None)
        if out is None or node.op_type in NOT_DATA:
            continue
        if id(out) in index:
            members[index[id(out)] - 1].append(node)
            continue
        v = out
        while id(v) not in index:
            v = idom[v]
        members[index[id(v)]].append(node)
    segments = []
    for start, nodes in enumerate(members):
        layers = [n for n in nodes if n is not classifier and is_layer(n)]
        merges = [n for n in nodes if len({id(i) for i in n.inputs if i is not None and i in data}) >= 2]
        if layers and merges and _mixed_conv(layers, merges):
            segments.append(_Segment(start, nodes, layers, "layer"))
        elif layers and merges and not all(_is_gate(m, data) for m in merges):
            segments.append(_Segment(start, nodes, layers, "branch", merges[-1]))
        elif layers and not merges and len(layers) == 1:
            segments.append(_Segment(start, nodes, layers, "layer"))
        elif layers and not merges:  # several layers with no fork: treat as a block
            segments.append(_Segment(start, nodes, layers, "branch"))
        else:
            segments.append(_Segment(start, nodes, [], "other"))
    return segments


def _mixed_conv(layers: list[ir.Node], merges: list[ir.Node]) -> bool:
    """Channels split, each part convolved once, concatenated along channels (timm's MixedConv2d,
    MixNet's kernels of several sizes): one conv layer, a grouped conv in disguise, not a block."""
    concat = merges[0]
    return len(merges) == 1 and concat.op_type == "Concat" and concat.attributes.get_int("axis", 0) in (1, -3) \
        and len(concat.inputs) == len(layers) > 1 and all(n.op_type == "Conv" for n in layers) \
        and {id(v.producer()) for v in concat.inputs if v is not None} == {id(n) for n in layers} \
        and all(n.inputs[0].producer() is not None and n.inputs[0].producer().op_type in ("Split", "Slice") for n in layers)


def _identity(segment: _Segment, x: ir.Value) -> bool:
    """A fork-and-join segment from x whose paths meet in an Add of x itself: a residual block."""
    return segment.merge is not None and segment.merge.op_type == "Add" and x in segment.merge.inputs


def _inner(flow: tuple, classifier: ir.Node | None, x: ir.Value, region: _Segment, seen: set) -> list[Block]:
    """Residual blocks inside a fork-and-join region from x (module docstring, step 6)."""
    g, data, idom = flow
    streams = list({id(v): v for v in region.merge.inputs if v is not None and v in data and v is not x}.values())
    if len(streams) < 2:  # one path beside a shortcut: not parallel streams
        return []
    blocks = []
    for v in streams:
        cuts = _chain(idom, v, x)
        segments = _split(region.nodes, cuts, idom, nx.ancestors(g, v) | {v}, data, classifier)
        for i, s in enumerate(segments):
            if s.kind != "branch" or s.merge is None or (id(cuts[i]), id(cuts[i + 1])) in seen:
                continue
            seen.add((id(cuts[i]), id(cuts[i + 1])))
            if not _identity(s, cuts[i]):
                blocks += _inner(flow, classifier, cuts[i], s, seen)
                continue
            end = i + 1  # the segments without a layer after it (its ReLU), up to a tensor of its input's rank
            while end < len(segments) and segments[end].kind == "other":
                end += 1
            same = [e for e in range(end, i, -1) if _rank(cuts[e]) == _rank(cuts[i])]
            end = next((e for e in same if _same_tokens(cuts[i], cuts[e])), same[0] if same else None)
            if end is not None and _closed([n for seg in segments[i:end] for n in seg.nodes], cuts[end]):
                blocks.append(Block(cuts[i], cuts[end], _stride(cuts[i], cuts[end]), _kind([s], cuts[i]), s.merge))
    return blocks


def _same_tokens(x: ir.Value, y: ir.Value) -> bool:
    """Token sequences x and y (same rank) with as many tokens: a token block ends there rather than
    after a class token is concatenated (ConViT) or its pixels are regrouped into patches (TNT's
    inner blocks), since a lite module cannot change the token count."""
    return _rank(x) == 3 and str(y.shape[1]) == str(x.shape[1])


def _closed(nodes: list[ir.Node], y: ir.Value) -> bool:
    """Nothing the nodes compute but y is read outside them (by data ops)."""
    inside = {id(n) for n in nodes}
    return all(o is y or id(u) in inside or u.op_type in NOT_DATA or u.meta.get(LITE)
               for n in nodes for o in n.outputs for u, _ in o.uses())


def _group(segments: list[_Segment]) -> list[list[_Segment]]:
    """Blocks as lists of the segments that hold their layers (see the module docstring, step 4)."""
    items = [s for s in segments if s.kind != "other"]
    groups: list[list[_Segment]] = []
    i = 0
    while i < len(items):
        s = items[i]
        if s.kind == "layer" and is_depthwise(s.layers[0]):
            group = [s]
            prev = groups[-1] if groups else None
            if prev is not None and len(prev) == 1 and prev[0].kind == "layer" and \
                    prev[0].layers[0].op_type == "Conv" and not is_depthwise(prev[0].layers[0]) and \
                    not _widths(prev[0], -1):
                group = groups.pop() + group  # expand conv (or the stem), not a projection before it
            nxt = items[i + 1] if i + 1 < len(items) else None
            if nxt is not None and nxt.kind == "layer" and nxt.layers[0].op_type == "Conv" and \
                    _is_pointwise(nxt.layers[0]):
                group.append(nxt)  # project conv
                i += 1
            if group == [s] and prev is not None and all(seg.kind == "layer" for seg in prev) and \
                    _is_pointwise(prev[-1].layers[0]) and not _widths(prev[-1], -1):
                prev.append(s)  # a lone depthwise conv after a chain ending in a 1x1 (RepLKNet's stem)
            else:
                groups.append(group)
        else:
            groups.append([s])
        i += 1
    # an expansion left open (a depthwise conv then a widening 1x1, or a widening dense conv) is
    # closed by the next group's narrowing 1x1: MobileNetV4's ExtraDW (dw, expand, dw, project) and
    # ConvNeXt-like (dw, expand, project) blocks and a FusedMBConv (k x k expand, project) are one
    # block each; MobileNetV1's separable convs, which never narrow, stay apart
    k = 0
    while k + 1 < len(groups):
        g, nxt = groups[k], groups[k + 1]
        opens = (any(seg.kind == "layer" and is_depthwise(seg.layers[0]) for seg in g) and _widths(g[-1], 1)) or \
            (len(g) == 1 and _widths(g[0], 1, pointwise=False))
        if opens and all(seg.kind == "layer" for seg in nxt) and _widths(nxt[-1], -1):
            groups[k: k + 2] = [g + nxt]
        k += 1
    # a lone pointwise layer right before a fork-and-join block is that block's (SqueezeNet's squeeze)
    k = 0
    while k + 1 < len(groups):
        g, nxt = groups[k], groups[k + 1]
        if len(g) == 1 and g[0].kind == "layer" and _is_pointwise(g[0].layers[0]) and nxt[0].kind == "branch" and \
                not any(is_spatial(n) for seg in segments[g[0].start: nxt[0].start] for n in seg.nodes):
            groups[k: k + 2] = [g + nxt]
        k += 1
    # the stem joins the first block of several layers
    first_multi = next((k for k, grp in enumerate(groups) if len(grp) > 1 or grp[0].kind == "branch"), None)
    if first_multi:
        groups[: first_multi + 1] = [sum(groups[: first_multi + 1], [])]
    return groups


def _classifier(graph: ir.Graph) -> ir.Node | None:
    from tinytlc.errors import TinyTLError
    from tinytlc.passes.forward.replace_classifier import find_classifier
    try:
        return find_classifier(graph)[0]
    except TinyTLError:  # no classifier: every layer may be a block's
        return None


def residual_segments(graph: ir.Graph) -> list[tuple[ir.Value, list[ir.Node], ir.Node]]:
    """(x, nodes, the Add) of every fork-and-join region whose paths meet in an Add: a residual
    block, with an identity or a projection shortcut; x is the tensor it forks from."""
    cuts, segments, _ = _segments(graph, _classifier(graph))
    return [(cuts[s.start], s.nodes, s.merge) for s in segments
            if s.kind == "branch" and s.merge is not None and s.merge.op_type == "Add"]


def find_blocks(graph: ir.Graph, classifier: ir.Node | None = None) -> list[Block]:
    """Blocks in the order of their inputs (module docstring). `classifier`: the node that is no block's layer."""
    if classifier is None:
        classifier = _classifier(graph)
    cuts, segments, flow = _segments(graph, classifier)
    if not segments:
        return []
    groups = _group(segments)
    nodes_of = lambda s, e: [n for seg in segments[s:e] for n in seg.nodes]  # noqa: E731
    spans = []  # (first cut, cut after the group's trailing segments, group)
    for k, grp in enumerate(groups):
        start = 0 if k == 0 else grp[0].start
        end = groups[k + 1][0].start if k + 1 < len(groups) else len(cuts) - 1
        spans.append((start, end, grp))
    # the head: trailing groups of 1x1 layers after the last spatial op
    while len(spans) > 1:
        s, e, grp = spans[-1]
        if any(seg.kind == "branch" for seg in grp) or any(is_spatial(n) for n in nodes_of(grp[0].start, e)):
            break
        spans.pop()
    blocks = []
    for s, e, grp in spans:
        x = cuts[s]
        rank = _rank(x)
        y = same_tokens = None
        for c in cuts[s + 1: e + 1]:  # up to the head's global pool, flatten or token pick
            if rank is None or rank < 3 or c.producer().op_type in HEAD_OPS or c.producer() is classifier \
                    or (rank == 3 and _picks_tokens(c.producer())):
                break
            # (a norm written out reshapes into groups in between; a Transpose after the block is
            # the next one's view of it: Twins' position conv reads the tokens as [B, C, N])
            if _rank(c) == rank and c.producer().op_type != "Transpose":
                y = c
                same_tokens = c if _same_tokens(x, c) else same_tokens
        y = same_tokens or y
        if y is None:
            continue
        merge = grp[-1].merge if grp[-1].kind == "branch" else None
        blocks.append(Block(x, y, _stride(x, y), _kind(grp, cuts[grp[-1].start]), merge))
    seen: set = set()
    inner = [b for s in segments if s.kind == "branch" and s.merge is not None and not _identity(s, cuts[s.start])
             for b in _inner(flow, classifier, cuts[s.start], s, seen)]
    order = {id(n): i for i, n in enumerate(graph)}
    at = lambda b: order.get(id(b.input.producer()), -1)  # noqa: E731
    return sorted(blocks + inner, key=at)  # (stable: a region's own block before those inside it)


def _picks_tokens(node: ir.Node) -> bool:
    """A Slice along the token axis of a token sequence (BEiT's mean over x[:, 1:], the class token
    left out): the head's, like a Gather of the class token."""
    if node.op_type != "Slice" or len(node.inputs) < 4:
        return False
    axes = const_array(node.inputs[3])
    return axes is not None and axes.size == 1 and int(axes.reshape(-1)[0]) in (1, -2)


def _stride(x: ir.Value, y: ir.Value) -> int:
    if len(x.shape) != 4 or not all(isinstance(d, int) for d in (x.shape[2], y.shape[2])) or y.shape[2] == 0:
        return 1
    return max(1, round(x.shape[2] / y.shape[2]))


def _kind(group: list[_Segment], x: ir.Value) -> str:
    last = group[-1]
    if last.kind == "branch" and last.merge is not None:
        if last.merge.op_type == "Add":  # identity shortcut: x itself (or a view of it) is added
            direct = any(i is x or (i.producer() is not None and i.producer().op_type in VIEWS
                                    and i.producer().inputs[0] is x) for i in last.merge.inputs if i is not None)
            return "residual" if direct else "residual-projection"
        return last.merge.op_type.lower()
    if any(is_depthwise(n) for seg in group for n in seg.layers):
        return "inverted-bottleneck"
    return "conv" if group[-1].layers and group[-1].layers[0].op_type == "Conv" else "linear"
