"""Conv bias as an Add: frozen convs whose bias trains run on ORT's NCHWc kernels.

Why: ORT's NCHWc layout transformer (its fastest CPU convs; depthwise 2 to 3x faster than in NCHW)
takes only a Conv whose weight and bias are both constant. In `bias` and `lite+bias` every frozen
conv keeps a trainable bias, a graph input, so none of them was rewritten. This pass writes a
frozen grouped (depthwise) conv, or an ungrouped k x k one (k > 1) with at least 16 input channels,
Conv(X, W, B) as Add(Conv(X, W), Reshape(B, [1, C, 1, 1])).
Backward is unchanged: the bias gradient is still the ConvGrad (or frozen-conv) one, from the same
dY, which the Add passes on. Not 1x1 convs: they are GEMMs in NCHW already, and rewriting them too
added more layout reorders than it saved (MobileNetV2 `bias`, 128 px, batch 8, alternating runs:
72.9 ms a step against 67.6 ms without them). ResNet's 3x3 convs gain (ResNet-18 `bias`, 128 px,
batch 8: 0.93x the step in 5 alternating pairs; forward 3.2 -> 1.8 ms for [8, 64, 32, 32]); a stem
of 3 input channels does not (MobileNetV2's: 1.03x), hence at least one NCHWc block of channels.

The conv keeps reading its input as activation-masks left it, Y + 0 * m[0] (a full pass over Y
that makes the forward wait for the mask). Moving that wait onto the bias, B + 0 * m[0], saves the
pass but lets ORT run the conv before the mask: measured on MobileNetV2 `bias` (128 px, batch 8)
the step peak rose from 29.1 to 41.0 MiB, so the wait stays where it is.

Exact up to summation order: the NCHWc kernels add the same products in another order, as ORT
does for every conv whose bias is constant.
"""

from __future__ import annotations

import onnx_ir as ir

from tinytlc.passes.training._graph import Constants, replace_node_outputs


def splits_bias(node: ir.Node) -> bool:
    """A forward Conv with a constant weight and a bias that is not constant: grouped, or k x k over
    at least 16 input channels."""
    if node.op_type != "Conv" or node.domain != "" or len(node.inputs) < 3 or node.inputs[2] is None:
        return False
    w, b = node.inputs[1], node.inputs[2]
    return (ir.convenience.get_const_tensor(w) is not None and ir.convenience.get_const_tensor(b) is None
            and w.shape is not None and len(w.shape) >= 3
            and (node.attributes.get_int("group", 1) > 1 or (max(w.shape[2:]) > 1 and w.shape[1] >= 16)))


class ConvBiasAddPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        const = Constants(graph, "tinytlc.bias_shape")
        for conv in [n for n in graph if splits_bias(n)]:
            x, w, b = conv.inputs[:3]
            tape = ir.tape.Tape(graph)
            shape = const([1, -1] + [1] * (len(w.shape) - 2))  # [1, C, 1, 1]
            y = tape.op("Conv", [x, w], attributes={k: a.value for k, a in conv.attributes.items()})
            y.name = f"{conv.outputs[0].name}.without_bias"
            out = tape.op("Add", [y, tape.op("Reshape", [b, shape])])
            graph.insert_before(conv, tape.nodes)
            replace_node_outputs(graph, conv, [(conv.outputs[0], out)])
            modified = True
        return ir.passes.PassResult(model, modified)
