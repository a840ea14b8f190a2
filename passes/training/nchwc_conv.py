"""Depthwise convs with a trained weight on ORT's NCHWc kernels, written out by hand.

Why: ORT's fastest CPU convs are its NCHWc ones (channels in blocks of 8 or 16, the CPU's vector
width). Its layout transformer gives them only to a Conv whose weight is an initializer, because it
reorders the weight once, at load. A trained weight is a graph input, so the depthwise convs of
`full` ran in plain NCHW, where ORT loops over images and channels with one small GEMM each: a 3x3
conv on [8, 960, 4, 4] took 1.6 ms there, 0.09 ms on NCHWc.

What it writes, for such a Conv(X, W, B) (and the Convs the backward passes build over a flipped
trained weight):
    Y = ReorderOutput(nchwc.Conv(ReorderInput(X), W_blocked, B))
where W_blocked is W in MLAS's blocked filter layout, made each step by a Reshape and a Transpose
(a copy of W, which is small). The ops are ORT's own contrib ops (domain com.microsoft.nchwc), the
ones its transformer writes. Nothing more is kept for backward: ConvGrad still reads the NCHW X;
the blocked copies of X and Y live for one node each. Measured on MobileNetV2 `full`, 128 px,
batch 8 (ORT's profiler): 196 -> 161 ms a step.

Which convs: depthwise ones, channels a multiple of the block: `full`'s, and the input-gradient
Convs depthwise-input-grad writes over their flipped weights. Measured and left out (MobileNetV2,
128 px, batch 8): the lite modules' 2-group convs (their blocked weights need a 6-D Transpose,
which ORT runs element by element: 4.9 ms a step against 3.7 ms saved in the convs); ungrouped
convs are GEMMs in NCHW already, and each NCHWc conv pays two layout copies.

The blocked layout depends on the CPU (block 16 with AVX-512, 8 with AVX2), so the pass writes
the block of the machine it runs on and compile records it (manifest "nchwc_block"); a session
opened on a CPU with another block refuses to train.

Exact up to summation order: the NCHWc kernels add the same products in another order.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx_ir as ir

from tinytlc.passes.training._graph import Constants, is_depthwise, replace_node_outputs

DOMAIN = "com.microsoft.nchwc"


@functools.cache
def block_size() -> int:
    """MLAS's NCHWc block on this CPU: ReorderInput pads 4 channels up to one block."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("ReorderInput", ["x"], ["y"], domain=DOMAIN)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return int(sess.run(None, {"x": np.zeros((1, 4, 1, 1), np.float32)})[0].shape[1])


def _fits(conv: ir.Node, block: int) -> bool:
    """A depthwise 2-D float Conv whose weight is no initializer, channels in whole blocks."""
    if conv.op_type != "Conv" or conv.domain != "" or len(conv.inputs) < 2:
        return False
    w, group = conv.inputs[1], conv.attributes.get_int("group", 1)
    return is_depthwise(w, group) and all(isinstance(d, int) for d in w.shape) and group % block == 0 \
        and w.dtype == ir.DataType.FLOAT and ir.convenience.get_const_tensor(w) is None


class NchwcConvPass(ir.passes.InPlacePass):
    def __init__(self, block: int | None = None):
        super().__init__()
        self.block = block

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, block = model.graph, self.block or block_size()
        const = Constants(graph)

        convs = [n for n in graph if _fits(n, block)]
        for conv in convs:
            x, w = conv.inputs[:2]
            b = conv.inputs[2] if len(conv.inputs) > 2 else None
            out_ch, _, kh, kw = w.shape
            tape = ir.tape.Tape(graph)
            # MLAS's depthwise filter layout ("OIHWBo"): [C / block, kh, kw, block]
            w4 = tape.op("Reshape", [w, const([out_ch // block, block, kh * kw])])
            wt = tape.op("Transpose", [w4], attributes={"perm": [0, 2, 1]})
            blocked_w = tape.op("Reshape", [wt, const([out_ch, 1, kh, kw])])
            blocked_x = tape.op("ReorderInput", [x], domain=DOMAIN)
            attrs = {k: a.value for k, a in conv.attributes.items()}
            blocked_y = tape.op("Conv", [blocked_x, blocked_w] + ([b] if b is not None else []), attributes=attrs,
                                domain=DOMAIN)
            y = tape.op("ReorderOutput", [blocked_y], attributes={"channels": out_ch}, domain=DOMAIN)
            old = conv.outputs[0]
            for i, node in enumerate(tape.nodes):
                node.outputs[0].name = f"{old.name}.nchwc.{i}"
            graph.insert_before(conv, tape.nodes)
            replace_node_outputs(graph, conv, [(old, y)])
        if convs:
            model.opset_imports[DOMAIN] = 1
        return ir.passes.PassResult(model, bool(convs))
