"""Shapes from the input: a backward Shape(X) of a forward activation keeps X alive for its shape.

What it removes: ORT's gradients of GlobalAveragePool, Flatten and similar ops read Shape(X) of
their forward input, and ORT may run that Shape late, in the backward, so X (a 4-D activation)
lives until then. X's shape is static but for the batch, so the pass writes it as
Concat(Shape(model input)[0:1], [C, H, W]); the model input is held by the caller anyway.
Exact: only where shape inference gives X the image's own (symbolic) batch dimension and fixes
the rest at compile time. Not every 4-D activation has the input's batch: Swin's window attention
runs on (batch x windows, ...) tensors, which shape inference names apart.
"""

from __future__ import annotations

import onnx_ir as ir

from tinytlc.passes.forward._values import add_constant
from tinytlc.passes.training._graph import forward_nodes


class ShapesFromInputPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        image = graph.inputs[0]
        batch = None
        forward = forward_nodes(graph)
        for node in list(graph):
            if node.op_type != "Shape" or node in forward or node.attributes.get_int("start", 0) != 0:
                continue
            x = node.inputs[0]
            producer = x.producer()
            if x is image or producer is None or producer not in forward or x.shape is None or len(x.shape) != 4:
                continue
            rest = list(x.shape)[1:]
            if str(x.shape[0]) != str(image.shape[0]) or not all(isinstance(d, int) for d in rest):
                continue  # (Swin's windows are batch x windows: a dimension shape inference names apart)
            tape = ir.tape.Tape(graph)
            if batch is None:
                start = add_constant(graph, "tinytlc.batch_start", [0])
                end = add_constant(graph, "tinytlc.batch_end", [1])
                batch = tape.op("Slice", [tape.op("Shape", [image]), start, end])
            dims = add_constant(graph, f"{x.name}.static_dims", rest)
            shape = tape.op("Concat", [batch, dims], attributes={"axis": 0})
            graph.insert_before(node, tape.nodes)
            ir.convenience.replace_all_uses_with(node.outputs[0], shape)
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)
