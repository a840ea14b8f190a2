"""GELU input recomputed in the backward from its LayerNorm's input, instead of kept from the forward.

What it removes: ORT's GeluGrad(dY, X) reads the GELU's input X, so each transformer-style MLP
(LayerNorm -> Linear -> GELU -> Linear: ConvNeXt, ViT, Swin) keeps X, four times the block's width,
from the forward until its backward. These are the largest tensors a `bias` step keeps: ConvNeXt-Tiny
at 128 px, batch 8, holds 85 MiB of them at its step peak of 119 MiB. Where
    X = LayerNorm(x; gamma, beta) W + b        gamma, beta, W, b parameters; x kept anyway
(x is read by the LayerNorm's own backward; parameters do not change before the optimizer), this
pass recomputes X just before its GeluGrad with the forward's own ops on the same inputs, bit for
bit, and the forward's X dies after the GELU.
What it costs: one more LayerNorm and one GEMM a block in the backward (the MLP's first Linear once
more), and X and the LayerNorm's output alive while the GeluGrad runs, as X was.
Order: the recomputation reads gamma + 0 * dY[0, .., 0] (a copy of gamma, small), so it cannot run
before the GELU's output gradient exists; from forward values alone ORT may run it early and hold
every X again.
Exact: the same ops on the same values (gamma + 0 is gamma).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.training._graph import Constants, forward_nodes, wanted
from tinytlc.passes.training.activation_masks import kept_anyway


def _fixed(v: ir.Value) -> bool:
    """The same all step: an initializer or graph input (a parameter, frozen or trained: the
    optimizer runs after the backward), or made from those alone (a Linear's W^T)."""
    node = v.producer()
    if node is None:
        return True
    return node.op_type in ("Transpose", "Reshape", "Identity", "Cast") and all(
        i is None or _fixed(i) for i in node.inputs)


def _recipe(x: ir.Value, forward: set[ir.Node]) -> tuple[ir.Node, ir.Node, ir.Node | None] | None:
    """(LayerNorm, MatMul, Add or None) with X = Add(MatMul(LayerNorm(x), W), b), or None."""
    add = x.producer()
    if add is None or add not in forward:
        return None
    if add.op_type == "Add" and add.domain == "":
        mm = next((i.producer() for i in add.inputs if i.producer() is not None and i.producer().op_type == "MatMul"), None)
        if mm is None:
            return None
        bias = next(i for i in add.inputs if i is not mm.outputs[0])
        if not _fixed(bias):
            return None
    elif add.op_type == "MatMul":
        mm, add = add, None
    else:
        return None
    a, w = mm.inputs
    norm = a.producer()
    if (norm is None or norm.op_type != "LayerNormalization" or norm.domain != "" or not _fixed(w)
            or not (norm.inputs[0].producer() is None or kept_anyway(norm.inputs[0], forward))
            or not all(i is None or _fixed(i) for i in norm.inputs[1:])):
        return None
    return norm, mm, add


class RecomputeGeluInputPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        const = Constants(graph)
        forward = forward_nodes(graph)
        modified = False
        for grad in [n for n in graph if n.op_type == "GeluGrad" and n.domain == "com.microsoft"]:
            dy, x = grad.inputs
            recipe = _recipe(x, forward)
            if recipe is None or dy.shape is None or not wanted(grad.outputs[0]):
                continue
            norm, mm, add = recipe
            tape = ir.tape.Tape(graph)
            corner = tape.op("Slice", [dy, const([0] * len(dy.shape)), const([1] * len(dy.shape))])
            zero = tape.op("Reshape", [tape.op("Mul", [corner, const(np.float32(0))]), const([1])])
            gamma = tape.op("Add", [norm.inputs[1], zero])  # gamma + 0 * dY[0, .., 0]: waits for dY
            attrs = {k: a.value for k, a in norm.attributes.items()}
            a = tape.op("LayerNormalization", [norm.inputs[0], gamma, *norm.inputs[2:]], attributes=attrs)
            y = tape.op("MatMul", [a, mm.inputs[1]])
            if add is not None:
                y = tape.op("Add", [y if i is mm.outputs[0] else i for i in add.inputs])
            for i, node in enumerate(tape.nodes):
                node.outputs[0].name = f"{x.name}.recomputed.{i}"
            graph.insert_before(grad, tape.nodes)
            grad.replace_input_with(1, y)
            modified = True
        return ir.passes.PassResult(model, modified)
