"""Depthwise weight gradient as one NCHWc conv over the batch stacked in rows (small maps, wide kernels).

What it changes: ORT's ConvGrad computes a depthwise conv's dW image by image and channel by
channel, a GEMM of one row each: 7,680 of them for [8, 960, 4, 4], 2.3 ms. Where the weight trains
(`full`) and the map is small (at most 16 x 16) or the kernel wide (5x5 or more), this pass computes
    dW[c, i, j] = sum over n, h, w of dY[n, c, h, w] * Xpad[n, c, h s + i, w s + j]
as a single depthwise conv (group C: a static attribute, whatever the batch) whose input is Xpad
with the images stacked along the rows, [1, C, N Hp, Wp], and whose kernel is dY stacked the same
way, [C, 1, N R, Wo], dilated by the stride: R = Hp / s rows a image (dY padded with zero rows, Hp
rounded up to a multiple of s), so that dY's row n R + h meets X's row n Hp + h s + i, and rows
past an image's end meet only zeros. The output is [1, C, >= kh, >= kw], cut to the kernel.
Both stackings are NCHWc tensors already after ReorderInput, a Pad and a Transpose that moves
whole [Hp, Wp, block] planes (a copy each), so the conv is ORT's NCHWc depthwise
kernel: 0.7 ms for that [8, 960, 4, 4] conv. On larger maps the copies cost a 3x3 conv more than
ConvGrad's loops (32 x 32: as fast; 64 x 64 with stride 2: 3.4 against 2.6 ms), so those keep
ConvGrad. The copies do not grow with the kernel and ConvGrad's loops do: 5x5 and 7x7 convs are
taken on every map (measured, a step's kernels, batch 8: 7x7 on [96, 32, 32] 10.0 -> 5.8 ms, on
[96, 56, 56] 32.3 -> 17.7, on [32, 112, 112] 46.6 -> 26.3; 5x5 stride 2 on [144, 64, 64] 22.9 ->
21.9, on [32, 112, 112] 14.5 -> 12.8).
ConvGrad keeps what else it computes (dX, when depthwise-input-grad did not take it; dB becomes a
ReduceSum of dY); with nothing left it is removed. Nothing more is kept for backward: dW reads the
X and dY ConvGrad read.
NCHWc blocks depend on the CPU: compile records the block (manifest "nchwc_block"), as for
nchwc-conv. Exact up to summation order.
"""

from __future__ import annotations

import onnx_ir as ir

from tinytlc.passes.training._graph import Constants, is_depthwise, move_outputs, replace_node_outputs, wanted
from tinytlc.passes.training.frozen_conv_backward import conv_geometry
from tinytlc.passes.training.nchwc_conv import DOMAIN, block_size

MAX_MAP = 16 * 16  # input pixels a map, at most, for 3x3 kernels (measured crossover: 32 x 32)
WIDE_KERNEL = 5 * 5  # taps from which any map is taken (5x5, 7x7: faster from 32 x 32 to 112 x 112)


class DepthwiseWeightGradPass(ir.passes.InPlacePass):
    def __init__(self, block: int | None = None):
        super().__init__()
        self.block = block

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, block, modified = model.graph, self.block or block_size(), False
        const = Constants(graph)

        for grad in list(graph):
            if grad.op_type != "ConvGrad" or grad.domain != "com.microsoft" or len(grad.outputs) < 2:
                continue
            dy, x, w = grad.inputs[:3]
            dx, dw, db = (list(grad.outputs) + [None])[:3]
            group = grad.attributes.get_int("group", 1)
            if not wanted(dw) or x.shape is None or len(x.shape) != 4 or not is_depthwise(w, group) or group % block \
                    or not all(isinstance(d, int) for d in x.shape[2:]) \
                    or (x.shape[2] * x.shape[3] > MAX_MAP and w.shape[2] * w.shape[3] < WIDE_KERNEL):
                continue
            kernel, strides, dilations, pads, _, dy_size = conv_geometry(grad, x, w)
            if max(dilations) > 1 or kernel == strides:
                continue
            (h, wd), (kh, kw), (sh, sw) = x.shape[2:], kernel, strides
            hp = h + pads[0] + pads[2]
            hp += -hp % sh
            wp, rows = wd + pads[1] + pads[3], hp // sh
            tape = ir.tape.Tape(graph)

            def stacked(t: ir.Value, size: list[int], pad: list[int], height: int, width: int,
                        shape: list[int]) -> ir.Value:
                # padded as [N, C / block, H, W, block]: runs of a block's channels, 1.2 to 2.7x
                # faster than padding the NCHW tensor before ReorderInput
                blocked = tape.op("Reshape", [tape.op("ReorderInput", [t], domain=DOMAIN),
                                              const([-1, group // block, *size, block])])
                padded = tape.op("Pad", [blocked, const([0, 0, pad[0], pad[1], 0, 0, 0, pad[2], pad[3], 0])])
                planes = tape.op("Reshape", [padded, const([-1, group // block, height * width * block])])
                moved = tape.op("Transpose", [planes], attributes={"perm": [1, 0, 2]})
                return tape.op("Reshape", [moved, const(shape)])

            xs = stacked(x, [h, wd], [pads[0], pads[1], hp - h - pads[0], pads[3]], hp, wp, [1, group, -1, wp])
            ks = stacked(dy, dy_size, [0, 0, rows - dy_size[0], 0], rows, dy_size[1], [group, 1, -1, dy_size[1]])
            out = tape.op("Conv", [xs, ks], attributes={"group": group, "dilations": [sh, sw],
                                                         "pads": [0, 0, max(0, kh - sh), 0]}, domain=DOMAIN)
            out = tape.op("ReorderOutput", [out], attributes={"channels": group}, domain=DOMAIN)
            cut = tape.op("Slice", [out, const([0, 0]), const([kh, kw]), const([2, 3])])
            new_dw = tape.op("Reshape", [cut, const([group, 1, kh, kw])])
            new = [(dw, new_dw)]
            if wanted(db):
                new.append((db, tape.op("ReduceSum", [dy, const([0, 2, 3])], attributes={"keepdims": 0})))
            for i, node in enumerate(tape.nodes):  # backward values, named after dW
                node.outputs[0].name = f"{dw.name}.stacked.{i}"
            graph.insert_after(grad, tape.nodes)
            if wanted(dx):
                move_outputs(new)
            else:
                replace_node_outputs(graph, grad, new)
            modified = True
        if modified:
            model.opset_imports[DOMAIN] = 1
        return ir.passes.PassResult(model, modified)
