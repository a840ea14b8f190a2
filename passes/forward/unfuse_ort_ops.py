"""Write ONNX Runtime's fused CPU ops (domain com.microsoft) as the ai.onnx ops they were fused from.

Why: a file saved after ORT's own graph optimisations (SessionOptions.optimized_model_filepath at
ORT_ENABLE_EXTENDED) holds FusedConv, FusedGemm, QuickGelu, FusedMatMul... onnxruntime-training has
no gradient for most of them (`full` fails), and tinytlc's passes do not see a FusedConv as a conv
(`bias` silently trained the classifier only).
Exact: each op is written as its definition (ORT's ContribOperators.md, contrib_ops/cpu/fused_activation.cc):

| op                      | written as                                                             |
|-------------------------|------------------------------------------------------------------------|
| FusedConv(X, W, B, Z)   | act(Conv(X, W, B) + Z); activation_params: LeakyRelu alpha, Clip min max, HardSigmoid alpha beta |
| FusedGemm(A, B, C)      | act(Gemm(A, B, C)); activation_alpha/beta/gamma are the activation's alpha/beta/gamma |
| BiasGelu(X, bias)       | Gelu(X + bias), Gelu = 0.5 x (1 + erf(x / sqrt 2)) (as com.microsoft Gelu) |
| FastGelu(X, bias)       | the tanh form of Gelu of X (+ bias)                                    |
| QuickGelu(X)            | X * Sigmoid(alpha X), alpha 1.702 unless given                         |
| FusedMatMul(A, B)       | MatMul(A or A^T, B or B^T) * alpha, transposing the last two axes      |

The new Conv and Gemm keep the node's name and its weight and bias values, so parameters keep
their names. A FusedMatMul that transposes an input needs that input's rank: shapes are inferred
again while some are unknown; a Transpose it writes that the graph already has is merged with it
(common subexpressions), so blocks are cut where they were before ORT fused. Other ops outside
ai.onnx are left for load_onnx to refuse by name.
"""

from __future__ import annotations


import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import CommonSubexpressionEliminationPass

from tinytlc.errors import TinyTLError
from tinytlc.passes.forward._values import add_constant, replace_node
from tinytlc.passes.forward.infer_shapes import InferShapesPass
from tinytlc.passes.forward.lower_for_autodiff import gelu

MS = "com.microsoft"
OPS = ("FusedConv", "FusedGemm", "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "FusedMatMul")  # (in MS)
_CONV_PARAMS = {"LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta")}  # (Clip's are inputs)
_GEMM_ACTIVATIONS = {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "HardSigmoid", "Softsign",
                     "ThresholdedRelu"}


def _scalar(graph: ir.Graph, value: float) -> ir.Value:
    return add_constant(graph, "tinytlc.scalar", np.float32(value))


def _activation(graph: ir.Graph, t: ir.tape.Tape, node: ir.Node, y: ir.Value, kind: str, attrs: dict) -> ir.Value:
    name = f"{node.name}/{kind}" if node.name else None  # (ORT wants node names unique)
    if kind == "Clip":
        lo, hi = attrs.get("min", -np.inf), attrs.get("max", np.inf)
        return t.op("Clip", [y, _scalar(graph, lo), _scalar(graph, hi)], name=name)
    return t.op(kind, [y], attributes=attrs, name=name)


def _lower(graph: ir.Graph, node: ir.Node, t: ir.tape.Tape) -> ir.Value | None:
    a, x = node.attributes, node.inputs[0]
    kind = a.get_string("activation", "")
    if node.op_type == "FusedConv":
        params = list(a.get_floats("activation_params", []))
        names = ("min", "max") if kind == "Clip" else _CONV_PARAMS.get(kind, ())
        if kind not in ("", "Relu", "Tanh", "Sigmoid", "Clip") + tuple(_CONV_PARAMS) or len(params) < len(names):
            raise TinyTLError(f"FusedConv {node.name}: activation '{kind}' {params} has no ai.onnx op")
        conv = {k: v for k, v in a.items() if not k.startswith("activation")}
        y = t.op("Conv", list(node.inputs[:3]), attributes=conv, name=node.name)
        if len(node.inputs) > 3 and node.inputs[3] is not None:  # Z, added before the activation
            y = t.op("Add", [y, node.inputs[3]])
        return _activation(graph, t, node, y, kind, dict(zip(names, params))) if kind else y
    if node.op_type == "FusedGemm":
        if kind and kind not in _GEMM_ACTIVATIONS:
            raise TinyTLError(f"FusedGemm {node.name}: activation '{kind}' has no ai.onnx op")
        gemm = {k: v for k, v in a.items() if not k.startswith("activation")}
        y = t.op("Gemm", list(node.inputs), attributes=gemm, name=node.name)
        attrs = {k[len("activation_"):]: v.value for k, v in a.items() if k.startswith("activation_")}
        return _activation(graph, t, node, y, kind, attrs) if kind else y
    if node.op_type in ("BiasGelu", "FastGelu", "Gelu"):
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            x = t.op("Add", [x, node.inputs[1]])
        return gelu(graph, t, x, tanh=node.op_type == "FastGelu")
    if node.op_type == "QuickGelu":
        alpha = a.get_float("alpha", 1.702)
        return t.op("Mul", [x, t.op("Sigmoid", [x if alpha == 1 else t.op("Mul", [x, _scalar(graph, alpha)])])])
    if node.op_type == "FusedMatMul":
        if a.get_int("transBatchA", 0) or a.get_int("transBatchB", 0):
            raise TinyTLError(f"FusedMatMul {node.name}: transposed batch axes are not supported")
        if not _ranks_known(node):
            return None  # (lowered once shape inference has reached it)
        ab = list(node.inputs)
        for i, flag in enumerate(("transA", "transB")):
            if a.get_int(flag, 0):
                perm = list(range(len(ab[i].shape)))
                perm[-2:] = perm[:-3:-1]
                ab[i] = t.op("Transpose", [ab[i]], attributes={"perm": perm})
        y = t.op("MatMul", ab, name=node.name)
        alpha = a.get_float("alpha", 1.0)
        return y if alpha == 1 else t.op("Mul", [y, _scalar(graph, alpha)])
    return None


def _ranks_known(node: ir.Node) -> bool:
    return all(v.shape is not None for v, flag in zip(node.inputs, ("transA", "transB")) if node.attributes.get_int(flag, 0))


class UnfuseOrtOpsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        while True:
            waiting = 0
            for node in list(model.graph):
                if node.domain != MS or node.op_type not in OPS:
                    continue
                t = ir.tape.Tape(model.graph)
                y = _lower(model.graph, node, t)
                if y is None:
                    waiting += node.op_type == "FusedMatMul"
                    continue
                replace_node(model.graph, node, t.nodes, y)
                modified = True
            if not waiting:
                if modified:  # (a transposed FusedMatMul input is often transposed already for another reader)
                    CommonSubexpressionEliminationPass()(model)
                return ir.passes.PassResult(model, modified)
            InferShapesPass()(model)  # (the lowered ops have shapes now: ranks reach FusedMatMul's inputs)
            matmuls = [n for n in model.graph if n.domain == MS and n.op_type == "FusedMatMul"]
            if not any(_ranks_known(n) for n in matmuls):
                raise TinyTLError(f"FusedMatMul {matmuls[0].name}: the rank of an input it transposes is unknown")
