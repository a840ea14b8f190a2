"""ORT autodiff: forward ONNX + trainable parameter names -> training, eval and optimizer models
and a checkpoint (onnxruntime.training.artifacts.generate_artifacts).

The loss is cross-entropy with label smoothing as a graph input (`label_smoothing`, a float
scalar), so one artifact trains with any smoothing and evaluates with 0.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import re
import tempfile
from pathlib import Path

import onnx
from onnxruntime.training import artifacts, onnxblock
from onnxruntime.training.onnxblock import _graph_utils

from tinytlc.errors import TinyTLError
from tinytlc.runtime.session import ort_cause

LABELS = "labels"
SMOOTHING = "label_smoothing"
FILES = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")
WEIGHTS = "training_model.onnx.data"  # the rewritten training model's initializers (external data)
HASHED = ("training_model.onnx", WEIGHTS, "eval_model.onnx", "optimizer_model.onnx")  # (the checkpoint has its own)


class SmoothedCrossEntropy(onnxblock.Block):
    """loss = (1 - eps) * CE(logits, labels) + eps * mean(-log_softmax(logits)); eps is an input."""

    def build(self, logits: str) -> str:
        g = self.base.graph
        out = next(o for o in g.output if o.name == logits)
        labels = onnx.helper.make_tensor_value_info(LABELS, onnx.TensorProto.INT64,
                                                    [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim[:-1]])
        g.input.extend([labels, onnx.helper.make_tensor_value_info(SMOOTHING, onnx.TensorProto.FLOAT, [])])
        name = _graph_utils.generate_graph_name
        ce, ce_logp, logp, neg, uniform, diff, scaled, loss = (name(n) for n in (
            "ce", "ce_log_prob", "logp", "neg", "uniform", "diff", "scaled", "loss"))
        g.node.extend([
            # ORT's SoftmaxCrossEntropyLoss gradient reads the op's second output (log-probabilities),
            # so it must exist; the smoothing term differentiates through its own LogSoftmax.
            onnx.helper.make_node("SoftmaxCrossEntropyLoss", [logits, LABELS], [ce, ce_logp], reduction="mean"),
            onnx.helper.make_node("LogSoftmax", [logits], [logp], axis=-1),
            onnx.helper.make_node("Neg", [logp], [neg]),
            onnx.helper.make_node("ReduceMean", [neg], [uniform], keepdims=0),
            onnx.helper.make_node("Sub", [uniform, ce], [diff]),
            onnx.helper.make_node("Mul", [diff, SMOOTHING], [scaled]),
            onnx.helper.make_node("Add", [ce, scaled], [loss]),
        ])
        return loss


def _shared_frozen_norm_params(model: onnx.ModelProto, trainable: list[str]) -> list[str]:
    """Frozen LayerNormalization scales and shifts of one repeated value (a fresh norm's ones and
    zeros). ORT's ConstantSharing merges such constants into one initializer, and its LayerNorm
    gradient names a scale and shift gradient even when they are frozen: two norms on one merged
    scale define `norm1.weight_grad` twice and ORT refuses the graph. Given to ORT as frozen
    parameters (graph inputs, read from the checkpoint), they are never merged."""
    values = {t.name: t for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx"):
            for name in node.input[1:3]:
                if name in values and name not in trainable:
                    a = onnx.numpy_helper.to_array(values[name])
                    if a.size > 1 and (a == a.flat[0]).all():
                        names.append(name)
    return list(dict.fromkeys(names))


def _check_frozen_recurrent(model: onnx.ModelProto, trainable: list[str]) -> None:
    """ORT 1.19.2's LSTM/GRU/RNN gradient kills the process (SIGSEGV) when it must pass a gradient
    to the op's input while its weights are frozen: refuse that by name instead."""
    graph = model.graph
    reached = set(trainable)  # values computed from a trained parameter: their gradient is needed
    for node in graph.node:
        if node.op_type in ("LSTM", "GRU", "RNN") and node.domain in ("", "ai.onnx") and node.input[0] in reached \
                and any(w and w not in reached for w in node.input[1:3]):  # (W, R: as torch writes them, views)
            raise TinyTLError(f"op {node.op_type} (node {node.name or node.output[0]}) has frozen weights and a "
                              "trained layer before it: onnxruntime-training 1.19.2 crashes passing a gradient through "
                              "it; use --method full (it trains the weights too) or last")
        if any(i in reached for i in node.input):
            reached.update(node.output)


def generate(model: onnx.ModelProto, trainable: list[str], directory: Path) -> None:
    """Write FILES into `directory` (which must exist)."""
    if not trainable:
        raise TinyTLError("no trainable parameters: nothing to compile")
    _check_frozen_recurrent(model, trainable)
    frozen = _shared_frozen_norm_params(model, trainable)
    logits = model.graph.output[0].name
    directory = Path(directory).resolve()  # we chdir below
    cwd = os.getcwd()
    try:
        os.chdir(directory)  # onnxblock may write temporary files to the working directory
        with _quiet_native_stderr() as log:
            # Frozen weights are not listed: they stay initializers, i.e. constants ORT can fold.
            artifacts.generate_artifacts(model, requires_grad=trainable, frozen_params=frozen,
                                         loss=SmoothedCrossEntropy(), optimizer=artifacts.OptimType.AdamW,
                                         artifact_directory=directory, additional_output_names=[logits])
    except Exception as e:
        raise TinyTLError(f"ONNX Runtime cannot build the training graph: {_first_cause(str(e), log.text)}") from e
    finally:
        os.chdir(cwd)


class _Captured:
    text = ""


@contextlib.contextmanager
def _quiet_native_stderr():
    """ORT's gradient builder logs every graph transformer to fd 2 whatever the Python-side
    severity; keep it for error messages instead of flooding the terminal. A native abort (a C++
    assertion in the gradient builder) would then die silently: faulthandler reports it on the real
    stderr. (Building the graph in a child process would turn it into a one-line error, but a child
    must import onnxruntime.training and torch again: seconds per compile.)"""
    captured = _Captured()
    with tempfile.TemporaryFile(mode="w+") as sink:
        saved = os.dup(2)
        own_handler = not faulthandler.is_enabled()  # (pytest or PYTHONFAULTHANDLER may have one already)
        if own_handler:
            faulthandler.enable(file=saved)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield captured
        finally:
            os.dup2(saved, 2)
            if own_handler:
                faulthandler.disable()
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read()


def _first_cause(error: str, log: str) -> str:
    """The informative part of an ORT error: a missing gradient builder names the op and node. The
    native log (graph transformers at INFO) is searched for that only, never printed as the cause."""
    m = re.search(r"gradient builder has not been registered: (\S+) for node (\S+)", error + log)
    if m:
        return (f"op {m.group(1)} (node {m.group(2)}) has no gradient in onnxruntime-training 1.19.2; "
                "freeze everything before it or rewrite it with differentiable ops")
    return ort_cause(error)
