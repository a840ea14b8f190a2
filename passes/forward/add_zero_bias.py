"""Give every Conv and Gemm without a bias a zero bias initializer, unless a norm follows it.

Why: TinyTL-B trains biases; a conv exported without one and with no norm after it would
otherwise have nothing to train. A conv that feeds a norm gets none, as in the paper: the norm's
shift is trained instead and a bias before it adds next to nothing (nothing at all before a
BatchNorm over frozen statistics). Not a pooling written as a conv, nor a lite-module conv.
Exact: adding zero changes no output. Memory: one vector per layer; a bias gradient is a sum of dY
and needs no saved activation.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import LITE, add_initializer, const_array, is_constant
from tinytlc.passes.forward.norms import find_norms


def bias_name(weight: ir.Value) -> str:
    return weight.name[: -len("weight")] + "bias" if weight.name.endswith("weight") else weight.name + ".bias"


class AddZeroBiasPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        normed = {id(n.input) for n in find_norms(graph)}
        for node in list(graph):
            if node.op_type not in ("Conv", "Gemm") or (len(node.inputs) > 2 and node.inputs[2] is not None):
                continue
            if id(node.outputs[0]) in normed:
                continue
            w = const_array(node.inputs[1])
            # not a pooling written as a conv, nor a lite-module conv
            if w is None or is_constant(node.inputs[1]) or node.inputs[1].meta.get(LITE):
                continue
            if node.op_type == "Conv":
                width = w.shape[0]
            else:
                width = w.shape[0] if node.attributes.get_int("transB", 0) else w.shape[1]
            node.resize_inputs(3)
            node.replace_input_with(2, add_initializer(graph, bias_name(node.inputs[1]), np.zeros(width, np.float32)))
            modified = True
        return ir.passes.PassResult(model, modified)
