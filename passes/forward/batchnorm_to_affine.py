"""Write inference-mode BatchNormalization as y = x * scale + shift over its frozen statistics.

Why: ORT's autodiff replaces BatchNormalization with training-mode BatchNormInternal, which
normalises with batch statistics (a different forward from the pretrained network's) and keeps
the input for a full BN backward. Transfer learning keeps the running statistics frozen.
Exact: scale = gamma / sqrt(var + eps) and shift = beta - mean * scale are computed in the graph
from gamma and beta, so those two can still train (FT-Norm+Last, FT-Full); mean and var are
constants. Memory: what is saved for backward is just what Mul and Add need.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import add_initializer, const_array, replace_node


class BatchNormToAffinePass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for bn in list(graph):
            if bn.op_type != "BatchNormalization" or bn.domain != "" or len(bn.outputs) != 1:
                continue
            x, gamma, beta, mean_v, var_v = bn.inputs[:5]
            mean, var = const_array(mean_v), const_array(var_v)
            if mean is None or var is None:
                continue
            eps = bn.attributes.get_float("epsilon", 1e-5)
            rank = len(x.shape) if x.shape is not None else 4
            prefix = bn.name or gamma.name
            inv_std = add_initializer(graph, f"{prefix}.inv_std", 1.0 / np.sqrt(var + eps), constant=True)
            neg_mean = add_initializer(graph, f"{prefix}.neg_mean", -mean, constant=True)
            # (C,) -> (C, 1, 1) to broadcast over NCHW
            bshape = add_initializer(graph, f"{prefix}.bshape", np.array([-1] + [1] * (rank - 2), np.int64),
                                    constant=True)
            tape = ir.tape.Tape(graph)
            scale = tape.op("Mul", [gamma, inv_std])
            shift = tape.op("Add", [beta, tape.op("Mul", [neg_mean, scale])])
            y = tape.op("Add", [tape.op("Mul", [x, tape.op("Reshape", [scale, bshape])]),
                                tape.op("Reshape", [shift, bshape])])
            replace_node(graph, bn, tape.nodes, y)
            modified = True
        return ir.passes.PassResult(model, modified)
