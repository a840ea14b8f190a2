"""Write a bidirectional LSTM or GRU as two forward ones, the second over the time-reversed input.

Why: ORT 1.19.2's LSTM and GRU training kernels run the forward direction only ("only supports the
forward direction"), and ORT turns every LSTM into its training op, so a bidirectional one (timm's
Sequencer2D) was refused for every method, `last` included.
What it writes, for a bidirectional op over X (time on axis 0), weights W, R, B and initial states
stacked per direction (axis 0):
    Y_f, H_f[, C_f] = op_forward(X, W[0:1], R[0:1], B[0:1], ..., h0[0:1][, c0[0:1]])
    Y_r, H_r[, C_r] = op_forward(reverse(X), W[1:2], ..., h0[1:2][, c0[1:2]])
    Y = Concat(Y_f, reverse(Y_r)) on the direction axis; H, C = Concat(H_f, H_r)[, Concat(C_f, C_r)]
The reverse direction of the ONNX op is exactly the forward recurrence over the reversed sequence,
its outputs reversed back. The reversals are Gathers of constant indices (ORT's SliceGrad fails on
a negative step); the weights are Slices of the parameters, so their gradients reach them.
Left alone: sequence_lens given (each sequence would reverse over its own length), a time axis of
unknown length, layout=1 (batch first: ORT 1.19.2 runs no such LSTM or GRU at all; torch writes
layout 0 with Transposes).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import add_constant

_STACKED = {"LSTM": (1, 2, 3, 5, 6, 7), "GRU": (1, 2, 3, 5)}  # W, R, B, initial_h[, initial_c, P]


def _split(node: ir.Node) -> bool:
    graph, a = node.graph, node.attributes
    x = node.inputs[0]
    seq_lens = node.inputs[4] if len(node.inputs) > 4 else None
    steps = x.shape[0] if x.shape is not None else None
    if a.get_int("layout", 0) or seq_lens is not None or not isinstance(steps, int):
        return False
    t = ir.tape.Tape(graph)
    ints = lambda v: add_constant(graph, "tinytlc.rnn", np.asarray(v, np.int64))  # noqa: E731
    reverse = lambda v: t.op("Gather", [v, ints(np.arange(steps - 1, -1, -1))], attributes={"axis": 0})  # noqa: E731
    per_direction = {"activations": 3 if node.op_type == "LSTM" else 2,
                     "activation_alpha": None, "activation_beta": None}
    outs = []
    for d in (0, 1):
        inputs = list(node.inputs)
        if d:
            inputs[0] = reverse(x)
        for i in _STACKED[node.op_type]:
            if i < len(inputs) and inputs[i] is not None:
                inputs[i] = t.op("Slice", [inputs[i], ints([d]), ints([d + 1]), ints([0])])
        attrs = {k: v.value for k, v in a.items() if k != "direction" and k not in per_direction}
        for k, n in per_direction.items():
            if k in a:
                values = list(a[k].value)
                half = n or len(values) // 2
                attrs[k] = values[d * half:(d + 1) * half]
        outs.append(t.op_multi_out(node.op_type, inputs, attrs, num_outputs=len(node.outputs)))
    new = [t.op("Concat", [outs[0][0], reverse(outs[1][0])], attributes={"axis": 1})]  # Y: (time, direction, batch, hidden)
    new += [t.op("Concat", [outs[0][i], outs[1][i]], attributes={"axis": 0}) for i in range(1, len(node.outputs))]
    graph.insert_before(node, t.nodes)
    for old, value in zip(node.outputs, new):
        value.shape, value.type = old.shape, old.type
        ir.convenience.replace_all_uses_with(old, value, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    return True


class SplitBidirectionalRnnPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type in _STACKED and node.domain in ("", "ai.onnx") and \
                    node.attributes.get_string("direction", "forward") == "bidirectional":
                modified |= _split(node)
        return ir.passes.PassResult(model, modified)
