"""Write a 2-D AveragePool as a depthwise Conv with constant weights 1/(kh*kw).

Why: ONNX Runtime 1.19.2's CPU AveragePoolGrad takes its output shape from static shape
inference; with the symbolic batch dimension every tinytlc graph has, the first training step
dies with SIGFPE. ConvGrad takes shapes from its inputs at run time.
Exact: when padding counts toward the average (count_include_pad=1) or there is none, and
ceil_mode is off, every window averages kh*kw input values (padding as zeros) - exactly a
depthwise conv with uniform weights, same strides, pads and dilations.
Memory: until the frozen-conv backward pass exists, ConvGrad keeps the pool's input alive.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.errors import TinyTLError
from tinytlc.passes.forward._values import add_initializer, replace_node


class AveragePoolToConvPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for pool in list(graph):
            if pool.op_type != "AveragePool" or pool.domain != "":
                continue
            x = pool.inputs[0]
            kernel = list(pool.attributes.get_ints("kernel_shape", []))
            pads = list(pool.attributes.get_ints("pads", [0] * 2 * len(kernel)))
            if pool.attributes.get_int("ceil_mode", 0) or (any(pads) and not pool.attributes.get_int("count_include_pad", 0)):
                raise TinyTLError(f"AveragePool {pool.name} uses ceil_mode or excludes padding from the average; "
                                  "onnxruntime-training 1.19.2 cannot train through it")
            if len(kernel) != 2 or x.shape is None or len(x.shape) != 4 or not isinstance(x.shape[1], int):
                raise TinyTLError(f"AveragePool {pool.name}: need a 4-D input with a known channel count")
            channels = x.shape[1]
            weight = add_initializer(graph, f"{pool.name or 'avgpool'}.weight",
                                     np.full((channels, 1, *kernel), 1.0 / np.prod(kernel), np.float32), constant=True)
            conv = ir.Node("", "Conv", [x, weight], attributes=[
                ir.AttrInt64s("kernel_shape", kernel),
                ir.AttrInt64s("strides", list(pool.attributes.get_ints("strides", [1, 1]))),
                ir.AttrInt64s("pads", pads),
                ir.AttrInt64s("dilations", list(pool.attributes.get_ints("dilations", [1, 1]))),
                ir.AttrInt64("group", channels)], name=f"{pool.name}_as_conv")
            replace_node(graph, pool, [conv], conv.outputs[0])
            modified = True
        return ir.passes.PassResult(model, modified)
