"""A trained k x k conv on a small map, forward and gradients, as im2col Gathers and batched GEMMs.

What it changes: ORT's Conv and ConvGrad run image by image and group by group: an im2col and a
small GEMM each (ConvGrad: one for dW, and a GEMM and a col2im for dX). On the small maps of a
network's late stages (the lite residual modules' 2-group 5x5 convs on 2x2 to 8x8 maps) the
calls, not the arithmetic, are the cost: for [8, 96, 4, 4], 5x5, 2 groups, 0.64 ms forward and
1.1 ms backward. Where the weight trains and the output map has at most 8 x 8 pixels, this pass
writes, with the batch moved last so that it joins the GEMMs' inner dimension
(X^T = [C, H W, N], dY^T = [O, Ho Wo, N], a copy each):
    cols  = Gather(Pad(X^T), taps)      [C, k k, Ho Wo, N]: the input pixel each tap of each
                                         output pixel reads (the pad: one zero pixel for taps
                                         that fall outside the map)
    Y     = W cols (+ B)                one GEMM per group over every image and pixel,
                                         transposed back to [N, O, Ho, Wo]
    dW    = dY^T cols^T                 cols gathered again in the backward
    dcols = Gather(Pad(dY^T), readers)  [O, k k, H W, N]: for each input pixel and tap, the
                                         output pixel that read it through that tap (or zero)
    dX    = (W regrouped as [C, O k k]) dcols, transposed back to [N, C, H, W]
    dB    = ReduceSum(dY) over batch and space
The index tables are constants of the conv's geometry (strides, pads, dilations), so any
batch size runs. Measured on single ops (2 threads), that conv: forward 0.64 -> 0.21 ms,
backward 1.1 -> 0.46 ms; [8, 160, 2, 2] 3x3: 0.27 -> 0.07 and 0.64 -> 0.22 ms; 8x8 -> 4x4 with
stride 2: backward 0.35 -> 0.26 ms. MobileNetV2 `lite+bias`, 128 px, batch 8: 0.96x the step
(5 alternating fresh-process pairs; 0.91x before the image-size cap below, which leaves its
32-channel 8 x 8 convs to ConvGrad). On larger maps the
gathered copies (k k times the map) cost more than ConvGrad's loops (16 x 16 -> 16 x 16 was
still 1.7x faster, 32 x 32 -> 16 x 16 with stride 2 slower; an 8 x 8 forward no faster) and
would be large transients, so those keep Conv and ConvGrad; depthwise convs have their own
passes (depthwise-weight-grad, depthwise-input-grad), and so do 1x1 convs on large maps
(pointwise-grad). 1x1 convs on small maps keep ConvGrad: written this way (no gather, only the
transposes) they were within noise of it (MobileNetV2 `full`, 128 px, one profiled step: 121
against 124 ms).
Kept for backward: nothing new. The backward gathers X's cols again rather than keep the
forward's: the backward's copies read dY's shape first, so that they run in the backward (and so
that ORT's common subexpression elimination cannot merge them with the forward's, which kept
MobileNetV2 `lite`'s cols alive from forward to backward: +8.7 MB step peak). cols and dcols are
transients of k k times the small map (1.2 MB for that [8, 96, 4, 4] conv at batch 8), alive for
one GEMM each, and they come when a step's memory peaks (the end of the forward and the start of
the backward, where the small maps are), so each is capped at 256 KiB an image and at the size of one input image:
without the first cap ResNet-18's 256- and 512-channel 3x3 convs raised its `full` step peak by
3.3 MB and `lite+bias` by 4.9 MB (128 px, batch 8); without the second, at 32 px, where the whole
step takes about 1 MB, the families' `lite+bias` step peaks rose by up to 43 % (VGG). With both,
MobileNetV2's lite modules keep most of their convs on the pass and the 32 px families are back
where they were. MobileNetV2's step peaks still rise by 8 KB (`lite+bias`) and 37 KB (`lite`) at
128 px, not from tensors (those at the peak are the same bytes) but from ORT keeping a ~250-byte
object per Reshape output until the step ends: this pass adds about 13 Reshapes a conv.
Exact up to summation order (the same products, summed in another order).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.training._graph import Constants, is_depthwise, replace_node_outputs, wanted
from tinytlc.passes.training.frozen_conv_backward import conv_geometry

MAX_OUTPUT_MAP = 8 * 8  # output pixels, at most: past it the gathered copies outgrow ConvGrad's loops
MAX_GATHERED = 256 * 1024  # bytes a gathered copy takes per image, at most (2 MiB at batch 8)


def image_bytes(graph: ir.Graph) -> int | None:
    """Bytes of one input image: the graph input of rank 4 whose batch is symbolic (the trained
    weights, graph inputs too, have static shapes); None if there is none."""
    sizes = [4 * int(np.prod(v.shape[1:])) for v in graph.inputs
             if v.shape is not None and len(v.shape) == 4 and not isinstance(v.shape[0], int)
             and all(isinstance(d, int) for d in v.shape[1:])]
    return max(sizes) if sizes else None


def tap_tables(size: list[int], out_size: list[int], kernel: list[int], strides: list[int], dilations: list[int],
               pads: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(taps [k k, Ho Wo]: the input pixel each tap of each output pixel reads, H W where it reads
    padding; readers [k k, H W]: the output pixel that reads each input pixel through each tap,
    Ho Wo where none does)."""
    (h, w), (ho, wo), (kh, kw) = size, out_size, kernel
    taps = np.full((kh * kw, ho * wo), h * w, np.int64)
    readers = np.full((kh * kw, h * w), ho * wo, np.int64)
    for i in range(kh):
        for j in range(kw):
            for a in range(ho):
                for b in range(wo):
                    r, c = a * strides[0] - pads[0] + i * dilations[0], b * strides[1] - pads[1] + j * dilations[1]
                    if 0 <= r < h and 0 <= c < w:
                        taps[i * kw + j, a * wo + b] = r * w + c
                        readers[i * kw + j, r * w + c] = a * wo + b
    return taps, readers


def _fits(grad: ir.Node, budget: int) -> bool:
    """A 2-D ConvGrad whose dW is wanted, k x k (k > 1), not depthwise, static map sizes, an output
    map of at most MAX_OUTPUT_MAP pixels and gathered copies of at most `budget` bytes per image."""
    if grad.op_type != "ConvGrad" or grad.domain != "com.microsoft" or len(grad.outputs) < 2 or not wanted(grad.outputs[1]):
        return False
    dy, x, w = grad.inputs[:3]
    if x.shape is None or w.shape is None or dy.shape is None or len(x.shape) != 4 or len(w.shape) != 4:
        return False
    if not all(isinstance(d, int) for d in [*x.shape[1:], *dy.shape[1:], *w.shape]):
        return False
    group, kk = grad.attributes.get_int("group", 1), w.shape[2] * w.shape[3]
    cols, dcols = (4 * kk * x.shape[1] * dy.shape[2] * dy.shape[3], 4 * kk * w.shape[0] * x.shape[2] * x.shape[3])
    return (grad.attributes.get_string("auto_pad", "NOTSET") == "NOTSET" and kk > 1 and not is_depthwise(w, group)
            and dy.shape[2] * dy.shape[3] <= MAX_OUTPUT_MAP and max(cols, dcols) <= budget)


def _forward_conv(x: ir.Value, w: ir.Value) -> ir.Node | None:
    """The Conv a ConvGrad differentiates: the one reading X and W."""
    return next((u for u, i in w.uses() if u.op_type == "Conv" and u.domain == "" and i == 1 and u.inputs[0] is x), None)


class GatherConvPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        const = Constants(graph)
        # a copy no larger than the input image, so that it stays small beside the step's own
        # tensors at any resolution (at 32 px the 256 KiB cap alone let copies raise lite+bias
        # step peaks by up to 43 %)
        budget = min(MAX_GATHERED, image_bytes(graph) or MAX_GATHERED)
        for grad in [n for n in graph if _fits(n, budget)]:
            dy, x, w = grad.inputs[:3]
            dx, dw, db = (list(grad.outputs) + [None])[:3]
            kernel, strides, dilations, pads, _, dy_size = conv_geometry(grad, x, w)
            group = grad.attributes.get_int("group", 1)
            (c, h, wd), o, kk = x.shape[1:], w.shape[0], kernel[0] * kernel[1]
            pixels, out_pixels = h * wd, dy_size[0] * dy_size[1]
            taps, readers = tap_tables([h, wd], dy_size, kernel, strides, dilations, pads)

            def batch_last(tape: ir.tape.Tape, t: ir.Value, channels: int, size: int,
                           after: ir.Value | None = None) -> ir.Value:
                """[N, C, H, W] -> [C, H W, N]: the batch last (once `after` exists, if given)."""
                shape = const([0, channels, size])
                if after is not None:
                    first = tape.op("Slice", [tape.op("Shape", [after]), const([0]), const([1])])
                    shape = tape.op("Add", [shape, tape.op("Mul", [first, const([0])])])
                flat = tape.op("Reshape", [t, shape])
                return tape.op("Transpose", [flat], attributes={"perm": [1, 2, 0]})

            def gathered(tape: ir.tape.Tape, t: ir.Value, table: np.ndarray, rows: int) -> ir.Value:
                """[C, H W, N] -> [G, rows, k k H' W' N] by `table`, the last pixel a zero one."""
                padded = tape.op("Pad", [t, const([0, 0, 0, 0, 1, 0])])
                cols = tape.op("Gather", [padded, const(table)], attributes={"axis": 1})
                return tape.op("Reshape", [cols, const([group, rows, -1])])

            def name_outputs(tape: ir.tape.Tape, after: str) -> None:
                for i, node in enumerate(tape.nodes):
                    node.outputs[0].name = f"{after}.gathered.{i}"

            conv = _forward_conv(x, w)
            if conv is not None:  # Y = W cols, with the cols of this forward, a transient
                tape = ir.tape.Tape(graph)
                y_g = tape.op("MatMul", [tape.op("Reshape", [w, const([group, o // group, c // group * kk])]),
                                         gathered(tape, batch_last(tape, x, c, pixels), taps, c // group * kk)])
                y_t = tape.op("Reshape", [y_g, const([o, *dy_size, -1])])
                y = tape.op("Transpose", [y_t], attributes={"perm": [3, 0, 1, 2]})
                if len(conv.inputs) > 2 and conv.inputs[2] is not None:
                    y = tape.op("Add", [y, tape.op("Reshape", [conv.inputs[2], const([1, o, 1, 1])])])
                name_outputs(tape, conv.outputs[0].name)
                graph.insert_before(conv, tape.nodes)
                replace_node_outputs(graph, conv, [(conv.outputs[0], y)])

            tape = ir.tape.Tape(graph)
            dy_t = batch_last(tape, dy, o, out_pixels)
            dy_g = tape.op("Reshape", [dy_t, const([group, o // group, -1])])  # [G, O / G, Ho Wo N]
            # X's cols again, once dY exists: made in the backward, not kept from the forward (the
            # same nodes from X alone would be merged with the forward's by ORT's common
            # subexpression elimination, and the forward's cols kept until backward)
            cols = gathered(tape, batch_last(tape, x, c, pixels, after=dy), taps, c // group * kk)
            dw_g = tape.op("FusedMatMul", [dy_g, cols], attributes={"transB": 1}, domain="com.microsoft")
            new = [(dw, tape.op("Reshape", [dw_g, const(list(w.shape))]))]
            if wanted(dx):
                dcols = gathered(tape, dy_t, readers, o // group * kk)
                # W [O, C/G, kh, kw] as [G, C/G, O/G kh kw]: row c, column (o, tap)
                w_g = tape.op("Transpose", [tape.op("Reshape", [w, const([group, o // group, c // group, kk])])],
                              attributes={"perm": [0, 2, 1, 3]})
                w_g = tape.op("Reshape", [w_g, const([group, c // group, o // group * kk])])
                dx_t = tape.op("Reshape", [tape.op("MatMul", [w_g, dcols]), const([c, h, wd, -1])])
                new.append((dx, tape.op("Transpose", [dx_t], attributes={"perm": [3, 0, 1, 2]})))
            if wanted(db):
                new.append((db, tape.op("ReduceSum", [dy, const([0, 2, 3])], attributes={"keepdims": 0})))
            name_outputs(tape, dw.name)  # backward values, named after dW
            graph.insert_before(grad, tape.nodes)
            replace_node_outputs(graph, grad, new)
            modified = True
        return ir.passes.PassResult(model, modified)
