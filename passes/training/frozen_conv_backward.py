"""Frozen conv backward: input and bias gradients from dY and W alone.

What it removes: ORT's ConvGrad(dY, X, W) reads the conv input X even when the weight gradient is
not wanted, so every frozen conv's input stays alive from the forward until its backward runs.
Where dW is not requested, this pass replaces ConvGrad with
    dX = ConvTranspose(dY, W)   (same strides, pads, dilations, groups; output_padding restores
                                 the input size that strided convs round away)
    dB = ReduceSum(dY, axes=[0, 2, 3])
Exact: dX of a convolution is the transposed convolution of dY with the same weights; the bias
gradient is dY summed over batch and space. Neither reads X, so X dies after its forward users.
Order: ORT may run the bias ReduceSum long after the ConvTranspose (it is only needed at the
optimizer), keeping dY alive meanwhile. When both exist, the ConvTranspose takes a bias input
B = zeros(C_in) * dB[0]: a vector of zeros the size of the conv's input channels that cannot exist
before dB, so dY's last reader is the ConvTranspose. (An earlier version waited through
W + 0 * dB[0], a full copy of the weight: 9 MiB for a 512x512x3x3 conv, more than dY itself deep
in a ResNet.) Adding 0 changes no finite value.
Speed: ORT's CPU ConvTranspose loops over images and groups with small GEMMs and col2im, on one
thread. Two kinds of frozen conv are written as a Conv instead, exact the same way:
- grouped (depthwise) with channels in whole NCHWc blocks (_blocked): dX = Conv(dY, W') with W' =
  W flipped in space and its in/out channels swapped within each group, padding (k - 1) d - p
  (+ output_padding at the end). W' is a constant
  computed here from the frozen weight (as large as W: small for grouped convs), so ORT's NCHWc
  kernels take the Conv; the dB ordering then waits on dY itself, dY + 0 * dB[0] broadcast from
  [1, 1, 1, 1] (NCHWc needs a constant weight and no bias). With strides s > 1 the Conv reads dY
  with s - 1 zeros between neighbours (zeros_between), which is what a transposed conv convolves;
  not where the kernel is the stride (a pooling written as a conv: its ConvTranspose is a scatter
  with no overlap, as fast, and the spread copy measured 10 KB onto `lite`'s step peak);
- 1x1, stride 1, weight no larger than one image's input: dX = Conv(dY, W^T), one GEMM without
  col2im. W^T = Transpose(W) + 0 * dY[0, 0, 0, 0] is made when the Conv runs: with no input but the
  weight ORT ran the Transposes at the start of the step and held them all (+0.5 MiB on
  MobileNetV2 norm+last, 128 px); the size rule keeps the wide 1x1 convs at a network's end, whose
  weights outweigh their maps, on ConvTranspose;
- ungrouped k x k, stride 1, both channel counts whole NCHWc blocks (ResNet's, VGG's 3x3 convs):
  dX = Conv(dY, W') with W' the flipped weight as a constant, like the grouped case. It costs no
  memory once loaded: ORT's layout transformer runs the forward conv on a blocked copy of W and
  drops W, which nothing else reads now, and blocks W' for this Conv, so the session holds two
  blocked weights where it held W and a blocked copy (ResNet-18 `bias`, 128 px: resident size and
  high-water mark unchanged, step peak +756 B; the artifact's file grows by W', 37 MB). Speed:
  [8, 512, 4, 4] 6.0 -> 3.6 ms, ResNet-18 `bias` 0.86x the step, `lite+bias` 0.89x (7 alternating
  pairs each);
- other ungrouped k x k, stride 1, weight no larger than one image's input: dX = Conv(dY, W^T
  flipped in space), made each step the same way: 4.3 -> 3.0 ms for [8, 64, 32, 32]. Without the
  size rule wide layers' transposed weights (9.4 MB for 512x512x3x3) raised the step peak by 1.8 MB.
Measured on MobileNetV2 `bias`, 128 px, batch 8, arena on: 129 ms a step with ConvTranspose
everywhere, 97 ms with stride-1 grouped convs as Conv, 68 ms with the rest of this and
conv-bias-add; step peak unchanged (29.06 MiB).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import add_constant, const_array
from tinytlc.passes.training._graph import Constants, after, replace_node_outputs, wanted as _wanted


class FrozenConvBackwardPass(ir.passes.InPlacePass):
    def __init__(self, block: int | None = None):
        super().__init__()
        self.block = block  # MLAS's NCHWc block (None: this CPU's)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        const = Constants(graph)
        for grad in list(graph):
            if grad.op_type != "ConvGrad" or grad.domain != "com.microsoft":
                continue
            dy, x, w = grad.inputs[:3]
            dx, dw, db = (list(grad.outputs) + [None, None, None])[:3]
            if _wanted(dw) or x.shape is None or w.shape is None or len(x.shape) != 4:
                continue
            a = grad.attributes
            kernel, strides, dilations, pads, out_pad, dy_size = conv_geometry(grad, x, w)
            if _wanted(dx) and out_pad is None:
                continue  # spatial size unknown: keep ConvGrad
            tape, replacements = ir.tape.Tape(graph), []
            db_value = None
            if _wanted(db):
                db_value = tape.op("ReduceSum", [dy, const([0, 2, 3])], attributes={"keepdims": 0})
                replacements.append((db, db_value))
            if _wanted(dx):
                group = a.get_int("group", 1)
                first = None
                if db_value is not None:  # dB[0:1]: what the input gradient waits for
                    first = tape.op("Slice", [db_value, const([0]), const([1])])
                pooling = max(strides) > 1 and kernel == strides
                grouped = group > 1 and not pooling and _blocked(w, self.block, group, slack=1.125)
                dense = group == 1 and max(strides) == 1 and max(kernel) > 1 and _blocked(w, self.block)
                flipped = _flipped(w, group, kernel, dilations, pads, out_pad) if grouped or dense else None
                if flipped is not None:
                    w2, pads2 = flipped
                    if first is not None:
                        ordered = tape.op("Add", [dy, tape.op("Mul", [const(np.zeros((1, 1, 1, 1), np.float32)),
                                                                      first])])
                        ordered.name, dy = f"{dy.name}.after_bias_grad", ordered
                    if max(strides) > 1:
                        dy = zeros_between(const, tape, dy, w.shape[0], dy_size, strides)
                    tape.op("Conv", [dy, add_constant(graph, f"{w.name}.flipped", w2)], attributes={
                        "kernel_shape": kernel, "dilations": dilations, "pads": pads2, "group": group})
                else:
                    gemm = _pointwise(x, w, strides, pads, group)
                    dense = not gemm and small_dense(x, w, strides, group, kernel, dilations, pads, out_pad)
                    if gemm or dense:
                        wt = transposed_weight(const, tape, w, dy, flip=dense, name=f"{dx.name}.transposed_weight")
                    inputs = [dy, wt if gemm or dense else w]
                    if first is not None:  # a zero bias that exists only once dB does
                        inputs.append(tape.op("Mul", [const(np.zeros(w.shape[1] * group, np.float32)), first]))
                    if gemm:
                        tape.op("Conv", inputs, attributes={"kernel_shape": [1, 1]})
                    elif dense:
                        tape.op("Conv", inputs, attributes={"kernel_shape": kernel, "dilations": dilations,
                                                            "pads": flipped_pads(kernel, dilations, pads, out_pad)})
                    else:
                        tape.op("ConvTranspose", inputs, attributes={
                            "kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads,
                            "group": group, "output_padding": out_pad})
                replacements.append((dx, tape.nodes[-1].outputs[0]))
            graph.insert_before(grad, tape.nodes)
            replace_node_outputs(graph, grad, replacements)
            modified = True
        return ir.passes.PassResult(model, modified)


def _blocked(w: ir.Value, block: int | None, group: int = 1, slack: float = 1.0) -> bool:
    """Both channel counts of the conv (W's outputs, its inputs: W.shape[1] x group) whole NCHWc
    blocks, or within `slack` of them: ORT's layout transformer then runs the forward conv on a
    blocked copy of its constant weight (W itself is dropped once nothing else reads it) and the
    input-gradient Conv on one of W', so W' takes W's place. The blocked layout pads channels to
    whole blocks: 8 channels in blocks of 16 doubled every input gradient of MobileOne's parallel
    depthwise branches, alive together (step peak 1.24x plain ORT's); ProxylessNAS's 120 in 128
    leave its peak unchanged."""
    from tinytlc.passes.training import nchwc_conv
    block = block or nchwc_conv.block_size()
    return w.shape is not None and len(w.shape) == 4 and all(isinstance(d, int) for d in w.shape[:2]) and \
        all(-(-c // block) * block <= slack * c for c in (w.shape[0], w.shape[1] * group))


def _pointwise(x: ir.Value, w: ir.Value, strides: list[int], pads: list[int], group: int) -> bool:
    """A 1x1 stride-1 conv whose weight is no larger than one image's input: dX = Conv(dY,
    Transpose(W)) is one GEMM where ConvTranspose adds a col2im, and the transposed copy of W, alive
    for that one Conv, is at most 1/batch of dX, alive then anyway. (The wide 1x1 convs at the end of
    a network, whose weights outweigh their maps, stay on ConvTranspose.)"""
    if group != 1 or max(strides) != 1 or any(pads) or list(w.shape[2:]) != [1, 1]:
        return False
    image = list(x.shape[1:])
    return all(isinstance(d, int) for d in image) and w.shape[0] * w.shape[1] <= np.prod(image)


def small_dense(x: ir.Value, w: ir.Value, strides: list[int], group: int, kernel: list[int], dilations: list[int],
                pads: list[int], out_pad: list[int] | None) -> bool:
    """An ungrouped k x k stride-1 conv whose weight is no larger than one image's input, so that
    dX = Conv(dY, W^T flipped) with W^T flipped made each step (transposed_weight) costs a transient
    of at most 1/batch of dX."""
    image = list(x.shape[1:])
    return (group == 1 and max(strides) == 1 and max(kernel) > 1 and out_pad is not None and w.shape is not None
            and len(w.shape) == 4 and flipped_pads(kernel, dilations, pads, out_pad) is not None
            and all(isinstance(d, int) for d in image) and np.prod(w.shape) <= np.prod(image))


def transposed_weight(const: Constants, tape: ir.tape.Tape, w: ir.Value, dy: ir.Value, flip: bool,
                      name: str) -> ir.Value:
    """W^T (in and out channels swapped), flipped in space if `flip`, plus 0 * dY[0, 0, 0, 0]: made
    when the Conv that reads it runs, not whenever ORT likes (from the weight alone ORT made them all
    at the start of the step and held them)."""
    wt = tape.op("Transpose", [w], attributes={"perm": [1, 0, 2, 3]})
    if flip:  # both spatial axes reversed: starts, ends, axes, steps
        wt = tape.op("Slice", [wt, const([-1, -1]), const([-2 ** 62, -2 ** 62]), const([2, 3]), const([-1, -1])])
    wt = after(const, tape, wt, dy)
    for i, node in enumerate(tape.nodes[-(5 if flip else 4):]):  # backward values, named after dX
        node.outputs[0].name = f"{name}.{i}"
    return wt


def conv_geometry(grad: ir.Node, x: ir.Value, w: ir.Value):
    """A ConvGrad's kernel, strides, dilations, pads, and per spatial axis what a strided conv
    rounds away from the input size (output_padding) and dY's size; those two are None when the
    input's spatial size is not known."""
    a = grad.attributes
    kernel = list(a.get_ints("kernel_shape", list(w.shape[2:])))
    strides = list(a.get_ints("strides", [1, 1]))
    dilations = list(a.get_ints("dilations", [1, 1]))
    pads = list(a.get_ints("pads", [0, 0, 0, 0]))
    out_pad, dy_size = [], []
    for i in range(2):
        size = x.shape[2 + i]
        if not isinstance(size, int):
            return kernel, strides, dilations, pads, None, None
        y = (size + pads[i] + pads[i + 2] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
        natural = strides[i] * (y - 1) + dilations[i] * (kernel[i] - 1) + 1 - pads[i] - pads[i + 2]
        out_pad.append(size - natural)
        dy_size.append(y)
    return kernel, strides, dilations, pads, out_pad, dy_size


def flipped_pads(kernel: list[int], dilations: list[int], pads: list[int], out_pad: list[int]) -> list[int] | None:
    """The pads of Conv(dY, W flipped) that give a conv's input gradient, or None if one is negative."""
    pads2 = [dilations[i % 2] * (kernel[i % 2] - 1) - pads[i] + (out_pad[i - 2] if i >= 2 else 0) for i in range(4)]
    return pads2 if min(pads2) >= 0 else None


def _flipped(w: ir.Value, group: int, kernel: list[int], dilations: list[int], pads: list[int],
             out_pad: list[int]):
    """(W', pads') such that Conv(dY, W', pads') is the input gradient of a grouped conv with frozen
    weight W (for strides > 1, of dY with zeros between its elements), or None when W is not a
    constant here or a padding would be negative."""
    weight = const_array(w)
    pads2 = flipped_pads(kernel, dilations, pads, out_pad)
    if weight is None or weight.ndim != 4 or pads2 is None:
        return None
    cout, cin_g, kh, kw = weight.shape
    w2 = weight.reshape(group, cout // group, cin_g, kh, kw).transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]
    return np.ascontiguousarray(w2.reshape(group * cin_g, cout // group, kh, kw)), pads2


def zeros_between(const: Constants, tape: ir.tape.Tape, dy: ir.Value, channels: int, size: list[int],
                  strides: list[int]) -> ir.Value:
    """dY with stride - 1 zeros between neighbours, [N, C, s (H - 1) + 1, s (W - 1) + 1]: a 1x1
    ConvTranspose with weight 1 and the conv's strides, each channel of each image as an image of
    its own (one channel: no GEMM to speak of, unlike the grouped ConvTranspose it replaces)."""
    one = const(np.ones((1, 1, 1, 1), np.float32), "tinytlc.one_1111")
    planes = tape.op("Reshape", [dy, const([-1, 1] + size)])
    spread = tape.op("ConvTranspose", [planes, one], attributes={"kernel_shape": [1, 1], "strides": strides})
    return tape.op("Reshape", [spread, const([-1, channels] + [s * (n - 1) + 1 for s, n in zip(strides, size)])])
