"""Depthwise input gradient as a Conv: trained depthwise convs skip ConvGrad's slowest part.

What it changes: ORT's ConvGrad(dY, X, W) computes dX of a grouped conv image by image and group
by group, a small GEMM and a col2im each, on one thread: for a depthwise 3x3 conv on
[8, 144, 32, 32], 5.8 of its 8.2 ms (its weight gradient alone: 2.4 ms). Where the weight trains
(`full`), this pass leaves ConvGrad only dW and dB and computes
    dX = Conv(dY, W')   with W' = W flipped in space (a Slice, each step: W trains) and padding
                        (k - 1) d - p
which nchwc-conv puts on ORT's NCHWc depthwise kernel. Strided convs read dY with s - 1 zeros
between its elements (frozen-conv's zeros_between), what a transposed conv convolves. Nothing more
is kept for backward: ConvGrad still reads X for dW, W' lives for one Conv, the spread dY for one.
Before nchwc-conv existed the strided ones measured slower this way (plain NCHW depthwise conv: 10.4
ms for MobileNetV2's first strided block at 128 px, against ConvGrad's); with it, MobileNetV2
`full` at 128 px profiled 165 ms a step with stride-1 convs only, 162 ms with strided ones too.
Poolings written as convs (kernel = stride) stay on ConvGrad, as in frozen-conv.
Exact: a conv's input gradient is the correlation of dY with the flipped weight; the same products
are summed in another order.
Only depthwise convs (one input and one output channel per group, where W' is W flipped): a
grouped conv with wider groups (the lite modules' 2-group convs) was as often slower as faster,
and still lost on NCHWc: swapping channels within each group is a 5-D Transpose, which ORT runs
element by element (10 ms a step on MobileNetV2 lite+bias, 128 px).
"""

from __future__ import annotations

import onnx_ir as ir

from tinytlc.passes.training._graph import Constants, is_depthwise, move_outputs, wanted
from tinytlc.passes.training.frozen_conv_backward import conv_geometry, flipped_pads, zeros_between


class DepthwiseInputGradPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        const = Constants(graph)
        for grad in list(graph):
            if grad.op_type != "ConvGrad" or grad.domain != "com.microsoft" or len(grad.outputs) < 2:
                continue
            dy, x, w = grad.inputs[:3]
            dx, dw = grad.outputs[:2]
            group = grad.attributes.get_int("group", 1)
            if not (wanted(dx) and wanted(dw)) or x.shape is None or group == 1 or not is_depthwise(w, group):
                continue
            kernel, strides, dilations, pads, out_pad, dy_size = conv_geometry(grad, x, w)
            pads2 = None if out_pad is None else flipped_pads(kernel, dilations, pads, out_pad)
            if pads2 is None or (max(strides) > 1 and kernel == strides):
                continue  # a pooling written as a conv: frozen-conv keeps such ones on ConvTranspose too
            tape = ir.tape.Tape(graph)
            # both spatial axes reversed: starts, ends, axes, steps
            flipped = tape.op("Slice", [w, const([-1, -1]), const([-2 ** 62, -2 ** 62]), const([2, 3]),
                                        const([-1, -1])])
            flipped.shape, flipped.type = w.shape, w.type  # read by nchwc-conv
            if max(strides) > 1:
                dy = zeros_between(const, tape, dy, group, dy_size, strides)
            new_dx = tape.op("Conv", [dy, flipped], attributes={
                "kernel_shape": kernel, "dilations": dilations, "pads": pads2, "group": group})
            for i, node in enumerate(tape.nodes):  # backward values, named after dX
                node.outputs[0].name = f"{dx.name}.depthwise.{i}"
            graph.insert_after(grad, tape.nodes)
            move_outputs([(dx, new_dx)])  # ConvGrad computes no dX now: its output is unnamed
            modified = True
        return ir.passes.PassResult(model, modified)
