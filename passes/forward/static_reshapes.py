"""Give Reshape, Slice, Expand (and other ops taking shapes) constant shapes where they are computed
at run time from the shapes of tensors whose only dynamic dimension is the batch.

Why: code like ShuffleNet's channel shuffle (`b, c, h, w = x.size(); x.view(b, g, c // g, h, w)`)
exports the target as arithmetic over Shape(x). Shape inference cannot see through it, so every
tensor after it has unknown dimensions: blocks cannot get lite modules and the frozen-conv pass
cannot size its ConvTranspose. Only the batch is dynamic in a tinytlc graph, so the target is
evaluated (numpy, below) for batch 1 and batch 2: entries that agree are constants, and the one
entry that doubles is written as 0 (copy the input's batch) where it is the batch itself, else -1
(Swin's windows: batch x windows, 4 at batch 1). An Expand to [batch, ...] (a class token
expanded with `x.shape[0]`), or a Reshape to it from a tensor that does not start with the batch
(Swin's windows merged back into images), takes the image's batch, which shape inference follows.
A Shape read of batch x windows is evaluated back through the Reshape that made it (Swin's
qkv.reshape(x.size(0), ...)), so q, k, v are picked from an axis of known length (one Split).
F.interpolate(size=...) sizes computed from the batch take the image's batch too, and a -1 beside a
copied batch is worked out where the other dimensions are known (MobileViT-v2's
x.reshape(B, C, -1, patches) after resizing an odd map): onnx's inference leaves both unknown.
timm's Swin V2 writes its windows back with windows.view(-1, H, W, C) and its attention reshapes
with the windows' own count: those are followed back through the Transpose, Gather and
elementwise ops between them (_dim), so its MLP's tokens, x.reshape(B, -1, C), are known too. A
Reshape target with a -1 or 0 is evaluated for what it gives where the input's dimensions are
known (TNT's pixels.reshape(B * patches, pixels, -1): a constant pixel width, then -1 for the
batch x patches).
The batch need not lead: nn.MultiheadAttention unflattens its packed projection on [tokens, batch,
dim] to Concat(Shape(x)[:-1], [3, dim]), written [tokens, 0, 3, dim], so q, k, v come from a Split.
Exact: the new target equals the old one for every batch size (it is affine in the batch with no
offset, checked at two points). Nodes whose target depends on anything else are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import Constants, const_array
from tinytlc.passes.forward.infer_shapes import InferShapesPass

# inputs that hold shapes, indices or sizes, by op
_SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Slice": (1, 2, 3, 4), "Tile": (1,), "Pad": (1,),
                 "Split": (1,), "Resize": (1, 2, 3), "Unsqueeze": (1,), "Squeeze": (1,), "ConstantOfShape": (0,),
                 "Range": (0, 1, 2)}


_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "And", "Or"}


def _attr(node, name, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _is_batch(dim, batch_dim) -> bool:
    """A symbolic dimension taken for the batch: the image's own, or one onnx's shape inference named
    (unk__N) after an op it could not follow. An exporter's expression (4*batch) is not."""
    return str(dim) == str(batch_dim)


def evaluate_shape(value: ir.Value, batch: int, memo: dict, batch_dim=None) -> np.ndarray | None:
    """The value of a shape computation for `batch`, or None when it depends on data or on a
    dimension other than the image's batch (`batch_dim`) that is not known."""
    if id(value) in memo:
        return memo[id(value)]
    const = const_array(value)
    if const is not None:
        return const
    node = value.producer()
    if node is None:
        return None
    if node.op_type == "Shape":
        shape = node.inputs[0].shape
        if shape is None or len(shape) == 0:
            return None
        lead = _leading(node.inputs[0], batch, batch_dim)
        if lead is None:
            return None  # e.g. batch x heads from data: not this pass's to evaluate
        # the batch may also stand further in (nn.MultiheadAttention's [tokens, batch, dim])
        dims = [lead] + [d if isinstance(d, int) else batch if _is_batch(d, batch_dim) else None
                         for d in list(shape)[1:]]
        if None in dims:
            return None
        result = np.array(dims, np.int64)[_attr(node, "start", 0): _attr(node, "end", None)]
    else:
        args = [None if v is None else evaluate_shape(v, batch, memo, batch_dim) for v in node.inputs]
        if any(a is None for a, v in zip(args, node.inputs) if v is not None):
            return None
        result = _apply(node, args)
    if result is not None and len(node.outputs) == 1:
        memo[id(value)] = result
    return result


def _leading(value: ir.Value, batch: int, batch_dim) -> int | None:
    """The first dimension of `value` for `batch` (_dim)."""
    return _dim(value, 0, batch, batch_dim, set())


def dimension(value: ir.Value, axis: int, batch: int, batch_dim) -> int | None:
    """Dimension `axis` of `value` when the image batch `batch_dim` is `batch` (_dim), or None."""
    return _dim(value, axis, batch, batch_dim, set())


def _dim(value: ir.Value, axis: int, batch: int, batch_dim, seen: set) -> int | None:
    """Dimension `axis` of `value` for `batch`: the batch, a constant, or (Swin's windows, batch x
    4 after a Reshape to -1, which shape inference names anew; a Resize to sizes computed from the
    batch) followed back through the ops that keep it (an input with the same symbol on that axis;
    the axis a Transpose, Gather or Squeeze moves it from: q, k and v picked from a stacked qkv) to
    a Reshape whose constant target, or a Resize whose sizes, give it."""
    shape = value.shape
    if shape is None or not 0 <= axis < len(shape) or (id(value), axis) in seen:
        return None
    seen.add((id(value), axis))  # (each value once: a dead end is not walked again from another path)
    if isinstance(shape[axis], int):
        return shape[axis]
    if _is_batch(shape[axis], batch_dim):
        return batch
    node = value.producer()
    if node is None:
        return None
    x = node.inputs[0] if node.inputs else None
    if node.op_type == "Transpose":
        perm = _attr(node, "perm", None)
        return None if perm is None else _dim(x, perm[axis], batch, batch_dim, seen)
    if node.op_type == "Gather":  # a scalar index drops the gathered axis
        index, at = const_array(node.inputs[1]), _attr(node, "axis", 0)
        if index is None or index.ndim != 0 or x.shape is None:
            return None
        at %= len(x.shape)
        return _dim(x, axis + (axis >= at), batch, batch_dim, seen)
    if node.op_type == "Squeeze":
        axes = const_array(node.inputs[1]) if len(node.inputs) > 1 else _attr(node, "axes", None)
        if axes is None or x.shape is None:
            return None
        kept = [i for i in range(len(x.shape)) if i not in {int(a) % len(x.shape) for a in np.atleast_1d(axes)}]
        return _dim(x, kept[axis], batch, batch_dim, seen) if len(kept) == len(shape) else None
    if node.op_type == "Reshape" and axis == 0:
        target = const_array(node.inputs[1])
        if target is None or x.shape is None or _attr(node, "allowzero", 0) or \
                not all(isinstance(d, int) for d in list(x.shape)[1:]):
            return None
        lead = _dim(x, 0, batch, batch_dim, seen)
        if lead is None:
            return None
        out = _reshaped(target, [lead] + list(x.shape)[1:])
        return out[0] if out else None
    if node.op_type == "Resize" and axis == 0 and len(node.inputs) > 3 and node.inputs[3] is not None:  # sizes, as torch writes
        sizes = evaluate_shape(node.inputs[3], batch, {}, batch_dim)
        return int(sizes[0]) if sizes is not None and sizes.ndim == 1 and len(sizes) == len(shape) else None
    if node.op_type in ("Reshape", "Resize"):
        return None
    if node.op_type in _BROADCAST:  # the output's dimension is any input's that is not 1, else 1
        found = []
        for i in node.inputs:
            at = None if i is None or i.shape is None else axis - len(shape) + len(i.shape)  # (aligned from the right)
            found.append(None if at is None else 1 if at < 0 else _dim(i, at, batch, batch_dim, seen))
            if found[-1] not in (None, 1):
                return found[-1]
        return 1 if found and None not in found else None
    for i in node.inputs:  # (the first input with the symbol that leads to a number)
        if i is not None and i.shape is not None and (len(i.shape) == len(shape) or axis == 0 < len(i.shape)) and \
                str(i.shape[axis]) == str(shape[axis]):
            found = _dim(i, axis, batch, batch_dim, seen)
            if found is not None:
                return found
    return None


def _reshaped(target, dims: list[int]) -> list[int] | None:
    """The dimensions Reshape(x, target) gives for x of `dims` (ints; allowzero 0): 0 copies x's
    dimension, one -1 takes what is left; None where the target does not fit."""
    target = [int(d) for d in np.asarray(target).reshape(-1)]
    if target.count(-1) > 1 or any(d == 0 and i >= len(dims) for i, d in enumerate(target)):
        return None
    out = [int(dims[i]) if d == 0 else d for i, d in enumerate(target)]
    if -1 in out:
        known, size = int(np.prod([d for d in out if d != -1])), int(np.prod(dims))
        if known <= 0 or size % known:
            return None
        out[out.index(-1)] = size // known
    return out


def _apply(node: ir.Node, a: list) -> np.ndarray | None:
    op = node.op_type
    if op == "Identity":
        return a[0]
    if op == "Cast":
        return a[0].astype(ir.DataType(_attr(node, "to", 1)).numpy())
    if op == "Gather":
        return np.take(a[0], a[1], axis=_attr(node, "axis", 0))
    if op == "Unsqueeze":
        axes = a[1] if len(a) > 1 else _attr(node, "axes", [])
        return np.expand_dims(a[0], tuple(int(x) for x in np.atleast_1d(axes)))
    if op == "Squeeze":
        axes = a[1] if len(a) > 1 else _attr(node, "axes", None)
        return np.squeeze(a[0], None if axes is None else tuple(int(x) for x in np.atleast_1d(axes)))
    if op == "Concat":
        return np.concatenate([np.atleast_1d(x) for x in a], axis=_attr(node, "axis", 0))
    if op == "Slice":
        data, starts, ends = a[:3]
        axes = a[3] if len(a) > 3 and a[3] is not None else range(len(starts))
        steps = a[4] if len(a) > 4 and a[4] is not None else [1] * len(starts)
        index = [slice(None)] * data.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            index[int(ax)] = slice(int(s), int(e), int(st))
        return data[tuple(index)]
    if op in ("Add", "Sub", "Mul"):
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a[0], a[1])
    if op == "Div":
        if np.issubdtype(np.asarray(a[0]).dtype, np.integer):
            return np.trunc(np.divide(a[0], a[1])).astype(np.asarray(a[0]).dtype)
        return np.divide(a[0], a[1])
    if op == "Mod":  # fmod=0: the sign of the divisor, as numpy's mod (Swin's window padding)
        return (np.fmod if _attr(node, "fmod", 0) else np.mod)(a[0], a[1])
    if op == "Clip":  # (timm's 'same' padding clamps its pads at 0)
        low, high = (a[i] if len(a) > i and a[i] is not None else None for i in (1, 2))
        return np.clip(a[0], low, high) if low is not None or high is not None else a[0]
    if op in ("Min", "Max"):
        return (np.minimum if op == "Min" else np.maximum).reduce(np.broadcast_arrays(*a))
    if op == "Reshape":
        target = [d if d != 0 or _attr(node, "allowzero", 0) else a[0].shape[i] for i, d in enumerate(a[1])]
        return np.reshape(a[0], [int(d) for d in target])
    if op == "Transpose":
        return np.transpose(a[0], _attr(node, "perm", None))
    if op == "Pow":  # (DINOv2's grid side, n ** 0.5; numpy refuses negative integer powers)
        if np.issubdtype(np.asarray(a[0]).dtype, np.integer) and np.any(np.asarray(a[1]) < 0):
            return None
        return np.power(a[0], a[1]).astype(np.asarray(a[0]).dtype)
    if op in ("Floor", "Ceil", "Sqrt", "Neg", "Abs"):
        return {"Floor": np.floor, "Ceil": np.ceil, "Sqrt": np.sqrt, "Neg": np.negative, "Abs": np.abs}[op](a[0])
    if op == "Equal":
        return np.equal(a[0], a[1])
    if op == "Where":
        return np.where(a[0], a[1], a[2])
    if op == "ConstantOfShape":
        value = node.attributes.get("value")
        fill = value.value.numpy().reshape(-1)[0] if value is not None else np.float32(0)
        return np.full(tuple(int(d) for d in a[0]), fill)
    return None


def _static_target(node: ir.Node, index: int, batch, patient: bool) -> np.ndarray | None:
    """The constant for input `index` of `node`, or None. `batch`: the image's batch dimension.
    `patient`: leave a Reshape whose input's first dimension is not known to be the batch for a
    later round (shape inference may name it then); else write the batch entry as -1."""
    shape_value = node.inputs[index]
    if shape_value is None or const_array(shape_value) is not None or node.meta.get(_LED):
        return None
    t1, t2 = (evaluate_shape(shape_value, b, {}, batch) for b in (1, 2))
    if t1 is None or t2 is None or t1.shape != t2.shape or t1.ndim > 1:  # (Range takes scalars)
        return None
    if node.op_type == "Reshape" and ((t1 == -1).any() or (t1 == 0).any()):  # what it gives, where known
        g1, g2 = (_gives(node, t, b, batch) for t, b in ((t1, 1), (t2, 2)))
        if g1 is not None and g2 is not None:
            t1, t2 = g1, g2
    differ = np.flatnonzero(t1 != t2)
    if len(differ) == 0:
        return t1
    if node.op_type != "Reshape" or len(differ) != 1 or t2[differ[0]] != 2 * t1[differ[0]]:
        return None
    target = t1.astype(np.int64)
    x = node.inputs[0].shape
    d = differ[0]
    if t1[d] == 1 and x is not None and len(x) > d and _is_batch(x[d], batch) and not _attr(node, "allowzero", 0):
        target[d] = 0  # copy the input's batch (another entry may already be -1: _resolved_reshape's, next round)
    elif d == 0 and x is not None and len(x) > 0 and not _attr(node, "allowzero", 0) and \
            [_leading(node.inputs[0], b, batch) for b in (1, 2)] == [t1[0], t2[0]]:
        target[0] = 0  # the input's own first dimension (batch x windows, as timm's attention reshapes it)
        target = _without_minus_one(target, x)
    elif patient:
        return None
    elif (t1 == -1).any():  # (a first dimension of batch x heads is unfolded: only -1 will do)
        return None
    else:
        target[differ[0]] = -1
    return target


def _gives(node: ir.Node, target: np.ndarray, batch: int, batch_dim) -> np.ndarray | None:
    """The dimensions Reshape `node` gives with `target` for `batch`, where its input's are known (a
    -1 beside a batch-scaled entry, TNT's pixels.reshape(B * patches, pixels, -1)), else None."""
    x = node.inputs[0].shape
    if x is None or len(x) == 0 or _attr(node, "allowzero", 0) or not all(isinstance(d, int) for d in list(x)[1:]):
        return None
    lead = _leading(node.inputs[0], batch, batch_dim)
    out = None if lead is None else _reshaped(target, [lead] + list(x)[1:])
    return None if out is None else np.array(out, np.int64)


def _without_minus_one(target: np.ndarray, x) -> np.ndarray:
    """A Reshape target [0, ..., -1, ...] (the batch copied) with the -1 worked out where x's other
    dimensions are known: onnx's inference leaves it unknown beside a symbolic batch (MobileViT's
    x.reshape(B, C, -1, patches)), and every later shape with it."""
    if target[0] != 0 or -1 not in target or not all(isinstance(d, int) for d in list(x)[1:]):
        return target
    out = _reshaped(target, [1] + list(x)[1:])  # (the batch copied: any value will do)
    return target if out is None else np.array([0] + out[1:], np.int64)


def _resolved_reshape(node: ir.Node, batch) -> np.ndarray | None:
    """A constant Reshape target with a -1, of an input led by the batch, without the -1 where it
    can be worked out, else None: [0, ..., -1, ...] (MobileViT), and [-1, H, W, C] that gives the
    batch, written [0, H, W, C] (timm's window_reverse, windows.view(-1, H, W, C))."""
    if node.op_type != "Reshape" or len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    target, x = const_array(node.inputs[1]), node.inputs[0].shape
    if target is None or target.ndim != 1 or x is None or len(x) == 0 or _attr(node, "allowzero", 0) \
            or not _is_batch(x[0], batch) or -1 not in target:
        return None
    new = _without_minus_one(target.astype(np.int64), x)
    if -1 not in new:
        return new
    if not all(isinstance(d, int) for d in list(x)[1:]):
        return None
    o1, o2 = (_reshaped(target, [b] + list(x)[1:]) for b in (1, 2))
    return np.array([0] + o1[1:], np.int64) if o1 and o2 and o1[0] == 1 and o2[0] == 2 and o1[1:] == o2[1:] else None


_LED = "tinytlc.led_by_image_batch"  # Node.meta key: a target written by _to_image_batch


def _to_image_batch(graph: ir.Graph, const: Constants, node: ir.Node, rest: np.ndarray) -> None:
    """Expand, Reshape or Resize to [the image's batch, *rest]: Concat(Shape(image)[0:1], rest), which shape
    inference follows (onnx propagates Shape, Slice and Concat; not the Where(Equal(size, -1), 1,
    size) torch writes for `expand(x.shape[0], -1, -1)`), so the result's batch is the image's."""
    t = ir.tape.Tape(graph)
    n = t.op("Slice", [t.op("Shape", [graph.inputs[0]]), const([0], "tinytlc.ints"), const([1], "tinytlc.ints")])
    shape = t.op("Concat", [n, const(rest.astype(np.int64))], attributes={"axis": 0})
    graph.insert_before(node, t.nodes)
    node.replace_input_with(_LED_INPUT[node.op_type], shape)
    node.meta[_LED] = True  # (its target still evaluates to [batch, *rest]: not to be written again)


_LED_INPUT = {"Expand": 1, "Reshape": 1, "Resize": 3}  # the target an op takes as [batch, *rest]


def _batch_led(node: ir.Node, batch, patient: bool, wait_on_minus_one: bool = False) -> np.ndarray | None:
    """The constant rest of an Expand, Reshape or Resize target computed at run time as [batch,
    *rest] (a class token expanded with `x.shape[0]`; Swin's windows reshaped back with the image's
    B; F.interpolate(size=...), which torch writes as Concat(Shape(x)[:2], size)), else None. A
    Reshape only once nothing else moves, and only where its input does not start with the batch
    (there _static_target copies it with 0): written with -1, the batch's symbol was lost for every
    tensor after it, and with it the static shapes of every later block. A Reshape's target, even a
    constant one, that gives the batch from an input whose dimensions are known (timm's
    window_reverse, windows.view(-1, H, W, C)) gets its rest worked out, with no -1 left; one that
    keeps a -1 waits for a round in which nothing else moved (`wait_on_minus_one`)."""
    index = _LED_INPUT.get(node.op_type)
    if index is None or len(node.inputs) <= index or node.inputs[index] is None or node.meta.get(_LED) \
            or (const_array(node.inputs[index]) is not None and node.op_type != "Reshape"):
        return None
    if node.op_type == "Reshape":
        x = node.inputs[0].shape
        if patient or _attr(node, "allowzero", 0) or x is None or len(x) == 0 or _is_batch(x[0], batch):
            return None
    t1, t2 = (evaluate_shape(node.inputs[index], b, {}, batch) for b in (1, 2))
    if t1 is None or t2 is None or t1.ndim != 1 or t1.shape != t2.shape or len(t1) < 2:
        return None
    leads = [_leading(node.inputs[0], b, batch) for b in (1, 2)] if node.op_type == "Reshape" else [None]
    if None not in leads and all(isinstance(d, int) for d in list(x)[1:]):
        # what the target gives (timm's window_reverse: windows.view(-1, H, W, C) is the image's batch)
        o1, o2 = (_reshaped(t, [lead] + list(x)[1:]) for t, lead in zip((t1, t2), leads))
        if o1 is not None and o2 is not None and o1[0] == 1 and o2[0] == 2 and o1[1:] == o2[1:] and min(o1) > 0:
            return np.array(o1[1:], np.int64)
    if const_array(node.inputs[index]) is not None or (wait_on_minus_one and (t1 == -1).any()):
        return None  # (a -1 left in the rest: its input's shape may be known once this round's changes are)
    return t1[1:] if t1[0] == 1 and t2[0] == 2 and (t1[1:] == t2[1:]).all() else None


EXPORTED_BATCH = "tinytlc.exported_batch"  # model metadata: a file exported for one batch size


def _unbake_batch(graph: ir.Graph, const: Constants, exported: int, batch) -> bool:
    """A file exported for batch N has N written into its Reshape targets ([N, C*H*W] to flatten).
    Where a Reshape's input starts with the batch and its constant target with N, copy the batch
    (0) instead: identical at batch N, right at any other. An Expand to [N, ...] expands to the
    image's batch instead."""
    modified = False
    for node in list(graph):
        if node.op_type == "Expand":  # (a class token expanded to [N, 1, D]): to the image's batch
            target = const_array(node.inputs[1])
            if target is not None and target.ndim == 1 and len(target) > 1 and target[0] == exported:
                _to_image_batch(graph, const, node, target[1:])
                modified = True
            continue
        if node.op_type != "Reshape":
            continue
        target, x = const_array(node.inputs[1]), node.inputs[0].shape
        if target is not None and target.ndim == 1 and len(target) and target[0] == exported and \
                x is not None and len(x) and _is_batch(x[0], batch) and not (target == 0).any():
            node.attributes.pop("allowzero", None)  # (with no zero in the target it changed nothing)
            node.replace_input_with(1, const(np.concatenate([[0], target[1:]]).astype(np.int64)))
            modified = True
    return modified


class StaticReshapesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        const = Constants(graph, "tinytlc.static_shape")  # (one initializer per distinct target)
        image = graph.inputs[0].shape
        batch = image[0] if image is not None and len(image) > 0 else None
        _reinfer(model)  # shapes as onnx infers them now, not as the exporter wrote them
        exported = model.metadata_props.get(EXPORTED_BATCH)
        changed, patient = True, True
        while changed or patient:  # a fixed Reshape can make the next Shape(x) static
            patient = patient and changed  # once nothing moves, settle the rest with -1
            changed = exported is not None and _unbake_batch(graph, const, int(exported), batch)
            modified |= changed
            for node in list(graph):
                if node.op_type not in _SHAPE_INPUTS or node.domain not in ("", "ai.onnx"):
                    continue
                rest = _batch_led(node, batch, patient, wait_on_minus_one=changed)
                if rest is not None:
                    _to_image_batch(graph, const, node, rest)
                    changed = modified = True
                    continue
                resolved = _resolved_reshape(node, batch)
                if resolved is not None:
                    node.replace_input_with(1, const(resolved))
                    changed = modified = True
                    continue
                for index in _SHAPE_INPUTS[node.op_type]:
                    target = _static_target(node, index, batch, patient) if index < len(node.inputs) else None
                    if target is not None:
                        node.replace_input_with(index, const(target))
                        changed = modified = True
            if changed:
                _reinfer(model)
        return ir.passes.PassResult(model, modified)


def _reinfer(model: ir.Model) -> None:
    """Infer every shape anew (onnx's inference keeps the unknown dims it is given); where inference
    fails, the shapes stay as they were."""
    values = [v for node in model.graph for v in node.outputs]
    saved = [v.shape for v in values]
    for v in values:
        v.shape = None
    InferShapesPass()(model)
    if all(v.shape is None for v in values):
        for v, shape in zip(values, saved):
            v.shape = shape
