"""Keep a zero Pad in front of a MaxPool: ORT must not merge it into the pool.

Why: ONNX Runtime 1.19.2's PadFusion (basic graph optimisation, on in every session: training,
eval and whoever runs the exported model) moves a zero Pad into the next MaxPool's `pads`. MaxPool
pads with -inf, not 0, so a window at the border whose values are all negative then gives its
largest negative value instead of 0 (BiT's stem: conv, ConstantPad2d(1, 0), MaxPool 3x3/2). ORT's
own training graph escapes only where the MaxPool keeps its Indices output for the backward.
PadFusion leaves a pool whose `auto_pad` is not NOTSET, so the pool gets auto_pad=VALID, which is
what it computed already: no padding of its own (its own pads and ceil_mode's extra windows, if
any, become a -inf Pad).
Exact: the same function as the graph as exported; the padded copy stays, as in ORT's own graph.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import add_constant, const_array
from tinytlc.passes.forward.avgpool_to_conv import ceil_extra


def _zero_pad(node: ir.Node | None) -> bool:
    if node is None or node.op_type != "Pad" or node.domain != "" or \
            node.attributes.get_string("mode", "constant") != "constant":
        return False
    value = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else 0.0
    return value is not None and not np.any(value)


class KeepPadBeforeMaxPoolPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for pool in list(graph):
            if pool.op_type != "MaxPool" or pool.domain != "" or not _zero_pad(pool.inputs[0].producer()):
                continue
            if pool.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
                continue  # PadFusion leaves it
            x, kernel = pool.inputs[0], list(pool.attributes.get_ints("kernel_shape"))
            pads = list(pool.attributes.get_ints("pads", [0] * 2 * len(kernel)))
            extra = ceil_extra(pool, x, kernel, list(pool.attributes.get_ints("strides", [1] * len(kernel))),
                               list(pool.attributes.get_ints("dilations", [1] * len(kernel))), pads) \
                if len(kernel) == 2 and x.shape is not None and len(x.shape) == 4 else None
            if extra is None:
                continue  # (a ceil_mode pool of unknown size: left as it is)
            pads = pads[:2] + [p + e for p, e in zip(pads[2:], extra)]
            if any(pads):  # the pool's own padding (and ceil_mode's windows) as a -inf Pad
                full = [0, 0, *pads[:2], 0, 0, *pads[2:]]
                padded = ir.Node("", "Pad", [x, add_constant(graph, "tinytlc.pads", full),
                                             add_constant(graph, "tinytlc.minus_inf", np.float32(-np.inf))],
                                 name=f"{pool.name}_pads")
                graph.insert_before(pool, padded)
                pool.replace_input_with(0, padded.outputs[0])
            pool.attributes.pop("ceil_mode", None)
            pool.attributes.pop("pads", None)
            pool.attributes["auto_pad"] = ir.AttrString("auto_pad", "VALID")
            modified = True
        return ir.passes.PassResult(model, modified)
