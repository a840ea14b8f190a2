"""Planned (static) memory of a training step: which tensors are alive when, from the graph.

Order and sizes come from one profiled training step: ORT's profiler records the order in which
it ran the nodes and the shape of every output. Nodes are looked up in the graph ORT ran, saved by
the same session: its optimizers add nodes (NCHWc reorders, fused convs) that the file does not
have, and a plan without them misses tensors (MobileNetV2 `bias` + `pack-masks`: 75.4 MiB planned
from the file, 83.6 measured). A tensor lives from the node that makes it to the
last node that reads it (graph inputs, parameters and the step's outputs excluded: they are not
the step's own memory). The planned peak is the largest sum of live tensors at any node; it
explains where measured memory goes, it does not replace the measurement.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

BYTES = {"float": 4, "bool": 1, "uint8": 1, "int8": 1, "int64": 8, "int32": 4, "double": 8, "float16": 2}


@dataclass
class Plan:
    peak_bytes: int
    peak_node: str
    live_at_peak: list[tuple[str, int]] = field(default_factory=list)  # (tensor, bytes), largest first


def named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name so the profiler's records map back to graph nodes."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model


def profile_step(directory: Path, manifest: dict) -> tuple[list[dict], onnx.ModelProto]:
    """Run one training step with ORT's profiler on; return its node events in execution order
    and the graph the session ran (after ORT's own optimizers)."""
    import onnxruntime as ort
    from onnxruntime.training.api import CheckpointState, Module

    from tinytlc.runtime.session import session_options
    with tempfile.TemporaryDirectory() as tmp:
        model = named(onnx.load(directory / "training_model.onnx"))
        path = Path(tmp) / "training_model.onnx"
        onnx.save(model, path)
        opts: ort.SessionOptions = session_options(manifest.get("session"), measure=True)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        state = CheckpointState.load_checkpoint(str(directory / "checkpoint"))
        module = Module(str(path), state, None, session_options=opts)
        module.train()
        shape = manifest["input"]["shape"]
        feeds = {manifest["input"]["name"]: np.zeros(shape, np.float32),
                 manifest["labels"]["name"]: np.zeros(shape[0], np.int64),
                 manifest["label_smoothing_input"]: np.array(0, np.float32)}
        module(*[feeds[n] for n in module.input_names()])
        del module  # writes the profile
        events = json.loads(Path(sorted(glob.glob(os.path.join(tmp, "profile*.json")))[-1]).read_text())
        model = onnx.load(opts.optimized_model_filepath)
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return sorted(nodes, key=lambda e: e["ts"]), model


def plan(directory: Path, manifest: dict) -> Plan:
    events, model = profile_step(directory, manifest)
    by_name = {n.name: n for n in model.graph.node}
    skip = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | \
           {o.name for o in model.graph.output}
    sizes, born, last = {}, {}, {}
    for t, e in enumerate(events):
        node = by_name.get(e["name"][: -len("_kernel_time")])
        if node is None:
            continue
        for name, ts in zip(node.output, e["args"].get("output_type_shape", [])):
            (dtype, shape), = ts.items()
            if name and name not in skip:
                sizes[name] = int(np.prod(shape, dtype=np.int64)) * BYTES.get(dtype, 4)
                born[name] = t
                last.setdefault(name, t)
        for name in node.input:
            if name in born:
                last[name] = t
    deltas = np.zeros(len(events) + 1, np.int64)
    for name, size in sizes.items():
        deltas[born[name]] += size
        deltas[last[name] + 1] -= size
    live = np.cumsum(deltas)[:-1]
    t = int(live.argmax())
    at_peak = sorted(((n, s) for n, s in sizes.items() if born[n] <= t <= last[n]), key=lambda p: -p[1])
    return Plan(int(live[t]), events[t]["name"][: -len("_kernel_time")], at_peak)
