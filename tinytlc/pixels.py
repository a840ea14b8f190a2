"""What pixels a network is fed: ImageNet-normalised ones, or raw pixels in the range (0..1 or
0..255) a network that normalises its own input expects, read from the start of its graph."""

from __future__ import annotations

import json

import numpy as np
import onnx

from tinytlc.onnx_file import INPUT_ADAPTER, constants, replace_node

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def raw_pixels(top: float) -> dict:
    """What feeds a network pixels in 0..top (data.Preprocess divides by 255 first)."""
    return {"mean": [0.0] * 3, "std": [1 / top] * 3}


_AFFINE = ("Sub", "Add", "Mul", "Div")


def _own_normalisation(model: onnx.ModelProto) -> tuple[float | None, str | None]:
    """The pixel range (1 or 255) a network expects when it normalises its own input, and a remark
    for the user. What is read, from the image input on (deployed files often take raw 0..255
    pixels): Sub, Add, Mul, Div by per-channel or scalar constants; a mean image subtracted (Caffe's
    (1, 3, H, W), read per channel); a BatchNormalization over constant statistics (MXNet's and
    Caffe's data_bn); through Cast to float, Identity and Transposes (tf2onnx --inputs-as-nchw puts a
    Keras Rescaling between two, with (3,) constants over the last axis). Shape and Size readers of
    the image (`B = x.shape[0]`) read no pixel and are passed over.

    All of this is preprocessing, not the network: its constants become Constant nodes, so `full`
    does not train them, and a data_bn becomes Mul + Add by its frozen scale and shift, so no method
    trains it as a norm (its statistics describe the pixels it expects, as a mean and std do).
    (None, None) when the network starts otherwise; (None, remark) when it starts with arithmetic on
    constants that cannot be read with confidence: it is then fed ImageNet-normalised pixels, and
    the remark says so rather than leaving the user to find out from the accuracy."""
    from collections import defaultdict

    from onnx import numpy_helper
    graph = model.graph
    inits, consts = {t.name: t for t in graph.initializer}, constants(graph)
    users = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            users[name].append(n)
    channels = graph.input[0].type.tensor_type.shape.dim[1].dim_value

    def constant(name):
        t = consts.get(name)
        return None if t is None or t.data_type != onnx.TensorProto.FLOAT else numpy_helper.to_array(t).astype(np.float64)

    def per_channel(a, axis, image_ok):
        """One value per channel when `a` broadcasts over the 4-D image along the channel axis only;
        an image of values (a mean image) averaged per channel if `image_ok`. None otherwise."""
        if a is None or a.ndim > 4:
            return None
        a = a.reshape((1,) * (4 - a.ndim) + a.shape)
        if a.shape[0] != 1 or a.shape[axis] not in (1, channels) or \
                (not image_ok and any(d != 1 for i, d in enumerate(a.shape) if i != axis)):
            return None
        return np.broadcast_to(np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).mean(1), (channels,))

    x, axis, scale, shift = graph.input[0].name, 1, np.ones(channels), np.zeros(channels)
    read, names, bns, image, stop = [], [], [], False, None
    outputs = {o.name for o in graph.output}
    while x not in outputs:
        readers = [n for n in users[x] if n.op_type not in ("Shape", "Size")]
        if len(readers) != 1 or readers[0].domain not in ("", "ai.onnx") or list(readers[0].input).count(x) != 1:
            break
        node, attrs = readers[0], {a.name: onnx.helper.get_attribute_value(a) for a in readers[0].attribute}
        if node.op_type == "Transpose":
            perm = list(attrs.get("perm", [3, 2, 1, 0]))
            if sorted(perm) != [0, 1, 2, 3]:
                break
            axis = perm.index(axis)
        elif node.op_type in _AFFINE:
            other = node.input[1] if node.input[0] == x else node.input[0]
            c = per_channel(constant(other), axis, node.op_type in ("Sub", "Add"))
            if c is None or (node.input[0] != x and node.op_type in ("Sub", "Div")) or \
                    (node.op_type in ("Mul", "Div") and not np.all(c)):
                stop = node if constant(other) is not None else None
                break
            image |= constant(other).size > channels
            if node.op_type == "Sub":
                shift = shift - c
            elif node.op_type == "Add":
                shift = shift + c
            elif node.op_type == "Mul":
                scale, shift = scale * c, shift * c
            else:
                scale, shift = scale / c, shift / c
            read.append(node)
            names.append(other)
        elif node.op_type == "BatchNormalization":
            params = [constant(i) for i in node.input[1:5]]
            if axis != 1 or any(p is None or p.shape != (channels,) for p in params):
                stop = node
                break
            gamma, beta, mean, var = params
            s = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
            scale, shift = scale * s, shift * s + beta - mean * s
            read.append(node)
            bns.append((node, s, beta - mean * s))
        elif not (node.op_type == "Identity" or node.op_type == "Cast" and attrs.get("to") == onnx.TensorProto.FLOAT):
            break
        x = node.output[0]
    mean = -shift / scale  # y = (x - mean) * scale
    # statistics of raw pixels (a data_bn's) lie inside the range; a BN whose mean is about 0 was
    # fitted on pixels normalised already
    inside = (0.1, 0.9) if bns else (-0.05, 1.05)
    pixels = next((r for r in (1.0, 255.0) if np.all((mean >= inside[0] * r) & (mean <= inside[1] * r))
                   and np.all(np.abs(scale) * r >= 0.5)), None)
    if stop is not None or (read and pixels is None):
        what = stop or read[0]
        return None, (f"it seems to preprocess its own input ({what.op_type} {what.name or what.output[0]}) in a way "
                      "tinytlc cannot read: fed ImageNet-normalised pixels, check that the network expects those "
                      "(--pixels says what it takes)")
    if not read:
        return None, None
    for name in dict.fromkeys(names):
        if name in inits and all(u.op_type in _AFFINE for u in users[name]):
            graph.node.insert(0, onnx.helper.make_node("Constant", [], [name], value=inits[name]))
            graph.initializer.remove(inits[name])
    for bn, s, b in bns:  # x * s + b: its statistics folded in, as constants
        name, (src, *params), y = bn.name or bn.output[0], bn.input, bn.output[0]
        for p in dict.fromkeys(params):
            if p in inits and all(u is bn for u in users[p]):
                graph.initializer.remove(inits[p])
        tensors = [numpy_helper.from_array(v.reshape(-1, 1, 1).astype(np.float32), f"{name}/{k}")
                   for k, v in (("scale", s), ("shift", b))]
        nodes = [onnx.helper.make_node("Constant", [], [t.name], value=t) for t in tensors] + [
            onnx.helper.make_node("Mul", [src, tensors[0].name], [f"{name}/scaled"], name=f"{name}/Mul"),
            onnx.helper.make_node("Add", [f"{name}/scaled", tensors[1].name], [y], name=f"{name}/Add")]
        replace_node(graph, next(i for i, n in enumerate(graph.node) if n.output[:1] == [y]), nodes)
    return pixels, "its mean image read per channel" if image else None


def preprocess(model: onnx.ModelProto, notes: list[str]) -> dict:
    """What tinytlc feeds the network: ImageNet-normalised pixels, or raw pixels in the range a
    network that normalises its own input expects (data.Preprocess divides by 255 first)."""
    pixels, remark = _own_normalisation(model)
    adapter = json.loads(next((p.value for p in model.metadata_props if p.key == INPUT_ADAPTER), "{}"))
    extra = {"adapter": adapter} if adapter else {}  # (for export: the input as the file took it)
    if pixels is None and adapter.get("dtype") == "uint8":  # uint8 images are raw pixels, whatever follows
        return {**raw_pixels(255), **extra}
    if pixels is None:
        notes += [remark] if remark else []
        return {**IMAGENET, **extra}
    notes.append(f"it normalises its own input{f' ({remark})' if remark else ''}: fed pixels in 0..{pixels:g}")
    return {**raw_pixels(pixels), **extra}
