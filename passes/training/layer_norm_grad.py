"""LayerNorm backward from ORT's multithreaded element-wise ops and reductions.

Why: ORT's CPU LayerNormalizationGrad is one thread of Eigen over a column-major view of the rows,
and it fills four row-sized temporaries: 39 ms for [8, 1024, 384] on this machine, where the same
arithmetic written as ops takes 6 ms (2 threads). ConvNeXt-Tiny `bias`, 128 px, batch 8: 46 ms of
a 370 ms step was LayerNormalizationGrad.

What it writes, for LayerNormalizationGrad(dY, X, gamma, mean, r) normalizing the axes from `axis`
on (r = 1 / std; mean and r are the forward's, saved per row):
    xh = (X - mean) * r                        the normalized input
    g  = dY * gamma
    dX = r * (g - mean(g) - xh * mean(g * xh))  (means over the normalized axes, per row)
    dgamma = sum over the rows of dY * xh      only where it is read (norm+last, full)
    dbeta  = sum over the rows of dY
Nothing more is kept for backward: it reads what LayerNormalizationGrad read. `mean` is read as
mean + 0 * dY[0, .., 0] so that xh is made when dY exists; from forward values alone ORT may make
every xh early and hold them all through the backward. dX waits for dgamma and dbeta (gamma + 0 *
dbeta[0, .., 0]): otherwise ORT runs those sums last, before the optimizer, and every LayerNorm's dY
lives until then (ConvNeXt-Tiny `lite+bias`, 128 px, batch 8: step peak 153.0 -> 170.6 MiB, when
the pass first landed). The temporaries live within the node's stretch of the backward, as the
Eigen ones did.
Exact up to summation order: ORT computes dX = B - mean(B) - xh * mean(B * xh) with B = g * r,
the same expression with r taken out.
"""

from __future__ import annotations

import onnx_ir as ir

from tinytlc.passes.forward._values import opset
from tinytlc.passes.training._graph import Constants, after, replace_node_outputs, wanted


def _takes(grad: ir.Node) -> bool:
    if grad.op_type != "LayerNormalizationGrad" or grad.domain != "com.microsoft" or len(grad.inputs) != 5:
        return False
    x = grad.inputs[1]  # (axis 0 would leave no rows to sum dgamma and dbeta over)
    return (x.shape is not None and x.dtype == ir.DataType.FLOAT
            and grad.attributes.get_int("axis", -1) % len(x.shape) > 0 and any(wanted(v) for v in grad.outputs))


def _row_mean(graph: ir.Graph, tape: ir.tape.Tape, const: Constants, v: ir.Value, axes: list[int]) -> ir.Value:
    """ReduceMean over `axes`, kept (axes are an input from opset 18 on)."""
    if opset(graph) >= 18:
        return tape.op("ReduceMean", [v, const(axes)], attributes={"keepdims": 1})
    return tape.op("ReduceMean", [v], attributes={"axes": axes, "keepdims": 1})


class LayerNormGradPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        const = Constants(graph)
        grads = [n for n in graph if _takes(n)]
        for grad in grads:
            dy, x, gamma, mean, r = grad.inputs
            dx, dgamma, dbeta = (list(grad.outputs) + [None, None])[:3]
            rank = len(x.shape)
            axis = grad.attributes.get_int("axis", -1) % rank
            normalized, rows = list(range(axis, rank)), const(list(range(axis)))
            tape, new = ir.tape.Tape(graph), []
            if wanted(dx) or wanted(dgamma):
                xh = tape.op("Mul", [tape.op("Sub", [x, after(const, tape, mean, dy, rank)]), r])
            sums = []  # dgamma and dbeta: dX waits for them, else ORT runs them late and dY lives on
            if wanted(dgamma):
                sums.append(tape.op("ReduceSum", [tape.op("Mul", [dy, xh]), rows], attributes={"keepdims": 0}))
                new.append((dgamma, sums[-1]))
            if wanted(dbeta):
                sums.append(tape.op("ReduceSum", [dy, rows], attributes={"keepdims": 0}))
                new.append((dbeta, sums[-1]))
            if wanted(dx):
                for s in sums:  # gamma + 0 * s[0, .., 0]: a copy of gamma, small
                    gamma = after(const, tape, gamma, s, len(normalized))
                g = tape.op("Mul", [dy, gamma])
                mean_g = _row_mean(graph, tape, const, g, normalized)
                mean_gxh = _row_mean(graph, tape, const, tape.op("Mul", [g, xh]), normalized)
                centred = tape.op("Sub", [tape.op("Sub", [g, mean_g]), tape.op("Mul", [xh, mean_gxh])])
                new.append((dx, tape.op("Mul", [centred, r])))
            name = next(v.name for v in grad.outputs if wanted(v))
            for i, node in enumerate(tape.nodes):  # backward values, named after the first gradient
                node.outputs[0].name = f"{name}.layer_norm.{i}"
            graph.insert_before(grad, tape.nodes)
            replace_node_outputs(graph, grad, new)
        return ir.passes.PassResult(model, bool(grads))
