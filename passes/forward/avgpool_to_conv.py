"""Write a 2-D AveragePool as a depthwise Conv with constant weights 1/(kh*kw); a 1-D one the same
way between an Unsqueeze and a Squeeze (Next-ViT's AvgPool1d over tokens).

Why: ONNX Runtime 1.19.2's CPU AveragePoolGrad takes its output shape from static shape
inference; with the symbolic batch dimension every tinytlc graph has, the first training step
dies with SIGFPE. ConvGrad takes shapes from its inputs at run time.
Exact: when padding counts toward the average (count_include_pad=1) or there is none, every
window averages kh*kw input values (padding as zeros) - exactly a depthwise conv with uniform
weights, same strides, pads and dilations. Where padding does not count (count_include_pad=0, as
timm's ResNet-D shortcut and torch's default for padded pools in Inception-style nets), the conv
sums each window (weights 1) and a constant map divides by how many input values it covers.
ceil_mode's extra windows (those that start inside the input or its begin padding, as torch
keeps them) become end padding. With count_include_pad=1 as well, implementations disagree on
the divisor of a window that reaches into that extra padding (ORT 1.19.2, onnx's reference and
torch give three answers: HF EfficientNet's pooler, AvgPool2d(1280, ceil_mode=True) on a 7 x 7 map,
is torch's global average); in a graph PyTorch's exporter wrote (producer "pytorch": a module, or
a file exported from one), the pool averages as torch does: the real padding counts, the extra
does not (a sum, divided by those counts). From other producers that case is refused.
Memory: until the frozen-conv backward pass exists, ConvGrad keeps the pool's input alive; the
division's gradient needs only its constant.
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
            strides = list(pool.attributes.get_ints("strides", [1] * len(kernel)))
            dilations = list(pool.attributes.get_ints("dilations", [1] * len(kernel)))
            if len(kernel) not in (1, 2) or x.shape is None or len(x.shape) != 2 + len(kernel) or \
                    not isinstance(x.shape[1], int):
                raise TinyTLError(f"AveragePool {pool.name}: need a 1-D or 2-D pool over (N, C, ...) with a known "
                                  f"channel count, got a {len(kernel)}-D pool of a {len(x.shape or [])}-D input")
            lifted = len(kernel) == 1  # (N, C, L) pooled as (N, C, 1, L): timm's AvgPool1d over tokens
            if lifted:
                n, c, length = x.shape
                axis = add_initializer(graph, "tinytlc.axis_2", np.array([2]), constant=True)
                x, x_type = ir.Node("", "Unsqueeze", [x, axis], name=f"{pool.name}_2d").outputs[0], x.type
                x.shape, x.type = ir.Shape([n, c, 1, length]), x_type
                kernel, strides, dilations, pads = [1] + kernel, [1] + strides, [1] + dilations, [0, pads[0], 0, pads[1]]
            include_pad = pool.attributes.get_int("count_include_pad", 0)
            extra = ceil_extra(pool, x, kernel, strides, dilations, pads)
            if extra is None:
                raise TinyTLError(f"AveragePool {pool.name} uses ceil_mode on a map whose size is unknown after shape "
                                  "inference, so its windows cannot be counted")
            as_torch = any(extra) and include_pad  # (the real padding counts, ceil_mode's extra does not)
            if as_torch and model.producer_name != "pytorch":
                raise TinyTLError(f"AveragePool {pool.name} uses ceil_mode where it adds windows, averaged over padding, "
                                  "which implementations divide differently; only a pool PyTorch exported can be read "
                                  "(as torch averages)")
            pads = pads[:2] + [p + e for p, e in zip(pads[2:], extra)]
            channels = x.shape[1]
            counted = (not any(pads) or include_pad) and not as_torch  # every window averages k_h * k_w values
            weight = add_initializer(graph, f"{pool.name or 'avgpool'}.weight",
                                     np.full((channels, 1, *kernel), 1.0 / np.prod(kernel) if counted else 1.0,
                                             np.float32), constant=True)
            conv = ir.Node("", "Conv", [x, weight], attributes=[
                ir.AttrInt64s("kernel_shape", kernel), ir.AttrInt64s("strides", strides), ir.AttrInt64s("pads", pads),
                ir.AttrInt64s("dilations", dilations), ir.AttrInt64("group", channels)], name=f"{pool.name}_as_conv")
            nodes = [x.producer(), conv] if lifted else [conv]
            if not counted:  # a sum over each window, divided by how many input values it holds
                counts = _counts(x.shape[2:], kernel, strides, dilations, pads, extra if as_torch else None)
                inverse = add_initializer(graph, f"{pool.name or 'avgpool'}.inverse_count", 1.0 / counts, constant=True)
                nodes.append(ir.Node("", "Mul", [conv.outputs[0], inverse], name=f"{pool.name}_mean"))
            if lifted:
                nodes.append(ir.Node("", "Squeeze", [nodes[-1].outputs[0], x.producer().inputs[1]], name=f"{pool.name}_1d"))
            replace_node(graph, pool, nodes, nodes[-1].outputs[0])
            modified = True
        return ir.passes.PassResult(model, modified)


def ceil_extra(pool: ir.Node, x: ir.Value, kernel, strides, dilations, pads) -> list[int] | None:
    """End padding that gives ceil_mode's extra windows (zeros without it or where it adds none);
    None if the spatial size is unknown."""
    if not pool.attributes.get_int("ceil_mode", 0):
        return [0, 0]
    if not all(isinstance(d, int) for d in x.shape[2:]):
        return None
    extra = []
    for i, size in enumerate(x.shape[2:]):
        span = size + pads[i] + pads[i + 2] - dilations[i] * (kernel[i] - 1) - 1
        out = -(-span // strides[i]) + 1
        if (out - 1) * strides[i] >= size + pads[i]:  # a last window starting in the end padding is dropped
            out -= 1
        extra.append(max(0, (out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - (size + pads[i] + pads[i + 2])))
    return extra


def _counts(size, kernel, strides, dilations, pads, extra=None) -> np.ndarray:
    """(1, 1, H_out, W_out): how many input values (not padding) each window covers; with `extra`
    (ceil_mode's share of the end pads), how many input or real padding values, as torch counts."""
    if extra is None:
        ones = np.pad(np.ones(size, np.float32), [(pads[0], pads[2]), (pads[1], pads[3])])
    else:
        ones = np.pad(np.ones([size[0] + pads[0] + pads[2] - extra[0], size[1] + pads[1] + pads[3] - extra[1]],
                              np.float32), [(0, extra[0]), (0, extra[1])])
    h = (ones.shape[0] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    w = (ones.shape[1] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    counts = np.zeros((h, w), np.float32)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            counts += ones[i * dilations[0]: i * dilations[0] + (h - 1) * strides[0] + 1: strides[0],
                           j * dilations[1]: j * dilations[1] + (w - 1) * strides[1] + 1: strides[1]]
    return counts[None, None]
