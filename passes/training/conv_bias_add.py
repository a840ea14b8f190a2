"""Conv bias as an Add: frozen convs whose bias trains run on ORT's NCHWc kernels.

Why: ORT's NCHWc layout transformer (its fastest CPU convs; depthwise 2 to 3x faster than in NCHW)
takes only a Conv whose weight and bias are both constant. In `bias` and `lite+bias` every frozen
conv keeps a trainable bias, a graph input, so none of them was rewritten. This pass writes the
forward Conv(X, W, B) as Add(Conv(X, W), Reshape(B, [1, C, 1, 1])). Backward is unchanged: the
bias gradient is still the ConvGrad (or frozen-conv) one, from the same dY, which the Add passes on.

The mask wait moves onto the bias: activation-masks makes a conv read Y + 0 * m[0], a full pass over
Y, so the forward cannot go on before the mask exists. When every reader of that sum is a conv
rewritten here, they read Y itself and the wait goes onto their bias instead,
Add(Conv(Y, W), B + 0 * m[0]): the bias is [1, C, 1, 1], and the conv's output still waits for m.

Exact up to summation order: the NCHWc kernels add the same products in another order, as ORT
does for every conv whose bias is constant.
"""

from __future__ import annotations

import onnx_ir as ir

from tinytlc.passes.forward._values import add_constant
from tinytlc.passes.training._graph import replace_node_outputs
from tinytlc.passes.training.activation_masks import MASK_WAIT


def _splits(node: ir.Node) -> bool:
    """A forward Conv with a constant weight and a bias that is not constant."""
    if node.op_type != "Conv" or node.domain != "" or len(node.inputs) < 3 or node.inputs[2] is None:
        return False
    w, b = node.inputs[1], node.inputs[2]
    return (ir.convenience.get_const_tensor(w) is not None and ir.convenience.get_const_tensor(b) is None
            and w.shape is not None and len(w.shape) >= 3 and node.attributes.get_int("group", 1) > 1)


class ConvBiasAddPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for conv in [n for n in graph if _splits(n)]:
            x, w, b = conv.inputs[:3]
            wait = None
            source = x.producer()
            if source is not None and source.meta.get(MASK_WAIT) and not x.is_graph_output() and \
                    all(_splits(user) and index == 0 for user, index in x.uses()):
                x, wait = source.inputs[0], source.inputs[1]
            tape = ir.tape.Tape(graph)
            shape = add_constant(graph, "tinytlc.bias_shape", [1, -1] + [1] * (len(w.shape) - 2))
            bias = tape.op("Reshape", [b, shape])
            if wait is not None:
                bias = tape.op("Add", [bias, wait])
            y = tape.op("Conv", [x, w], attributes={k: a.value for k, a in conv.attributes.items()})
            y.name = f"{conv.outputs[0].name}.without_bias"
            out = tape.op("Add", [y, bias])
            graph.insert_before(conv, tape.nodes)
            replace_node_outputs(graph, conv, [(conv.outputs[0], out)])
            if source is not None and source.meta.get(MASK_WAIT) and not source.outputs[0].uses():
                graph.remove(source, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)
