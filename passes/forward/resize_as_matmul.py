"""Write a Resize of an image's height and width as two MatMuls by constant interpolation matrices,
where a gradient must flow through it.

Why: ONNX Runtime 1.19.2 builds a ResizeGrad but has no CPU kernel for it, so a network that
upsamples (HRNet's branch fusion, an FPN or U-Net-like classifier) could train nothing before its
Resize. A Resize over H and W is linear in x and separable: Y = A_h X A_w^T, A_h (H_out, H_in) and
A_w (W_out, W_in) fixed by the sizes and the node's attributes (mode, coordinate transform, nearest
rounding, cubic coefficients). The matrices are read off ORT's own Resize kernel applied to unit
vectors, and the rewrite is kept only if it reproduces the node on a random input.
Exact: the same interpolation weights, summed in another order (within 1e-6 relative).
Memory: a MatMul by a constant keeps no activation for backward (dX = A_h^T dY A_w).
Only a Resize with a trained tensor before it is rewritten: elsewhere no gradient passes it, the
Resize kernel is faster, and the exported inference model keeps it.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from tinytlc.passes.forward._values import add_constant, const_array, opset, replace_node
from tinytlc.passes.forward.static_reshapes import evaluate_shape


def _resize(node: ir.Node, graph: ir.Graph, consts: list, x: np.ndarray) -> np.ndarray:
    """ORT's Resize with `node`'s attributes and inputs `consts` (roi, scales, sizes) applied to x;
    full-rank sizes are given x's batch and channels."""
    import onnxruntime as ort
    inputs, inits = ["x"], []
    for i, array in enumerate(consts, start=1):
        if array is None:
            inputs.append("")
            continue
        if i == 3 and "axes" not in node.attributes:
            array = np.concatenate([x.shape[:2], array[2:]]).astype(array.dtype)
        inits.append(onnx.numpy_helper.from_array(array, f"in{i}"))
        inputs.append(f"in{i}")
    resize = onnx.helper.make_node("Resize", inputs, ["y"], **{k: a.value for k, a in node.attributes.items()})
    g = onnx.helper.make_graph([resize], "resize", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset(graph))])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0]


def _value(v: ir.Value | None, batch) -> np.ndarray | None:
    """A constant input, or sizes computed from shapes (torch's size=(h, w): Concat(Shape(x)[:2],
    [h, w])) whose every entry but the batch's is fixed."""
    array = const_array(v)
    if array is not None or v is None:
        return array
    one, two = (evaluate_shape(v, b, {}, batch) for b in (1, 2))
    if one is None or two is None or one.shape != two.shape or one.ndim != 1 or (one[1:] != two[1:]).any():
        raise ValueError("computed at run time")
    return one


def _matrices(node: ir.Node, graph: ir.Graph) -> tuple[np.ndarray, np.ndarray] | None:
    """(A_h, A_w^T) with Resize(X) = A_h X A_w^T for every X of the node's shape, else None."""
    x = node.inputs[0].shape
    if x is None or len(x) != 4 or not all(isinstance(d, int) for d in list(x)[1:]):
        return None
    if node.attributes.get_string("keep_aspect_ratio_policy", "stretch") != "stretch":
        return None  # (the probes below change N and C: their sizes must not steer H and W)
    _, c, h, w = x
    try:
        consts = [_value(v, x[0]) for v in node.inputs[1:]]
        # unit vectors along H (constant along W) as a batch: row k of the output is column k of A_h
        eye_h = np.broadcast_to(np.eye(h, dtype=np.float32)[:, None, :, None], (h, 1, h, w))
        eye_w = np.broadcast_to(np.eye(w, dtype=np.float32)[:, None, None, :], (w, 1, h, w))
        a_h = _resize(node, graph, consts, eye_h)[:, 0, :, 0].T
        a_wt = _resize(node, graph, consts, eye_w)[:, 0, 0, :]
        check = np.random.default_rng(0).standard_normal((1, min(c, 2), h, w)).astype(np.float32)
        expected = _resize(node, graph, consts, check)
    except Exception:  # noqa: BLE001 (sizes known only at run time, or ORT refused a probe: leave the node)
        return None
    got = a_h @ check @ a_wt
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max()):
        return None
    return np.ascontiguousarray(a_h), np.ascontiguousarray(a_wt)


def _downstream(graph: ir.Graph, names: set[str]) -> set[int]:
    """ids of the values that depend on the initializers named."""
    reached = {id(v) for n, v in graph.initializers.items() if n in names}
    for node in graph:
        if any(v is not None and id(v) in reached for v in node.inputs):
            reached |= {id(v) for v in node.outputs}
    return reached


class ResizeAsMatMulPass(ir.passes.InPlacePass):
    def __init__(self, trainable: list[str]):
        super().__init__()
        self.trainable = set(trainable)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        trained = _downstream(graph, self.trainable)
        for node in list(graph):
            if node.op_type != "Resize" or node.domain not in ("", "ai.onnx") or id(node.inputs[0]) not in trained:
                continue
            found = _matrices(node, graph)
            if found is None:
                continue
            a_h, a_wt = found
            t = ir.tape.Tape(graph)
            y = t.op("MatMul", [add_constant(graph, f"{node.name}.rows", a_h),
                                t.op("MatMul", [node.inputs[0], add_constant(graph, f"{node.name}.columns", a_wt)])])
            replace_node(graph, node, t.nodes, y)
            modified = True
        return ir.passes.PassResult(model, modified)
