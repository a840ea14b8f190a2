"""Shape inference: onnx's, with data propagation, as onnx_ir's ShapeInferencePass runs it, merged
back by name from the inferred value infos alone.

Why not onnx_ir's pass as it is: it deserializes the whole inferred model (every node, attribute
and small tensor) to read its shapes back: most of an inference's time on Swin-T, where
static-reshapes infers 22 times (Swin-T at 224 px compiles in 16 s with this, 22 s without).
Contract: the same shapes and element types as ShapeInferencePass (both set a value's shape or
type only where inference found one, and leave the model unchanged when inference fails); a graph
with subgraphs (If, Loop, Scan bodies) goes to ShapeInferencePass, whose merge walks them.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass
from onnx_ir.passes.common._c_api_utils import call_onnx_api  # (big initializers left out of the proto)


def _has_subgraphs(graph: ir.Graph) -> bool:
    return any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
               for node in graph for attr in node.attributes.values())


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)


class InferShapesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if _has_subgraphs(model.graph):
            return ShapeInferencePass()(model)
        try:
            inferred = call_onnx_api(_infer, model).graph
        except Exception:  # as ShapeInferencePass: inference failed, nothing changes
            return ir.passes.PassResult(model, False)
        graph = model.graph
        values = {v.name: v for v in (*graph.inputs, *(out for node in graph for out in node.outputs)) if v.name}
        modified = False
        for info in (*inferred.value_info, *inferred.output):
            value = values.get(info.name)
            if value is None:
                continue
            shape = ir.serde.deserialize_type_proto_for_shape(info.type)
            if shape is not None and value.shape != shape:
                value.shape, modified = shape, True
            kind = ir.serde.deserialize_type_proto_for_type(info.type)
            if kind is not None and kind.dtype is not None and value.dtype != kind.dtype:
                value.dtype, modified = kind.dtype, True
        return ir.passes.PassResult(model, modified)
