"""Activation masks: ReLU, LeakyReLU and Clip (ReLU6) backward from a 1-byte mask made in the forward.

What it removes: ORT's ReluGrad and LeakyReluGrad read the activation's float output Y (or its
input X: a Relu before a MaxPool), and its
Clip gradient compares the float input X with min/max inside the backward, so a 4-byte-per-element
tensor per activation lives until backward. This pass computes the mask m in the forward
(Relu, LeakyRelu: X > 0; Clip: min <= X <= max, ORT's own bounds, computed in one op as
Clip(X) == X), stores it as bool (1 byte per element), and writes the backward as
dX = DropoutGrad(dY, m)
(LeakyReLU: (1 - alpha) DropoutGrad(dY, m) + alpha dY).
DropoutGrad multiplies by a bool mask without a float copy of it (Mul needs Cast(m) to float, a
temporary as large as dY; ORT's CPU Where allocates one too). Its ratio is 2**-25, for which
1 / (1 - ratio) rounds to exactly 1.0 in float32 (ratio 0 would skip the mask).
Why the float tensor really dies: ORT orders nodes itself and would run a mask node whenever it
likes, possibly just before backward. So the readers of Y read Y + 0 * float(m[0, ..., 0]): the
same values, but the forward cannot go on before m exists, so X's last reader runs in the forward.
(Where would be simpler but ORT's CPU Where allocates a full-size temporary.) Where every reader
of Y is a Conv whose trained bias stays in it (MobileNetV2's projections in `bias`), the wait is
on the bias instead, B + 0 * float(m[0, ..., 0]): C additions rather than a pass over Y.
Skipped where it would save nothing: when the float the gradient reads (Y, or X for Clip and a
Relu before a MaxPool) has another reader after the loss (the X of a conv whose weight trains:
ResNet's ReLUs in `full`, the lite modules' ReLUs), it stays for backward anyway and a mask beside
it only adds 1 byte per element (ConvNeXt-Tiny `lite+bias`, 32 px: +104 KB step peak).
Float32 activations only (the mask code is float32; a float16 stretch of a network keeps ORT's own).
Exact: m is the predicate ORT's gradient uses (X > 0 iff Relu(X) > 0 or LeakyRelu(X) > 0;
Clip(X) == X iff min <= X <= max, false for NaN either way), and adding 0 changes no finite value.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.training._graph import Constants, forward_nodes, replace_node_outputs
from tinytlc.passes.training.conv_bias_add import splits_bias


MASK = "tinytlc.mask"  # Value.meta: a bool activation mask stored for backward
MASK_DEPENDENCY = "tinytlc.mask_dependency"  # Node.meta: the forward's read that waits for the mask

# 1 - 2**-25 rounds to 1.0f, so DropoutGrad's scale 1 / (1 - ratio) is exactly 1.
_RATIO = np.float32(2.0 ** -25)
assert np.float32(1) - _RATIO == np.float32(1)


def masked(const: Constants, tape: ir.tape.Tape, dy: ir.Value, mask: ir.Value) -> ir.Value:
    """dY * m for a bool mask m, with no float copy of m."""
    ratio, training = const(_RATIO, "tinytlc.mask_ratio"), const(np.bool_(True), "tinytlc.true")
    return tape.op("DropoutGrad", [dy, mask, ratio, training], domain="com.microsoft")


# Backward readers that do not keep a float: activation gradients (this pass replaces them; a ReLU's
# output can be a ReLU6's input, read by both gradients) and Shape (shapes-from-input takes those).
_NOT_KEEPING = {"ReluGrad", "LeakyReluGrad", "GreaterOrEqual", "LessOrEqual", "Shape"}


def kept_anyway(read: ir.Value, forward: set[ir.Node]) -> bool:
    """`read` has a reader after the loss that needs its values (a conv's weight gradient)."""
    return any(user not in forward and user.op_type not in _NOT_KEEPING for user, _ in read.uses())


def _waits_on_bias(user: ir.Node, index: int) -> bool:
    """`user` is a Conv reading Y as its input with a bias that is computed (trained), which stays in
    the Conv (conv-bias-add splits the bias off grouped and k x k convs, and a split-off bias would
    let the Conv run before the mask)."""
    return (user.op_type == "Conv" and user.domain == "" and index == 0 and len(user.inputs) > 2
            and user.inputs[2] is not None and ir.convenience.get_const_tensor(user.inputs[2]) is None
            and not splits_bias(user))


class ActivationMaskPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        const = Constants(graph, "tinytlc.mask_const")
        forward = forward_nodes(graph)

        for node in list(graph):
            if node.domain == "com.microsoft" and node.op_type in ("ReluGrad", "LeakyReluGrad"):
                act = self._activation(node)
                if act is None or act.inputs[0].dtype != ir.DataType.FLOAT or kept_anyway(node.inputs[1], forward):
                    continue  # (a float16 activation, say: the mask code is float32)
                mask = self._forward(graph, const, act, forward)
                tape = ir.tape.Tape(graph)
                dy = node.inputs[0]
                dx = masked(const, tape, dy, mask)
                if act.op_type == "LeakyRelu":  # dY * (alpha + (1 - alpha) m); every term waits for dY
                    alpha = act.attributes.get_float("alpha", 0.01)
                    dx = tape.op("Add", [tape.op("Mul", [dx, const(np.float32(1 - alpha))]),
                                         tape.op("Mul", [dy, const(np.float32(alpha))])])
                graph.insert_before(node, tape.nodes)
                replace_node_outputs(graph, node, [(node.outputs[0], dx)])
                modified = True
            elif node.op_type == "Cast" and node.domain == "":
                modified |= self._clip_backward(graph, const, node, forward)
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _activation(grad: ir.Node) -> ir.Node | None:
        """The Relu or LeakyRelu that `grad` differentiates. ORT's gradient reads its output Y, or
        its input X (a Relu before a MaxPool: ResNet's stem); X > 0 iff Y > 0 either way. By
        input, the activation is the one whose output's gradient (ORT names it Y_grad) is dY."""
        kind, read = grad.op_type[:-len("Grad")], grad.inputs[1]
        producer = read.producer()
        if producer is not None and producer.op_type == kind:
            return producer
        return next((user for user, i in read.uses() if user.op_type == kind and i == 0
                     and grad.inputs[0].name == f"{user.outputs[0].name}_grad"), None)

    @staticmethod
    def _forward(graph: ir.Graph, const: Constants, act: ir.Node, forward: set[ir.Node]) -> ir.Value:
        """Insert m = predicate(X) after `act` and make Y's readers wait for it; return m. The new
        nodes join `forward` (an activation feeding another is read by the second one's mask)."""
        x, y = act.inputs[0], act.outputs[0]
        tape = ir.tape.Tape(graph)
        if act.op_type == "Clip":  # min <= X <= max iff Clip(X) == X (NaN: false both ways); one op, not three
            mask = tape.op("Equal", [y, x])
        else:
            mask = tape.op("Greater", [x, const(np.float32(0), "tinytlc.zero")])
        mask.name = f"{y.name}.mask"
        mask.shape, mask.type = x.shape, ir.TensorType(ir.DataType.BOOL)
        mask.meta[MASK] = True
        rank = len(x.shape) if x.shape is not None else 4
        first = tape.op("Slice", [mask, const([0] * rank), const([1] * rank)])
        first.producer().meta[MASK_DEPENDENCY] = True
        zero = const(np.float32(0), "tinytlc.zero")
        dep = tape.op("Mul", [tape.op("Cast", [first], attributes={"to": ir.DataType.FLOAT}), zero])
        graph.insert_after(act, tape.nodes)
        readers = [(user, i) for user, i in y.uses() if user not in tape.nodes]
        rebuilt = ir.tape.Tape(graph)
        if all(_waits_on_bias(user, i) for user, i in readers):  # B + 0 * m[0]: C adds, not a pass over Y
            for user, _ in readers:
                user.replace_input_with(2, rebuilt.op("Add", [user.inputs[2], dep]))
        else:
            y2 = rebuilt.op("Add", [y, dep])
            for user, index in readers:
                user.replace_input_with(index, y2)
            y2.shape, y2.type = y.shape, y.type
        graph.insert_after(tape.nodes[-1], rebuilt.nodes)
        forward.update([*tape.nodes, *rebuilt.nodes])
        return mask

    def _clip_backward(self, graph: ir.Graph, const: Constants, cast: ir.Node, forward: set[ir.Node]) -> bool:
        """ORT's Clip gradient: Mul(dY, Cast(And(X >= min, X <= max))). Match and replace."""
        both = cast.inputs[0].producer()
        if both is None or both.op_type != "And" or len(cast.outputs[0].uses()) != 1:
            return False
        mul, _ = next(iter(cast.outputs[0].uses()))
        cmp = [v.producer() for v in both.inputs]
        if mul.op_type != "Mul" or any(c is None or c.op_type not in ("GreaterOrEqual", "LessOrEqual") for c in cmp):
            return False
        x = cmp[0].inputs[0]
        clip = next((u for u, i in x.uses() if u.op_type == "Clip" and i == 0), None)
        if clip is None or any(c.inputs[0] is not x for c in cmp) or x.dtype != ir.DataType.FLOAT or kept_anyway(x, forward):
            return False
        mask = self._forward(graph, const, clip, forward)
        dy = next(v for v in mul.inputs if v is not cast.outputs[0])
        tape = ir.tape.Tape(graph)
        dx = masked(const, tape, dy, mask)
        graph.insert_before(mul, tape.nodes)
        replace_node_outputs(graph, mul, [(mul.outputs[0], dx)])
        for dead in (cast, both, *cmp):
            graph.remove(dead, safe=True)
        return True
