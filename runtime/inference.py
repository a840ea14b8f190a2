"""Export the trained model for inference: the eval graph cut at the logits, with the trained
parameters baked in, checked against the eval model on a batch before it replaces anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tinytlc.errors import TinyTLError
from tinytlc.fsutil import atomic_path
from tinytlc.runtime.session import open_session, trained_classes


def check_target(directory: Path, out: Path) -> None:
    """Export writes only a new file, or replaces a model tinytlc exported before; never into an
    artifact (its own files are compile's and train's) and never over anything else."""
    out, art = Path(out).resolve(), Path(directory).resolve()
    if out == art or art in out.parents:
        raise TinyTLError(f"{out}: inside the artifact {art}; export to a path outside it")
    if out.is_dir():
        raise TinyTLError(f"{out}: is a directory; give a file name such as {out / 'model.onnx'}")
    if out.exists():
        try:
            mine = onnx.load(str(out), load_external_data=False).doc_string.startswith(DOC_PREFIX)
        except Exception:
            mine = False
        if not mine:
            raise TinyTLError(f"{out}: exists and was not exported by tinytlc; choose another name")
    parent = out.parent
    if not parent.exists():
        raise TinyTLError(f"{parent}: no such directory")
    if not parent.is_dir():
        raise TinyTLError(f"{parent}: is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise TinyTLError(f"{parent}: not writable")


DOC_PREFIX = "tinytlc: "


def export_inference(directory: Path, manifest: dict, out: Path, check_batch: int = 2) -> dict:
    check_target(directory, out)
    sess = open_session(directory, manifest, with_optimizer=False)
    sess.module.eval()
    shape = [check_batch] + manifest["input"]["shape"][1:]
    adapter = manifest["preprocess"].get("adapter", {})
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape).astype(np.float32) if adapter.get("dtype") == "uint8" else \
        rng.standard_normal(shape, dtype=np.float32)
    y = np.zeros(check_batch, np.int64)
    _, expected = sess.eval_step(x, y)
    with atomic_path(out) as tmp:
        sess.module.export_model_for_inferencing(str(tmp), [manifest["logits"]])
        model = onnx.load(str(tmp))
        model.doc_string = f"{DOC_PREFIX}{manifest['model']} trained with method {manifest['method']}"
        classes = trained_classes(directory)
        # the user's file's metadata (author, licence...) stays; tinytlc's own notes go
        props = {p.key: p.value for p in model.metadata_props if not p.key.startswith("tinytlc.")}
        if classes:  # which logit is which class: {"classes": [...]} in the model's metadata
            props["classes"] = json.dumps(classes)
        props["preprocess"] = json.dumps(_preprocess_note(manifest))  # what its input must be, for deployment
        onnx.helper.set_model_props(model, props)
        feed = x
        if adapter:
            _restore_input(model, manifest["input"]["name"], adapter)
            feed = x.transpose(0, 2, 3, 1) if adapter.get("layout") == "NHWC" else x
            feed = feed.astype(np.uint8) if adapter.get("dtype") == "uint8" else feed
        onnx.save(model, str(tmp))
        got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(
            None, {manifest["input"]["name"]: np.ascontiguousarray(feed)})[0]
        err = float(np.abs(got - expected).max())
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            raise TinyTLError(f"exported model disagrees with the eval model (max |diff| {err:.3g}); not written")
    return {"path": str(out), "max_abs_diff": err, "classes": classes, "inputs": [i.name for i in model.graph.input],
            "outputs": [o.name for o in model.graph.output]}


def _preprocess_note(manifest: dict) -> dict:
    """How tinytlc fed the network its images, written into the exported model's metadata: whoever
    deploys it without the artifact must feed the same."""
    p = manifest["preprocess"]
    adapter = p.get("adapter", {})
    note = {"resolution": p["resolution"], "channels": p.get("channels", 3), "layout": adapter.get("layout", "NCHW"),
            "dtype": adapter.get("dtype", "float32"),
            "resize": "the whole image, bilinear with antialiasing, to resolution x resolution (no crop)"}
    if adapter.get("dtype") == "uint8":
        return {**note, "pixels": "uint8 RGB values 0..255, as they are"}
    return {**note, "pixels": "(RGB / 255 - mean) / std per channel" + (", then the channels averaged"
                                                                         if note["channels"] == 1 else ""),
            "mean": p["mean"], "std": p["std"]}


def _restore_input(model: onnx.ModelProto, name: str, adapter: dict) -> None:
    """The image input as the user's file took it: the Cast from uint8 and the Transpose from NHWC
    that compile took off (onnx_file._take_input_adapter) go back in front of the graph."""
    inner = f"{name}/nchw_float"
    for node in model.graph.node:
        node.input[:] = [inner if i == name else i for i in node.input]
    front, x = [], name
    if adapter.get("dtype") == "uint8":
        front.append(onnx.helper.make_node("Cast", [x], [f"{name}/float"], to=onnx.TensorProto.FLOAT, name=f"{name}/Cast"))
        x = f"{name}/float"
    if adapter.get("layout") == "NHWC":
        front.append(onnx.helper.make_node("Transpose", [x], [inner], perm=[0, 3, 1, 2], name=f"{name}/Transpose"))
    else:
        front[-1].output[0] = inner
    for i, node in enumerate(front):
        model.graph.node.insert(i, node)
    if adapter.get("layout") == "NHWC":  # compile's NHWC view of the image for its NHWC readers: the image itself
        for view in [n for n in model.graph.node if n.op_type == "Transpose" and list(n.input) == [inner]
                     and list(onnx.helper.get_attribute_value(n.attribute[0])) == [0, 2, 3, 1]]:
            for node in model.graph.node:
                node.input[:] = [x if i == view.output[0] else i for i in node.input]
            model.graph.node.remove(view)
        if not any(inner in node.input for node in model.graph.node) and inner not in {o.name for o in model.graph.output}:
            model.graph.node.remove(front[-1])
    image = next(i for i in model.graph.input if i.name == name)
    t = image.type.tensor_type
    if adapter.get("dtype") == "uint8":
        t.elem_type = onnx.TensorProto.UINT8
    if adapter.get("layout") == "NHWC":
        n, c, h, w = [onnx.TensorShapeProto.Dimension() for _ in range(4)]
        for new, old in zip((n, c, h, w), t.shape.dim):
            new.CopyFrom(old)
        del t.shape.dim[:]
        t.shape.dim.extend([n, h, w, c])
