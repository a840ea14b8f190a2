"""compile: model source -> forward ONNX -> forward passes -> ORT autodiff -> artifact directory.

The artifact directory holds training_model.onnx (its initializers in training_model.onnx.data
when passes rewrote it), eval_model.onnx, optimizer_model.onnx, checkpoint and tinytlc.json, the
manifest every later command reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass, RemoveUnusedNodesPass

from tinytlc import methods
from tinytlc.errors import TinyTLError, check_int, check_path
from tinytlc.export import MODULE_PARAMETERS, PARAMETERS, Source, load_module, load_source
from tinytlc.fsutil import OLD_MARK, atomic_path, locked, remove_stale, sha256
from tinytlc.onnx_file import MAX_IR
from tinytlc.passes.forward import (EinsumAsMatMulPass, ExplicitPadsPass, FusePadIntoConvPass, GatherIndexAsSlicePass, InferShapesPass, KeepPadBeforeMaxPoolPass, LiftWeightConstantsPass, LiteOptions, LiteResidualPass, LowerForAutodiffPass, MergeAveragedHeadsPass, ResizeAsMatMulPass,
                                    ReplaceClassifierPass, SplitBidirectionalRnnPass, StaticReshapesPass,
                                    find_classifier)
from tinytlc.passes.forward.static_reshapes import EXPORTED_BATCH
from tinytlc.passes.forward._values import CONSTANT, LOWERED, PARAMETER
from tinytlc.passes.forward.lower_for_autodiff import declare_layer_norm_statistics
from tinytlc.passes.training import DEFAULT_PASSES, FORWARD_PASSES, NCHWC_PASSES, PASSES
from tinytlc.passes.training.nchwc_conv import block_size
from tinytlc.pixels import IMAGENET, preprocess, raw_pixels
from tinytlc.runtime import artifacts
from tinytlc.runtime.session import TRAINED, check_step, foreign_trained_files

if TYPE_CHECKING:
    from torch import nn

MANIFEST = "tinytlc.json"


@dataclass
class Artifact:
    """A compiled artifact directory and its manifest."""
    path: Path
    manifest: dict

    def file(self, name: str) -> Path:
        return self.path / name


def load_artifact(path: str | Path) -> Artifact:
    """The artifact compile wrote at PATH (str or Path), its manifest and files checked."""
    path = Path(path)
    mf = path / MANIFEST
    if not path.exists():
        raise TinyTLError(f"{path}: no such directory")
    if not mf.is_file():
        raise TinyTLError(f"{path}: not a tinytlc artifact directory (no {MANIFEST}; run tinytlc compile)")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinyTLError(f"{mf}: corrupt manifest ({e})") from e
    problem = manifest_problem(manifest)
    if problem:
        raise TinyTLError(f"{mf}: corrupt manifest ({problem}); compile again")
    for name in artifacts.FILES + ((artifacts.WEIGHTS,) if manifest.get("external_data") else ()):
        if not (path / name).exists():
            raise TinyTLError(f"{path}: {name} is missing; compile again")
    return Artifact(path, manifest)


JSON_TYPES = {str: "string", int: "integer", dict: "object", list: "array"}


def manifest_problem(m) -> str | None:
    """What is wrong with a manifest's shape (every later command reads these entries), or None."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if not isinstance(m, dict):
        return f"a JSON {type(m).__name__}, not an object"
    for key, kind in (("model", str), ("method", str), ("num_classes", int), ("input", dict), ("labels", dict),
                      ("logits", str), ("label_smoothing_input", str), ("preprocess", dict), ("trainable", list)):
        if not isinstance(m.get(key), kind) or isinstance(m.get(key), bool):
            return f"'{key}' is missing or not a JSON {JSON_TYPES[kind]}"
    shape, pre = m["input"].get("shape"), m["preprocess"]
    if not isinstance(m["input"].get("name"), str) or not isinstance(m["labels"].get("name"), str):
        return "'input' or 'labels' has no name"
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape)):
        return "'input' has no shape of 4 positive sizes"
    if not (isinstance(pre.get("resolution"), int) and all(isinstance(pre.get(k), list) and len(pre[k]) == 3
                                                            and all(map(number, pre[k])) for k in ("mean", "std"))):
        return "'preprocess' needs resolution, and mean and std of 3 numbers"
    return None


def check_output_directory(out: Path, force: bool) -> None:
    """compile writes OUT only if it is new, empty, or (with --force) an artifact holding nothing but
    what tinytlc wrote: nothing else is ever replaced, whatever the flags."""
    if out.is_symlink():  # (replacing it would replace the link, and leave the artifact it names as it was)
        raise TinyTLError(f"--out {out}: a symbolic link (to {os.readlink(out)}); give a directory path")
    if out.resolve() == Path.cwd().resolve() or out.resolve() in Path.cwd().resolve().parents:
        raise TinyTLError(f"--out {out}: that is the working directory (or holds it); choose a new directory")
    inside = next((p for p in out.absolute().parents if (p / MANIFEST).is_file()), None)
    if inside is not None:
        raise TinyTLError(f"--out {out}: inside the artifact {inside}; choose a directory outside it")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise TinyTLError(f"--out {out}: {blocker} is a file, not a directory")
    parent = next(p for p in out.absolute().parents if p.exists())
    if not os.access(parent, os.W_OK):
        raise TinyTLError(f"--out {out}: {parent} is not writable")
    if not out.exists():
        return
    if not out.is_dir():
        raise TinyTLError(f"--out {out}: a file is there; tinytlc replaces only artifact directories it wrote")
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        held = sorted(p.name for p in out.iterdir())
        raise TinyTLError(f"--out {out}: the directory holds files that are not a tinytlc artifact ({', '.join(held[:5])}"
                          f"{', ...' if len(held) > 5 else ''}); tinytlc will not replace it (even with --force)")
    if not force:
        raise TinyTLError(f"{out} holds an artifact; choose another --out or pass --force to replace it")
    try:  # a train holds this lock: replacing the artifact under it would lose that run
        with locked(out, "train"):
            pass
    except TinyTLError:
        raise TinyTLError(f"--out {out}: a tinytlc train is running on it; wait for it to end before replacing it") from None
    foreign = foreign_files(out)
    if foreign:
        raise TinyTLError(f"--out {out}: holds files tinytlc did not write ({', '.join(foreign[:5])}"
                          f"{', ...' if len(foreign) > 5 else ''}); move them out first (--force replaces only "
                          "what tinytlc wrote)")


ARTIFACT_FILES = {*artifacts.FILES, artifacts.WEIGHTS, "forward_model.onnx", MANIFEST, OLD_MARK}


def foreign_files(directory: Path) -> list[str]:
    """Paths in an artifact directory that compile and train did not write."""
    remove_stale(directory / TRAINED)  # a killed train's temporary folders are ours
    found = []
    for p in sorted(directory.iterdir()):
        ours = p.name == TRAINED or (p.name == f".{TRAINED}.old" and (p / OLD_MARK).is_file())
        if ours and p.is_dir() and not p.is_symlink():
            found += [f"{p.name}/{name}" for name in foreign_trained_files(p)]
        elif p.name not in ARTIFACT_FILES or p.is_symlink() or not p.is_file():
            found.append(p.name)
    return found


def _versions() -> dict:
    return {p: metadata.version(p) for p in ("tinytlc", "torch", "onnx", "onnxruntime-training-cpu", "onnx-ir")}


MODEL_KINDS = ("a zoo name, a .onnx file or path/to/file.py:function (str or Path), or a torch.nn.Module")


def check_model(model) -> None:
    """MODEL must be a str, a Path or an nn.Module: anything else is said before any work."""
    import torch
    if not isinstance(model, (str, os.PathLike, torch.nn.Module)):
        raise TinyTLError(f"MODEL is a {type(model).__name__}; expected {MODEL_KINDS}")


def model_name(model) -> str:
    """MODEL as the manifest names it: the string given, or a module's class name."""
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__


def model_source(model: str | Path | nn.Module, resolution: int, pretrained: bool = True, norm: str = "batch") -> Source:
    """export.load_source for MODEL as a str or Path, and for an nn.Module in hand (exported as
    load_source exports what a file.py:function returns; the module's train/eval mode is kept)."""
    check_model(model)
    if isinstance(model, (str, os.PathLike)):
        return load_source(os.fspath(model), resolution, pretrained, norm)
    if norm != "batch":
        raise TinyTLError("--norm applies to zoo models only")
    training, name = model.training, type(model).__name__
    try:
        proto, notes = load_module(model, name, resolution)
    finally:
        model.train(training)
    return Source(proto, preprocess(proto, notes), f"PyTorch module {name}" + (f" ({'; '.join(notes)})" if notes else ""))


def forward_graph(model: str | Path | nn.Module, method: str, num_classes: int | None, resolution: int, pretrained: bool = True,
                  lite: LiteOptions | None = None, report: dict | None = None, norm: str = "batch",
                  lite_modules: bool = False, fold_norms: bool = True, fold_trained_batchnorm: bool = True,
                  gather_as_slice: bool = True):
    """The forward graph (onnx_ir, shapes inferred) ready for autodiff, the trainable names, the
    source and the class count. `report`, if given, receives what the passes inserted.
    `lite_modules`, `fold_norms`, `fold_trained_batchnorm`: see methods.forward_passes;
    `gather_as_slice`: run passes/forward/gather_index_as_slice.py (ORT's own graph without it)."""
    methods.check_method(method)
    source = model_source(model, resolution, pretrained, norm)
    irm = ir.serde.deserialize_model(source.model)
    if PARAMETERS in irm.metadata_props:  # a user's module: its parameters are known, the rest is constant
        trains = set(json.loads(irm.metadata_props[PARAMETERS]))
        for name, v in irm.graph.initializers.items():
            v.meta[CONSTANT], v.meta[PARAMETER] = name not in trains, name in trains
    else:
        LiftWeightConstantsPass()(irm)
    IdentityEliminationPass()(irm)
    InferShapesPass()(irm)
    ExplicitPadsPass(strict=False)(irm)  # before Pads are fused into convs
    irm = FusePadIntoConvPass()(irm).model
    StaticReshapesPass()(irm)  # (infers every shape first)
    ExplicitPadsPass()(irm)
    KeepPadBeforeMaxPoolPass()(irm)
    MergeAveragedHeadsPass()(irm)  # (a distilled DeiT's two heads)
    _, weight, _, out_by_in = find_classifier(irm.graph)
    head_classes = weight.shape[0] if out_by_in else weight.shape[1]
    if num_classes is not None and num_classes != head_classes:
        ReplaceClassifierPass(num_classes)(irm)
    InferShapesPass()(irm)
    if SplitBidirectionalRnnPass()(irm).modified | LowerForAutodiffPass()(irm).modified | EinsumAsMatMulPass()(irm).modified:
        InferShapesPass()(irm)
    norms = methods.norm_params(irm.graph)
    if report is not None:
        report["found"] = describe(irm.graph)
        report["model_elements"] = _model_elements(irm)
    for p in methods.forward_passes(method, lite, lite_modules, fold_norms, fold_trained_batchnorm):
        p(irm)
        if isinstance(p, LiteResidualPass) and report is not None:
            report.update(lite_modules=p.report, lite_blocks=p.blocks, lite_skipped=p.skipped, lite_width=p.factor)
    if gather_as_slice:  # (after the blocks and the head are found: they read Gathers)
        GatherIndexAsSlicePass()(irm)
    RemoveUnusedNodesPass()(irm)
    InferShapesPass()(irm)
    trainable = methods.trainable_params(irm.graph, method, norms)
    if ResizeAsMatMulPass(trainable)(irm).modified:  # (its sizes' shape arithmetic is left unused)
        RemoveUnusedNodesPass()(irm)
        InferShapesPass()(irm)
    return irm, trainable, source, (num_classes or head_classes)


def _model_elements(irm: ir.Model) -> int:
    """The model's parameter count as its author would give it (new head included): a module's
    parameters, frozen ones too; a file's trainable weights (methods.parameters), less BatchNorm
    statistics. Before the method's passes, which fold, add and write out weights."""
    if MODULE_PARAMETERS in irm.metadata_props:
        names = set(json.loads(irm.metadata_props[MODULE_PARAMETERS]))
    else:
        stats = {n.inputs[i].name for n in irm.graph if n.op_type == "BatchNormalization"
                 for i in (3, 4) if len(n.inputs) > i and n.inputs[i] is not None}
        names = set(methods.parameters(irm.graph)) - stats
    return sum(v.const_value.size for name, v in irm.graph.initializers.items() if name in names)


def describe(graph: ir.Graph) -> dict:
    """What compile found in the graph, for the user: classifier, norms, blocks."""
    from collections import Counter

    from tinytlc.passes.forward import find_blocks
    from tinytlc.passes.forward.norms import find_norms
    node, weight, _, out_by_in = find_classifier(graph)
    features = weight.shape[1] if out_by_in else weight.shape[0]
    kinds = Counter(_norm_kind(norm) for norm in find_norms(graph))
    blocks = Counter(b.kind for b in find_blocks(graph))
    return {"classifier": f"{node.op_type} '{node.name or weight.name}' ({features} features)",
            "norms": ", ".join(f"{v} {k}" for k, v in kinds.items()),
            "blocks": ", ".join(f"{v} {k}" for k, v in blocks.items()) or "none"}


def _norm_kind(norm) -> str:
    """The op a norm came as: a norm node, one LowerForAutodiffPass wrote out, or Mul + Add."""
    for n in norm.nodes:
        if n.op_type in ("BatchNormalization", "LayerNormalization"):
            return n.op_type
        if LOWERED in n.meta:
            op, x = n.meta[LOWERED]
            return op if x is norm.input else f"GroupNorm (Reshape + {op})"
    return "written out (Mul + Add)"


def build_forward(model: str | Path | nn.Module, method: str, num_classes: int | None, resolution: int, pretrained: bool = True,
                  lite: LiteOptions | None = None, report: dict | None = None, norm: str = "batch",
                  lite_modules: bool = False, fold_trained_batchnorm: bool = True, gather_as_slice: bool = True):
    """forward_graph as an ONNX ModelProto at an IR version ORT 1.19.2 loads."""
    irm, trainable, source, classes = forward_graph(model, method, num_classes, resolution, pretrained, lite, report,
                                                    norm, lite_modules, fold_trained_batchnorm=fold_trained_batchnorm,
                                                    gather_as_slice=gather_as_slice)
    proto = declare_layer_norm_statistics(ir.serde.serialize_model(irm))
    proto.ir_version = min(proto.ir_version, MAX_IR)
    return proto, trainable, source, classes


def resolve_passes(passes: list[str] | None) -> list[str]:
    """None: the default training-graph passes; otherwise the named ones, checked, in pass order.
    Names given as +name are added to the defaults (`--passes +pack-masks`)."""
    if passes is None:
        return list(DEFAULT_PASSES)
    added = [p for p in passes if p.startswith("+")]
    if added and len(added) != len(passes):
        raise TinyTLError("passes: either name every pass or add to the defaults with +name, not both")
    if added:
        passes = DEFAULT_PASSES + [p[1:] for p in added]
    unknown = [p for p in passes if p not in PASSES]
    if unknown:
        raise TinyTLError(f"unknown pass '{unknown[0]}': choose from {', '.join(PASSES)}")
    return [p for p in PASSES if p in passes]


def run_training_passes(path: Path, names: list[str]) -> list[str]:
    """Rewrite the training model at `path` in place with the named passes; the ones that changed it."""
    names = [n for n in names if n not in FORWARD_PASSES]  # compile ran those on the forward graph
    if not names:
        return []
    model, changed = ir.load(path), []
    for name in names:
        result = PASSES[name]()(model)
        model = result.model
        if result.modified:
            changed.append(name)
    # Initializers beside the graph, not inside it: ORT then reads each into its tensor directly
    # instead of holding the parsed file's copy too while the session loads (measured: ResNet-18
    # bias, 128 px, +91 -> +49 MiB resident after loading, high-water mark +118 -> +116 MiB).
    ir.save(model, path, external_data=artifacts.WEIGHTS)
    return changed


# ORT session settings for graphs the passes rewrote. Measured (README, `tinytlc diff`): ORT's
# memory pattern and buffer reuse hold buffers past the last use the plan gives them; with both
# off every tensor is freed at its last reader and the measured peak equals the planned one.
# Denormals (below 1.2e-38) as zero: Swin's attention masks (-100) give softmax outputs of about
# 1e-44, on which the CPU's float units take a slow path (Swin-T `bias` step 0.8x with it, README).
LEAN_SESSION = {"mem_pattern": False, "mem_reuse": False, "execution_order": "default", "denormal_as_zero": True}


PIXELS = {"imagenet": IMAGENET, "0-1": raw_pixels(1), "0-255": raw_pixels(255)}  # what --pixels feeds


def compile_model(model: str | Path | nn.Module, method: str, out: str | Path, *, num_classes: int | None = None,
                  batch_size: int = 8, resolution: int = 224, force: bool = False,
                  pretrained: bool = True, passes: list[str] | None = None,
                  session: dict | None = None, lite: LiteOptions | None = None, norm: str = "batch",
                  lite_modules: bool = False, pixels: str | None = None) -> Artifact:
    """Compile MODEL for METHOD into the artifact directory OUT (written atomically).

    MODEL: a zoo name, a .onnx file or "path/to/file.py:function" (str or Path), or a torch.nn.Module.

    `passes`: training-graph passes to run (None: all of them; []: ORT's graph unmodified).
    `session`: ORT session settings to train with (None: LEAN_SESSION after passes, else ORT's).
    `lite_modules`: lite residual modules in the network whatever the method (frozen unless trained).
    `pixels`: what the network takes, when compile cannot read it from the graph: "imagenet"
    (normalised), "0-1" or "0-255" (raw pixels; for networks that preprocess their own input)."""
    check_model(model)
    check_path("out", out)
    check_int("--resolution", resolution, 8, 4096)
    check_int("--batch-size", batch_size, 1)
    check_int("--num-classes", num_classes, 2, optional=True)
    out = Path(out)
    check_output_directory(out, force)
    passes = resolve_passes(passes)
    if pixels is not None and pixels not in PIXELS:
        raise TinyTLError(f"--pixels {pixels}: expected one of {', '.join(PIXELS)}")
    if session is None:
        session = dict(LEAN_SESSION) if passes else {}
    report: dict = {}
    proto, trainable, source, classes = build_forward(model, method, num_classes, resolution, pretrained, lite,
                                                      report, norm, lite_modules,
                                                      fold_trained_batchnorm="fold-trained-batchnorm" in passes,
                                                      gather_as_slice="gather-as-slice" in passes)
    image = proto.graph.input[0]
    channels = image.type.tensor_type.shape.dim[1].dim_value
    with atomic_path(out, is_dir=True, replaceable=lambda d: check_output_directory(d, force)) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, tmp / "forward_model.onnx")
        artifacts.generate(proto, trainable, tmp)
        changed = run_training_passes(tmp / "training_model.onnx", passes)
        manifest = {
            "model": model_name(model),
            "source": source.description + (f" (fed pixels as --pixels {pixels} says)" if pixels else ""),
            "method": method,
            "num_classes": classes,
            "input": {"name": image.name, "shape": [batch_size, channels, resolution, resolution], "dtype": "float32"},
            "labels": {"name": artifacts.LABELS, "dtype": "int64"},
            "label_smoothing_input": artifacts.SMOOTHING,
            "logits": proto.graph.output[0].name,
            "trainable": trainable,
            "trainable_elements": _count(proto, set(trainable)),
            "total_elements": _count(proto, None),
            "preprocess": {**source.preprocess, **PIXELS.get(pixels, {}), "resolution": resolution, "channels": channels},
            "passes": passes,
            "session": session,
            # the training model's initializers are in WEIGHTS where a pass rewrote it
            **({"external_data": artifacts.WEIGHTS} if (tmp / artifacts.WEIGHTS).exists() else {}),
            # NCHWc ops are laid out for this CPU's block: recorded where a pass wrote some
            **({"nchwc_block": block_size()} if set(changed) & set(NCHWC_PASSES) else {}),
            **report,
            "versions": _versions(),
        }
        manifest["checkpoint_sha256"] = sha256(tmp / "checkpoint")
        try:
            check_step(tmp, manifest)
        except TinyTLError as e:
            exported = next((p.value for p in proto.metadata_props if p.key == EXPORTED_BATCH), None)
            if exported is None:
                raise
            raise TinyTLError(f"{e}. The file was exported for a fixed batch of {exported} and that size is "
                              "written into its shapes: export it with a dynamic batch (dynamic_axes or "
                              "dynamic_shapes in torch.onnx.export)") from e
        # every later session checks these: flipped weights are called corrupt, not "diverged; lower --lr"
        manifest["files_sha256"] = {name: sha256(tmp / name) for name in artifacts.HASHED if (tmp / name).exists()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Artifact(out, manifest)


def _count(proto: onnx.ModelProto, names: set[str] | None) -> int:
    import numpy as np
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in proto.graph.initializer
                   if t.data_type == onnx.TensorProto.FLOAT and (names is None or t.name in names)))


def export_inference(directory: str | Path, manifest: dict, out: str | Path, check_batch: int = 2) -> dict:
    """Write an inference ONNX model at OUT with the trained weights of the artifact DIRECTORY (str or
    Path), checked against its eval model on a batch of `check_batch` first; returns the path written,
    that check's max |diff|, the class names and the model's input and output names."""
    from tinytlc.runtime import inference
    check_path("directory", directory)
    check_path("out", out)
    check_manifest(directory, manifest)
    return inference.export_inference(Path(directory), manifest, Path(out), check_batch)


def check_manifest(directory: str | Path, manifest) -> None:
    """The manifest a Python caller passes must be DIRECTORY's own (another's reads as corruption)."""
    try:
        same = json.loads(json.dumps(manifest)) == load_artifact(directory).manifest  # (as written: tuples are lists)
    except TypeError:
        same = False
    if not isinstance(manifest, dict) or not same:
        raise TinyTLError(f"{directory}: the manifest given is not this artifact's; "
                          "pass tinytlc.load_artifact(DIRECTORY).manifest")


__all__ = ["Artifact", "compile_model", "load_artifact", "build_forward", "export_inference"]
