"""The training loop: Adam(W) with a cosine learning-rate schedule, label smoothing, held-out
accuracy every epoch, atomic checkpoints after every epoch, and --resume."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.training.api import CheckpointState
from tqdm import tqdm

from tinytlc.data import Data, Preprocess, Split, batches, follow_classes, load_data
from tinytlc.errors import TinyTLError, check_path
from tinytlc.fsutil import atomic_path, locked, recover, sha256
from tinytlc.runtime.session import (TRAINED, TrainingSession, foreign_trained_files, open_session,
                                     trained_checkpoint, trained_classes, trained_folder, trained_seed,
                                     verify_checkpoint)

STATE = "state.json"
DIVERGED = 1e4  # a cross-entropy this large (chance is ln(classes) < 10) means the weights blew up


# What train takes (field: low, high or None, low excluded): the ranges of the CLI's train flags, which
# argparse checks first (cli.py, with these bounds); train checks them again for the Python API.
RANGES = {"epochs": (1, 100000, False), "batch_size": (1, None, False), "lr": (0, 1, True),
          "label_smoothing": (0, 0.99, False), "seed": (0, None, False)}
INTEGERS = ("epochs", "batch_size", "seed")


@dataclass
class TrainConfig:
    """How train trains (the CLI's train flags): the ranges in RANGES are checked by train."""
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    label_smoothing: float = 0.0
    seed: int = 0
    resume: bool = False
    restart: bool = False
    eval_every_epoch: bool = True  # False: held-out accuracy after the last epoch only (benchmark sweeps)

    def check(self) -> None:
        """Each setting within its range, said in one line as the CLI says it for its flag."""
        for name, (low, high, low_open) in RANGES.items():
            value, flag = getattr(self, name), "--" + name.replace("_", "-")
            kind = int if name in INTEGERS else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise TinyTLError(f"{flag} {value!r} is not {'an integer' if name in INTEGERS else 'a number'}")
            if value != value or (value <= low if low_open else value < low) or (high is not None and value > high):
                span = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
                raise TinyTLError(f"{flag} {value} is out of range (must be {span})")


def cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def evaluate_split(sess: TrainingSession, split: Split, pre: Preprocess, batch_size: int,
                   desc: str = "eval") -> dict:
    sess.module.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in tqdm(batches(split, batch_size, pre), total=math.ceil(len(split) / batch_size), desc=desc,
                     leave=False, disable=None):
        loss, logits = sess.eval_step(x, y)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += loss * len(y)
        n += len(y)
    return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1), "images": n}


def _warn(message: str) -> None:
    print(f"tinytlc: warning: {message}", file=sys.stderr)


def evaluate(directory: str | Path, data: str | Path | Data, batch_size: int | None = None, *, seed: int | None = None,
             skip_bad_images: bool = False, warn=_warn) -> dict:
    """Accuracy and mean loss of the artifact DIRECTORY's trained (else compiled) weights on DATA's
    held-out split, as `tinytlc eval` reports them: {"accuracy", "loss", "images", "scored"}.

    DATA: a --data spec (image folder, idx folder, synthetic:N; loaded with `seed`, by default the
    trained run's, so the held-out split is the one training held out, and `skip_bad_images` as eval
    does) or a Data from load_data. An image folder without a val/ or test/ folder that is not the
    one the artifact was trained on (or any, before training) has every image scored ("scored":
    "all"), else its held-out ones ("held-out"). Labels follow the class names the model was trained
    on; a trained model's folder may hold one class of them.
    `batch_size`: default the compiled one. `warn` gets the data's warnings, one line each."""
    from tinytlc.pipeline import load_artifact
    art = load_artifact(directory)
    m = art.manifest
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise TinyTLError(f"--batch-size {batch_size} is out of range (must be >= 1)")
    classes = trained_classes(art.path)
    if seed is None:
        seed = trained_seed(art.path)
    if isinstance(data, Data):
        spec = data.note or "data"
        if classes is not None and data.classes != classes:  # relabelled on a copy: the caller's Data stays
            data = Data(list(data.classes), Split(data.train.labels, data.train.load),
                        Split(data.test.labels, data.test.load), data.note, list(data.warnings), data.folder, data.drawn)
            follow_classes(data, classes, spec)
        check_data(data, m["num_classes"])
    else:
        spec = os.fspath(data)
        # a trained model's classes are known by name, so a folder of one of them can be scored
        data = load_data(spec, m["num_classes"], seed=seed, skip_bad=skip_bad_images, classes=classes,
                         min_classes=1 if classes else 2)
    for w in data.warnings:
        warn(w)
    scored, split = "held-out", data.test
    trained_on = trained_folder(art.path)
    untrained = trained_checkpoint(art.path) is None
    if data.drawn and data.folder and (untrained or trained_on is not None and data.folder != trained_on):
        # never trained, or not the folder it was trained on: no image of it was trained on, so all are scored
        scored, split = "all", Split(np.concatenate([data.train.labels, data.test.labels]),
                                     lambda i, n=len(data.train): data.train.load(i) if i < n else data.test.load(i - n))
    if not len(split):
        raise TinyTLError(f"--data {spec}: no held-out images to evaluate")
    sess = open_session(art.path, m, with_optimizer=False)
    return {**evaluate_split(sess, split, Preprocess.from_manifest(m), batch_size or m["input"]["shape"][0]),
            "scored": scored}


def _save(sess: TrainingSession, out: Path, record: dict) -> None:
    """Checkpoint (with optimizer state) and progress committed together: both are written into a new
    directory that replaces `out` in one step; the progress names the checkpoint's SHA-256."""
    with atomic_path(out, is_dir=True, replaceable=check_trained_replaceable) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        CheckpointState.save_checkpoint(sess.state, str(tmp / "checkpoint"), include_optimizer_state=True)
        record = {**record, "checkpoint_sha256": sha256(tmp / "checkpoint")}
        (tmp / STATE).write_text(json.dumps(record, indent=2) + "\n")


def check_trained_replaceable(out: Path) -> None:
    foreign = foreign_trained_files(out)
    if foreign:
        raise TinyTLError(f"{out}: holds files tinytlc did not write ({', '.join(foreign[:5])}); move them out "
                          "and train again")


def load_record(out: Path, manifest: dict) -> dict:
    """The saved progress, checked: its checkpoint must be the one it names."""
    try:
        record = json.loads((out / STATE).read_text())
        record["epoch"], record["step"], record["history"]  # noqa: B018 (all three must be there)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TinyTLError(f"{out / STATE}: corrupt training state ({type(e).__name__}: {e})") from e
    verify_checkpoint(out.parent, manifest, out / "checkpoint", required=True)
    return record


def earlier_run(directory: Path, manifest: dict, cfg: TrainConfig) -> dict | None:
    """What an earlier run left, checked against --resume/--restart before any data is read: its saved
    progress to resume, or None to train anew."""
    out = directory / TRAINED
    recover(out)
    if cfg.resume and cfg.restart:
        raise TinyTLError("--resume and --restart: choose one")
    if not os.access(directory, os.W_OK):
        raise TinyTLError(f"{directory}: not writable (train saves {out} after every epoch)")
    if cfg.resume:
        if out.exists():
            trained_checkpoint(directory)  # (an incomplete run is said as such)
        if not (out / STATE).is_file() or not (out / "checkpoint").exists():
            raise TinyTLError(f"--resume: no earlier training in {out}")
        return load_record(out, manifest)
    if out.exists() and not cfg.restart:
        raise TinyTLError(f"{directory} was trained before ({out}); pass --resume to go on or --restart to train "
                          "anew (the earlier run is kept until the new one saves its first epoch)")
    return None


def check_data(data: Data, num_classes: int) -> None:
    """Data a model of NUM_CLASSES outputs can train on: labels beyond its logits would train on
    whatever ORT's loss reads out of range (losses of 0 or below)."""
    if len(data.classes) > num_classes:
        raise TinyTLError(f"--data has {len(data.classes)} classes, the model was compiled for {num_classes} "
                          f"(compile with --num-classes {len(data.classes)})")
    for split in (data.train, data.test):
        labels = np.asarray(split.labels)
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise TinyTLError(f"--data has labels outside 0..{num_classes - 1} (the model was compiled for "
                              f"{num_classes} classes)")


def train(directory: str | Path, manifest: dict, data: str | Path | Data, cfg: TrainConfig, log=print) -> dict:
    """Train the artifact DIRECTORY (str or Path; MANIFEST as load_artifact read it) on DATA (a --data
    spec, or load_data's result) as CFG says,
    saving a checkpoint to DIRECTORY/trained after every epoch; `log` gets one line per epoch.
    Returns the training record: epoch, step and each epoch's losses and accuracies."""
    from tinytlc.pipeline import check_manifest
    check_path("directory", directory)
    check_manifest(directory, manifest)
    directory = Path(directory)
    if not isinstance(cfg, TrainConfig):
        raise TinyTLError(f"cfg: expected a tinytlc.TrainConfig, got {type(cfg).__name__}")
    cfg.check()
    if isinstance(data, (str, os.PathLike)):  # a --data spec, as evaluate takes it
        data = load_data(data, manifest["num_classes"], seed=cfg.seed,
                         classes=trained_classes(directory) if cfg.resume else None)
    if not isinstance(data, Data):
        raise TinyTLError(f"data: expected a --data spec or tinytlc.load_data's result, got {type(data).__name__}")
    check_data(data, manifest["num_classes"])
    if not len(data.train):
        raise TinyTLError("--data has no training images (a folder holding only a test/ or val/ folder is for eval)")
    with locked(directory, "train"):  # two trains would each replace the other's run
        log(f"training {manifest['model']} ({manifest['method']}) on {len(data.train)} images, {len(data.classes)} "
            f"classes{'; ' + data.note if data.note else ''}; lr {cfg.lr:g}, batch {cfg.batch_size}")
        return _train(directory, manifest, data, cfg, log)


def _train(directory: Path, manifest: dict, data: Data, cfg: TrainConfig, log) -> dict:
    out = directory / TRAINED
    record, checkpoint = earlier_run(directory, manifest, cfg), directory / "checkpoint"
    if record is None:
        record = {"epoch": 0, "step": 0, "history": []}
    else:
        checkpoint = out / "checkpoint"
        if record.get("classes", data.classes) != data.classes:
            raise TinyTLError(f"--resume: the earlier run trained on classes {', '.join(record['classes'][:10])}; "
                              f"--data has {', '.join(data.classes[:10])}")
        changed = [f"{k} {record[k]:g} -> {getattr(cfg, k):g}" for k in ("lr", "batch_size", "label_smoothing", "seed")
                   if k in record and record[k] != getattr(cfg, k)]
        if changed:
            log(f"tinytlc: note: --resume with other settings than the earlier run: {', '.join(changed)}")
        if record["epoch"] >= cfg.epochs:
            log(f"already trained {record['epoch']} epoch{'s' if record['epoch'] != 1 else ''} (asked for {cfg.epochs}); "
                "nothing to do")
            return record
    sess = open_session(directory, manifest, checkpoint)
    pre = Preprocess.from_manifest(manifest)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    step = record["step"]
    for epoch in range(record["epoch"], cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        sess.module.train()
        loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(batches(data.train, cfg.batch_size, pre, rng, augment=True), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=None)
        for x, y in bar:
            sess.optimizer.set_learning_rate(cosine_lr(cfg.lr, step, total))
            loss, logits = sess.train_step(x, y, cfg.label_smoothing)
            if not math.isfinite(loss) or loss > DIVERGED:
                raise TinyTLError(f"training diverged at step {step} (loss {loss:.3g}); lower --lr")
            loss_sum += loss * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            step += 1
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        seconds = time.perf_counter() - t0
        entry = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                 "test_accuracy": None, "test_loss": None, "seconds": seconds}
        if len(data.test) and (cfg.eval_every_epoch or epoch + 1 == cfg.epochs):
            result = evaluate_split(sess, data.test, pre, cfg.batch_size)
            entry.update(test_accuracy=result["accuracy"], test_loss=result["loss"])
        record = {"epoch": epoch + 1, "step": step, "history": record["history"] + [entry],
                  "lr": cfg.lr, "batch_size": cfg.batch_size, "label_smoothing": cfg.label_smoothing,
                  "seed": cfg.seed, "classes": data.classes, "artifact": manifest.get("checkpoint_sha256"),
                  "data": data.folder or record.get("data")}
        _save(sess, out, record)
        held_out = ", no held-out images" if not len(data.test) else "" if entry["test_accuracy"] is None else \
            f", held-out accuracy {entry['test_accuracy']:.2%} ({result['images']} images)"
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {entry['train_loss']:.4f}{held_out}, {seconds:.1f}s")
    return record
