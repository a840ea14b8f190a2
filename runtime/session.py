"""Open a compiled artifact as ORT training objects (checkpoint state, module, optimizer)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.training.api import CheckpointState, Module, Optimizer

from tinytlc.errors import TinyTLError
from tinytlc.fsutil import OLD_MARK, recover, sha256

TRAINED = "trained"  # subdirectory written by `tinytlc train`
TRAINED_FILES = {"checkpoint", "state.json", OLD_MARK}


def foreign_trained_files(trained: Path) -> list[str]:
    """Names in a trained/ directory that `tinytlc train` did not write."""
    return sorted(p.name for p in trained.iterdir() if p.name not in TRAINED_FILES or p.is_symlink() or not p.is_file())


ORDERS = {"default": ort.ExecutionOrder.DEFAULT, "priority": ort.ExecutionOrder.PRIORITY_BASED,
          "memory": ort.ExecutionOrder.MEMORY_EFFICIENT}


def session_options(settings: dict | None = None, measure: bool = False) -> ort.SessionOptions:
    """ORT options for a training session; `settings` is the manifest's "session" entry
    (mem_pattern, mem_reuse, execution_order, denormal_as_zero), chosen at compile time.
    denormal_as_zero: ORT sets it on the session's thread pool, and on the calling thread only from
    the first session a process opens (its rule), which `tinytlc train` and the measuring children do."""
    settings = settings or {}
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # not even ERROR: ORT logs a failing op on stderr, tinytlc says it in one line
    opts.enable_mem_pattern = settings.get("mem_pattern", True)
    opts.enable_mem_reuse = settings.get("mem_reuse", True)
    opts.execution_order = ORDERS[settings.get("execution_order", "default")]
    if settings.get("denormal_as_zero"):
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    if measure:
        # The arena keeps freed blocks: with it on, the process footprint hides what a step needs.
        opts.enable_cpu_mem_arena = False
    return opts


def trained_checkpoint(directory: Path) -> Path | None:
    recover(directory / TRAINED)  # a train killed between its two renames: the run is in .trained.old
    path, state = directory / TRAINED / "checkpoint", directory / TRAINED / "state.json"
    if path.exists() != state.exists():  # (train saves both in one rename: one alone was removed by hand)
        raise TinyTLError(f"{directory / TRAINED}: an incomplete training run (its {(state if path.exists() else path).name} "
                          "is missing); train again with --restart")
    return path if path.exists() else None


def _recorded(directory: Path, key: str):
    """What `tinytlc train` recorded under `key` in its state.json; None before training (or for a
    run saved before that key was recorded)."""
    if trained_checkpoint(directory) is None:
        return None
    try:
        return json.loads((directory / TRAINED / "state.json").read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def trained_seed(directory: Path) -> int:
    """The --seed `tinytlc train` split the data with (its held-out images); 0 if none was recorded."""
    seed = _recorded(directory, "seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0


def trained_folder(directory: Path) -> str | None:
    """The image folder (its real path) `tinytlc train` trained on; None for other data or none recorded."""
    folder = _recorded(directory, "data")
    return folder if isinstance(folder, str) else None


def trained_classes(directory: Path) -> list[str] | None:
    """The class names (in label order) `tinytlc train` recorded; None before training (or for a run
    saved before they were recorded)."""
    classes = _recorded(directory, "classes")
    return classes if isinstance(classes, list) and all(isinstance(c, str) for c in classes) else None


def verify_checkpoint(directory: Path, manifest: dict, checkpoint: Path, required: bool = False) -> None:
    """A checkpoint must be the one its writer recorded (flipped bytes can load and train on):
    the compiled one's SHA-256 is in the manifest, a trained one's in the state.json beside it.
    `required`: a missing record is corruption too."""
    if checkpoint == directory / "checkpoint":
        expected = manifest.get("checkpoint_sha256")
    else:
        try:
            state = json.loads((checkpoint.parent / "state.json").read_text())
            expected, artifact = state.get("checkpoint_sha256"), state.get("artifact")
        except (OSError, ValueError, AttributeError):
            expected = artifact = None
        # the run names the compiled checkpoint it started from: a trained/ copied from elsewhere is refused
        if artifact is not None and artifact != manifest.get("checkpoint_sha256"):
            raise TinyTLError(f"{checkpoint.parent}: trained from another artifact, not from {directory}; "
                              "train this one with --restart")
    if (expected is not None or required) and sha256(checkpoint) != expected:
        raise TinyTLError(f"{checkpoint}: corrupt checkpoint (its SHA-256 is not the one recorded when it was written)")


def verify_files(directory: Path, manifest: dict) -> None:
    """The models must be the ones compile wrote (flipped weight bytes load and train, then diverge)."""
    recorded = manifest.get("files_sha256")
    for name, digest in (recorded.items() if isinstance(recorded, dict) else ()):
        if sha256(directory / name) != digest:
            raise TinyTLError(f"{directory / name}: corrupt (its SHA-256 is not the one recorded when it was "
                              "compiled); compile again")


def load_state(path: Path) -> CheckpointState:
    try:
        return CheckpointState.load_checkpoint(str(path))
    except Exception as e:
        raise TinyTLError(f"{path}: corrupt or unreadable checkpoint ({ort_cause(str(e))[:200]})") from e


@dataclass
class TrainingSession:
    state: CheckpointState
    module: Module
    optimizer: Optimizer | None
    manifest: dict

    def feeds(self, x: np.ndarray, y: np.ndarray, smoothing: float) -> list[np.ndarray]:
        by_name = {self.manifest["input"]["name"]: x, self.manifest["labels"]["name"]: y,
                   self.manifest["label_smoothing_input"]: np.float32(smoothing)}
        return [np.asarray(by_name[n]) for n in self.module.input_names()]

    def train_step(self, x, y, smoothing: float = 0.0) -> tuple[float, np.ndarray]:
        loss, logits = self.module(*self.feeds(x, y, smoothing))
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return float(loss), logits

    def eval_step(self, x, y) -> tuple[float, np.ndarray]:
        loss, logits = self.module(*self.feeds(x, y, 0.0))
        return float(loss), logits


def open_session(directory: Path, manifest: dict, checkpoint: Path | None = None, *, with_eval: bool = True,
                 with_optimizer: bool = True, measure: bool = False) -> TrainingSession:
    """Load `checkpoint` (default: the trained one if any, else the compiled one)."""
    verify_files(directory, manifest)
    checkpoint = checkpoint or trained_checkpoint(directory) or directory / "checkpoint"
    verify_checkpoint(directory, manifest, checkpoint)
    state = load_state(checkpoint)
    try:
        module = Module(str(directory / "training_model.onnx"), state,
                        str(directory / "eval_model.onnx") if with_eval else None,
                        session_options=session_options(manifest.get("session"), measure))
        optimizer = Optimizer(str(directory / "optimizer_model.onnx"), module) if with_optimizer else None
    except Exception as e:
        check_cpu(directory, manifest)  # another CPU's NCHWc layout explains a failure best
        raise TinyTLError(f"{directory}: ONNX Runtime cannot load the artifacts ({ort_cause(str(e))[:200]})") from e
    # After the session, not before: ORT sets the calling thread's denormals from the first session
    # a process opens, which should be the artifact's, not check_cpu's block probe.
    check_cpu(directory, manifest)
    return TrainingSession(state, module, optimizer, manifest)


def check_cpu(directory: Path, manifest: dict) -> None:
    """nchwc-conv and depthwise-weight-grad write tensors in this CPU's NCHWc block layout: on a CPU
    with another block they would be read wrong."""
    block = manifest.get("nchwc_block")
    if block is not None:
        from tinytlc.passes.training.nchwc_conv import block_size
        if block != block_size():
            raise TinyTLError(f"{directory}: compiled on a CPU whose NCHWc convs take blocks of {block} channels; "
                              f"this CPU's take {block_size()}: compile it again on this machine")


def ort_cause(message: str) -> str:
    """ORT's error without its source paths: the op and node that failed, and why."""
    m = re.search(r"running (\S+) node\. Name:'([^']*)' Status Message: (.*)", message)
    if m:
        return f"op {m.group(1)} (node {m.group(2)}): {strip_paths(m.group(3))[:200]}"
    m = re.search(r"Could not find an implementation for (\w+)\(\d+\) node with name '([^']*)'", message)
    if m:
        return f"op {m.group(1)} (node {m.group(2)}) has no CPU kernel in onnxruntime-training {ort.__version__}"
    m = re.search(r"Got invalid dimensions for input: (\S+) for the following indices\s+index: (\d+) Got: (\d+) "
                  r"Expected: (\d+)", message)
    if m:
        return f"input '{m.group(1)}' must have {m.group(4)} in dimension {m.group(2)}, got {m.group(3)}"
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    return strip_paths(lines[-1] if lines else "unknown error")[:300]


def strip_paths(text: str) -> str:
    """ORT's message without its source locations (/onnxruntime_src/...:line function ...)."""
    text = re.sub(r"^.*? was false\. ", "", text)
    text = re.sub(r"/onnxruntime_src/\S*.*?(?=\[ONNXRuntimeError\])", "", text)
    return re.sub(r"/onnxruntime_src/\S+", "", text).strip()


def check_step(directory: Path, manifest: dict, batch: int = 2) -> None:
    """One forward and backward pass on zeros: an op ORT cannot run in training (a missing CPU
    gradient kernel) fails at compile time, with the op and node named, not in the first epoch."""
    try:
        sess = open_session(directory, manifest, directory / "checkpoint", with_eval=False, with_optimizer=False)
    except TinyTLError as e:  # (named without `directory`: compile's temporary folder)
        if e.__cause__ is None:
            raise
        raise TinyTLError(f"ONNX Runtime cannot load the training model: {ort_cause(str(e.__cause__))}") from e.__cause__
    x = np.zeros([batch] + list(manifest["input"]["shape"][1:]), np.float32)
    sess.module.train()
    try:
        sess.module(*sess.feeds(x, np.zeros(batch, np.int64), 0.0))
    except Exception as e:
        raise TinyTLError(f"ONNX Runtime cannot run a training step: {ort_cause(str(e))}") from e
