"""Give every Conv and Gemm without a bias a zero bias initializer (not a pooling written as a conv).

Why: TinyTL-B trains biases; a conv exported without one (its BN not folded, or no BN at all)
would otherwise have nothing to train. Exact: adding zero changes no output. Memory: one vector per
layer; a bias gradient is a sum of dY and needs no saved activation.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import add_initializer, const_array, is_constant
from tinytlc.passes.forward.lite_residual import LITE


def bias_name(weight: ir.Value) -> str:
    return weight.name[: -len("weight")] + "bias" if weight.name.endswith("weight") else weight.name + ".bias"


class AddZeroBiasPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for node in list(graph):
            if node.op_type not in ("Conv", "Gemm") or (len(node.inputs) > 2 and node.inputs[2] is not None):
                continue
            w = const_array(node.inputs[1])
            # not a pooling written as a conv, nor a lite-module conv (a norm follows it)
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
