"""Re-initialise the classifier (the Gemm, or MatMul + Add, that produces the logits) for a new
number of classes, as transfer learning does.

The new weight and bias are drawn as torch.nn.Linear draws them: uniform in +-1/sqrt(in_features).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.errors import TinyTLError
from tinytlc.passes.forward._values import add_initializer, const_array, set_initializer


# Between a conv classifier and the logits (SqueezeNet: Conv 1x1 -> ReLU -> global pool -> flatten)
_PER_CLASS = {"Flatten", "Reshape", "Squeeze", "GlobalAveragePool", "ReduceMean", "Relu", "Identity", "Dropout"}


def _per_class(node: ir.Node) -> bool:
    """Keeps each class's values apart: the ops above, and taking one pixel (BiT's `x[..., 0, 0]`
    after a 1x1 conv on the pooled map is a Gather on a spatial axis, or the Slice
    gather-as-slice writes for it)."""
    rank = len(node.inputs[0].shape) if node.inputs and node.inputs[0].shape is not None else 0
    if node.op_type == "Gather":
        return rank >= 3 and node.attributes.get_int("axis", 0) % rank >= 2
    if node.op_type == "Slice":
        axes = const_array(node.inputs[3]) if len(node.inputs) > 3 else None
        return rank >= 3 and axes is not None and all(a % rank >= 2 for a in axes.reshape(-1))
    return node.op_type in _PER_CLASS


def _weight(v: ir.Value) -> tuple[ir.Value | None, bool]:
    """(initializer, transposed): a weight given directly or as Transpose(W) of a 2-D W."""
    if v.is_initializer():
        return v, False
    node = v.producer()
    if node is not None and node.op_type == "Transpose" and node.inputs[0].is_initializer() and \
            len(node.inputs[0].shape or []) == 2:
        return node.inputs[0], True
    return None, False


def linear_layer(v: ir.Value) -> tuple[ir.Node, ir.Value, ir.Value | None, bool] | None:
    """(node, weight, bias, weight_is_out_by_in) of the Gemm or MatMul (+ Add) with a constant
    weight that produces v, else None."""
    node = v.producer()
    if node is not None and node.op_type == "Add":
        matmul = next((u.producer() for u in node.inputs if u.producer() is not None
                       and u.producer().op_type == "MatMul"), None)
        bias = next((u for u in node.inputs if u.is_initializer()), None)
        weight, transposed = _weight(matmul.inputs[1]) if matmul is not None else (None, False)
        if weight is not None:
            return matmul, weight, bias, transposed
    if node is not None and node.op_type == "Gemm" and node.inputs[1].is_initializer():
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        return node, node.inputs[1], bias, bool(node.attributes.get_int("transB", 0))
    if node is not None and node.op_type == "MatMul":
        weight, transposed = _weight(node.inputs[1])
        if weight is not None:
            return node, weight, None, transposed
    return None


def find_classifier(graph: ir.Graph) -> tuple[ir.Node, ir.Value, ir.Value | None, bool]:
    """(node, weight, bias, weight_is_out_by_in) of the layer producing the logits: a Gemm, a MatMul
    (+ Add), or a 1x1 Conv followed only by per-class ops (ReLU, global pooling, flatten)."""
    out = graph.outputs[0]
    found = linear_layer(out)
    if found is not None:
        return found
    node = out.producer()
    while node is not None and _per_class(node):
        node = node.inputs[0].producer()
    found = linear_layer(node.outputs[0]) if node is not None else None
    if found is not None:  # (a Keras model's logits reshaped to (batch, -1) after the Dense)
        return found
    if node is not None and node.op_type == "Conv" and node.inputs[1].is_initializer() and \
            list(node.inputs[1].shape or [])[2:] == [1, 1] and node.attributes.get_int("group", 1) == 1:
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        return node, node.inputs[1], bias, True
    heads = _heads_summed(out)
    if len(heads) > 1:
        raise TinyTLError(f"no classifier found: the logits combine {len(heads)} heads ({', '.join(heads)}), as "
                          "VOLO's auxiliary head; export the model with one head (timm: use_aux_head=False)")
    raise TinyTLError("no classifier found: the logits must come from a Gemm, a MatMul(+Add) or a 1x1 Conv "
                      "(then global pooling) with constant weights"
                      + (f"; it comes from {node.op_type} {node.name}" if node is not None else ""))


def _heads_summed(v: ir.Value) -> list[str]:
    """Names of the linear layers whose outputs the logits add (through scalings, reductions over
    tokens and views): two or more are heads combined (VOLO's head(cls) + 0.5 * aux(tokens).max(1))."""
    node = v.producer()
    if node is None:
        return []
    if (found := linear_layer(v)) is not None:
        return [found[0].name or found[1].name]
    if node.op_type in ("Add", "Sum", "Mul", "Div"):
        return [h for i in node.inputs if i is not None and not i.is_initializer() for h in _heads_summed(i)]
    return _heads_summed(node.inputs[0]) if node.op_type in _PER_CLASS | {"ReduceMax", "Gather"} else []


class ReplaceClassifierPass(ir.passes.InPlacePass):
    def __init__(self, num_classes: int, seed: int = 0):
        super().__init__()
        self.num_classes, self.seed = num_classes, seed

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        node, weight, bias, out_by_in = find_classifier(graph)
        w = const_array(weight)
        in_features = w.shape[1] if out_by_in else w.shape[0]
        rng = np.random.default_rng(self.seed)
        bound = 1.0 / np.sqrt(in_features)
        new_w = rng.uniform(-bound, bound, (self.num_classes, in_features)).astype(np.float32)
        if node.op_type == "Conv":  # (classes, C, 1, 1)
            new_w = new_w.reshape(self.num_classes, in_features, 1, 1)
        set_initializer(weight, new_w if out_by_in else new_w.T.copy())
        if node.inputs[1] is not weight:  # Transpose(W) (a bias-free nn.Linear): its output changes shape too
            node.inputs[1].shape = ir.Shape(list(reversed(new_w.shape)) if out_by_in else list(new_w.shape))
        new_b = rng.uniform(-bound, bound, self.num_classes).astype(np.float32)
        if bias is not None and const_array(bias) is not None:
            set_initializer(bias, new_b)
        elif node.op_type in ("Gemm", "Conv"):
            node.resize_inputs(3)
            node.replace_input_with(2, add_initializer(graph, "classifier.bias", new_b))
        old_classes = w.shape[0] if out_by_in else w.shape[1]
        v = node.outputs[0]  # shapes from the classifier to the logits change: infer them anew
        while True:
            v.shape = None
            user = v.producer()
            if user is not node and user.op_type == "Reshape":  # (-1, classes) written as a constant
                target = const_array(user.inputs[1])
                if target is not None and len(target) and target[-1] == old_classes:
                    user.replace_input_with(1, add_initializer(
                        graph, "tinytlc.logits_shape", np.array([*target[:-1], self.num_classes], np.int64),
                        constant=True))
            if v is graph.outputs[0] or len(v.uses()) != 1:
                break
            v = next(iter(v.uses()))[0].outputs[0]
        out = graph.outputs[0]
        out.shape = ir.Shape([out.shape[0] if out.shape is not None else "batch", self.num_classes])
        return ir.passes.PassResult(model, True)
