"""Frozen conv backward: input and bias gradients from dY and W alone.

What it removes: ORT's ConvGrad(dY, X, W) reads the conv input X even when the weight gradient is
not wanted, so every frozen conv's input stays alive from the forward until its backward runs.
Where dW is not requested, this pass replaces ConvGrad with
    dX = ConvTranspose(dY, W)   (same strides, pads, dilations, groups; output_padding restores
                                 the input size that strided convs round away)
    dB = ReduceSum(dY, axes=[0, 2, 3])
Exact: dX of a convolution is the transposed convolution of dY with the same weights; the bias
gradient is dY summed over batch and space. Neither reads X, so X dies after its forward users.
Order: ORT may run the bias ReduceSum long after the ConvTranspose (it is only needed at the
optimizer), keeping dY alive meanwhile. When both exist, the ConvTranspose takes a bias input
B = zeros(C_in) * dB[0]: a vector of zeros the size of the conv's input channels that cannot exist
before dB, so dY's last reader is the ConvTranspose. (An earlier version waited through
W + 0 * dB[0], a full copy of the weight: 9 MiB for a 512x512x3x3 conv, more than dY itself deep
in a ResNet.) Adding 0 changes no finite value.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import add_constant
from tinytlc.passes.training._graph import replace_node_outputs, wanted as _wanted


class FrozenConvBackwardPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        axes = None
        for grad in list(graph):
            if grad.op_type != "ConvGrad" or grad.domain != "com.microsoft":
                continue
            dy, x, w = grad.inputs[:3]
            dx, dw, db = (list(grad.outputs) + [None, None, None])[:3]
            if _wanted(dw) or x.shape is None or w.shape is None or len(x.shape) != 4:
                continue
            a = grad.attributes
            kernel = list(a.get_ints("kernel_shape", list(w.shape[2:])))
            strides = list(a.get_ints("strides", [1, 1]))
            dilations = list(a.get_ints("dilations", [1, 1]))
            pads = list(a.get_ints("pads", [0, 0, 0, 0]))
            out_pad = []  # what strided convs round away from the input size
            for i in range(2):
                size = x.shape[2 + i]
                if not isinstance(size, int):
                    break
                y = (size + pads[i] + pads[i + 2] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
                natural = strides[i] * (y - 1) + dilations[i] * (kernel[i] - 1) + 1 - pads[i] - pads[i + 2]
                out_pad.append(size - natural)
            if _wanted(dx) and len(out_pad) != 2:
                continue  # spatial size unknown: keep ConvGrad
            tape, replacements = ir.tape.Tape(graph), []
            db_value = None
            if _wanted(db):
                if axes is None:
                    axes = add_constant(graph, "tinytlc.conv_bias_grad_axes", [0, 2, 3])
                db_value = tape.op("ReduceSum", [dy, axes], attributes={"keepdims": 0})
                replacements.append((db, db_value))
            if _wanted(dx):
                inputs = [dy, w]
                if db_value is not None:  # a zero bias that exists only once dB does
                    first = tape.op("Slice", [db_value, add_constant(graph, "tinytlc.const", [0]),
                                              add_constant(graph, "tinytlc.const", [1])])
                    zeros = add_constant(graph, "tinytlc.zeros", np.zeros(w.shape[1] * a.get_int("group", 1), np.float32))
                    inputs.append(tape.op("Mul", [zeros, first]))
                tape.op("ConvTranspose", inputs, attributes={
                    "kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads,
                    "group": a.get_int("group", 1), "output_padding": out_pad})
                replacements.append((dx, tape.nodes[-1].outputs[0]))
            graph.insert_before(grad, tape.nodes)
            replace_node_outputs(graph, grad, replacements)
            modified = True
        return ir.passes.PassResult(model, modified)
