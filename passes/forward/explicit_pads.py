"""Write `auto_pad` (SAME_UPPER, SAME_LOWER, VALID) as explicit `pads` on Conv and pools.

Why: ONNX Runtime 1.19.2's ConvGrad ignores `auto_pad` and computes gradients as if there were
no padding: a tf2onnx or Keras file with 'same' convs trains with silently wrong gradients (off by
up to 125% on a 3x3 stem). The frozen-conv and depthwise passes read `pads` too.
Exact: with the image size fixed, SAME pads are a function of the input shape (ONNX's rule:
output ceil(in / stride), total padding max(0, (out - 1) * stride + (k - 1) * dilation + 1 - in),
the odd pixel at the end for SAME_UPPER, at the start for SAME_LOWER); VALID means no padding.
(onnxscript's normalize_pad_format rule leaves out dilation, and does not cover pools.)
Needs the input shapes inferred. A SAME op whose spatial size is not known yet is left for a later
run (`strict=False`, before constant folding) or refused (`strict=True`: it cannot be made exact).
"""

from __future__ import annotations

import onnx_ir as ir

from tinytlc.errors import TinyTLError

_OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")


def same_pads(size: list[int], kernel: list[int], strides: list[int], dilations: list[int], upper: bool) -> list[int]:
    begins, ends = [], []
    for x, k, s, d in zip(size, kernel, strides, dilations):
        total = max(0, (-(-x // s) - 1) * s + (k - 1) * d + 1 - x)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


class ExplicitPadsPass(ir.passes.InPlacePass):
    def __init__(self, strict: bool = True):
        super().__init__()
        self.strict = strict

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in model.graph:
            mode = node.attributes.get_string("auto_pad", "NOTSET")
            if node.op_type not in _OPS or node.domain != "" or mode == "NOTSET":
                continue
            x = node.inputs[0]
            kernel = list(node.attributes.get_ints("kernel_shape", []))
            if not kernel and node.op_type == "Conv" and node.inputs[1].shape is not None:
                kernel = [int(k) for k in node.inputs[1].shape[2:]]
            spatial = list(x.shape)[2:] if x.shape is not None else []
            if mode == "VALID":
                node.attributes.pop("pads", None)  # (zero by default)
            else:
                if not kernel or len(spatial) != len(kernel) or not all(isinstance(d, int) for d in spatial):
                    if not self.strict:
                        continue
                    raise TinyTLError(f"{node.op_type} {node.name}: auto_pad={mode} on an input of unknown size "
                                      f"({x.shape}); tinytlc needs explicit pads to train it exactly")
                n = len(kernel)
                pads = same_pads(spatial, kernel, list(node.attributes.get_ints("strides", [1] * n)),
                                 list(node.attributes.get_ints("dilations", [1] * n)), mode == "SAME_UPPER")
                node.attributes["pads"] = ir.AttrInt64s("pads", pads)
            node.attributes.pop("auto_pad")
            modified = True
        return ir.passes.PassResult(model, modified)
