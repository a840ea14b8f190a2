"""Re-initialise the classifier (the Gemm, or MatMul + Add, that produces the logits) for a new
number of classes, as transfer learning does.

The new weight and bias are drawn as torch.nn.Linear draws them: uniform in +-1/sqrt(in_features).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.errors import TinyTLError
from tinytlc.passes.forward._values import add_initializer, const_array, set_initializer


def find_classifier(graph: ir.Graph) -> tuple[ir.Node, ir.Value, ir.Value | None, bool]:
    """(node, weight, bias, weight_is_out_by_in) of the layer producing the single graph output."""
    out = graph.outputs[0]
    node = out.producer()
    if node is not None and node.op_type == "Add":
        matmul = next((v.producer() for v in node.inputs if v.producer() is not None
                       and v.producer().op_type == "MatMul"), None)
        bias = next((v for v in node.inputs if v.is_initializer()), None)
        if matmul is not None and matmul.inputs[1].is_initializer():
            return matmul, matmul.inputs[1], bias, False
    if node is not None and node.op_type == "Gemm" and node.inputs[1].is_initializer():
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        return node, node.inputs[1], bias, bool(node.attributes.get_int("transB", 0))
    if node is not None and node.op_type == "MatMul" and node.inputs[1].is_initializer():
        return node, node.inputs[1], None, False
    raise TinyTLError("no classifier found: the graph output must come from a Gemm or MatMul(+Add) "
                      "with constant weights")


class ReplaceClassifierPass(ir.passes.InPlacePass):
    def __init__(self, num_classes: int, seed: int = 0):
        super().__init__()
        self.num_classes, self.seed = num_classes, seed

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        node, weight, bias, out_by_in = find_classifier(graph)
        w = const_array(weight)
        in_features = w.shape[1] if out_by_in else w.shape[0]
        rng = np.random.default_rng(self.seed)
        bound = 1.0 / np.sqrt(in_features)
        new_w = rng.uniform(-bound, bound, (self.num_classes, in_features)).astype(np.float32)
        set_initializer(weight, new_w if out_by_in else new_w.T.copy())
        new_b = rng.uniform(-bound, bound, self.num_classes).astype(np.float32)
        if bias is not None and const_array(bias) is not None:
            set_initializer(bias, new_b)
        elif node.op_type == "Gemm":
            node.resize_inputs(3)
            node.replace_input_with(2, add_initializer(graph, "classifier.bias", new_b))
        out = graph.outputs[0]
        if out.shape is not None and len(out.shape) == 2:
            out.shape = ir.Shape([out.shape[0], self.num_classes])
        return ir.passes.PassResult(model, True)
