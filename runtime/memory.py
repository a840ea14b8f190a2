"""Measure a training step (forward + backward + optimizer) in fresh subprocesses.

Method: load the artifacts and run warm-up steps, then
- memory (one process, ORT's CPU arena off: with it on, freed blocks stay with the process and the
  footprint hides what a step needs): track `steps` steps with memray. `step_peak_bytes` is memray's peak of
  live native allocations made during the tracked steps; what was allocated before (parameters,
  optimizer state, the session) is not in it. Cross-check: the rise of the process high-water mark
  (VmHWM, reset through /proc/self/clear_refs) over the resident size before the tracked steps.
  glibc is told to serve blocks of 64 KiB and more with mmap (MALLOC_MMAP_THRESHOLD_), so freed
  activations go back to the OS and the resident size follows live memory.
- time (another process, as training runs: ORT's arena on, default malloc, no tracking): median
  wall time of `steps` steps, at least TIMED_STEPS. (With the arena off every step pays page
  faults for the memory it returns to the OS: 35 ms a step on MobileNetV2 at 128 px, more for
  plain ORT's graph.)
`param_bytes` counts parameters plus, for every trainable one, its gradient buffer and Adam's two
moments. `total_bytes` = param_bytes + step_peak_bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tinytlc.errors import TinyTLError, check_int

TIMED_STEPS = 10  # time wants more steps than memory: a median, not one step's luck

FLOAT = 4


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def probe(directory: Path, steps: int, warmup: int, batch_size: int | None, what: str) -> dict:
    """Runs inside a fresh subprocess: `what` is "memory" or "time"."""
    from tinytlc.pipeline import load_artifact
    from tinytlc.runtime.session import open_session

    mf = load_artifact(directory).manifest
    shape = list(mf["input"]["shape"])
    shape[0] = batch_size or shape[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    y = rng.integers(0, mf["num_classes"], shape[0]).astype(np.int64)
    if what == "forward":  # inference: ORT's own session over the forward graph, all optimizations
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        infer = ort.InferenceSession(str(directory / "forward_model.onnx"), opts, providers=["CPUExecutionProvider"])
        feed = {infer.get_inputs()[0].name: x}
        for _ in range(warmup):
            infer.run(None, feed)
        return {"forward_seconds": median_seconds(lambda: infer.run(None, feed), steps)}
    sess = open_session(directory, mf, directory / "checkpoint", with_eval=False, measure=what == "memory")
    sess.module.train()
    for _ in range(warmup):
        sess.train_step(x, y)
    if what == "time":
        return {"step_seconds": median_seconds(lambda: sess.train_step(x, y), steps)}

    return {"batch_size": shape[0], "resolution": shape[-1], **peak_during(lambda: sess.train_step(x, y), steps)}


def median_seconds(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak_during(step, steps: int) -> dict:
    """memray's peak of native allocations made while `step()` runs `steps` times, and the rise of
    the process high-water mark over the resident size before (None where it cannot be reset)."""
    import memray
    rss_before = _proc_status("VmRSS")
    hwm_ok = _reset_hwm()
    with tempfile.TemporaryDirectory() as tmp:
        capture = Path(tmp) / "step.bin"
        with memray.Tracker(capture, native_traces=False, trace_python_allocators=False):
            for _ in range(steps):
                step()
        peak = memray.FileReader(capture).metadata.peak_memory
    return {"step_peak_bytes": int(peak),
            "hwm_rise_bytes": _proc_status("VmHWM") - rss_before if hwm_ok else None}


def child(directory, steps, warmup, batch_size, what: str, timeout: float = 1800) -> dict | list[dict]:
    """`what` of one artifact (or a list: one result each), measured in a fresh process: "memory",
    "time" (a training step) or "forward" (an inference forward of the same batch)."""
    dirs = directory if isinstance(directory, list) else [directory]
    cmd = [sys.executable, "-m", "tinytlc.runtime.memory", *map(str, dirs), "--steps", str(steps),
           "--warmup", str(warmup), "--what", what] + (["--batch-size", str(batch_size)] if batch_size else [])
    return run_child(cmd, what == "memory", timeout)


def run_child(cmd: list[str], track_memory: bool, timeout: float = 1800) -> dict:
    """Run a measuring Python process; its last stdout line is JSON."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if track_memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        from tinytlc.runtime.session import strip_paths
        # the child's own "error: " would follow the CLI's "tinytlc: error: ": say it once
        last = strip_paths(lines[-1]).removeprefix("tinytlc: ").removeprefix("error: ") if lines else None
        raise TinyTLError(f"memory measurement failed: {last or 'exit ' + str(proc.returncode)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(directory: str | Path, steps: int = 3, warmup: int = 2, batch_size: int | None = None,
            timeout: float = 1800) -> dict:
    """Measured figures of one training step of the artifact in `directory`."""
    return measure_all([directory], steps, warmup, batch_size, timeout)[0]


def measure_all(directories: list[str | Path], steps: int = 3, warmup: int = 2, batch_size: int | None = None,
                timeout: float = 1800) -> list[dict]:
    """measure() of each artifact, in two fresh processes for all of them (one tracks memory, one
    times steps) rather than two each: a process start imports torch and ORT (about 2 s), which
    dominates on small artifacts. Each artifact's session is closed before the next one opens."""
    from tinytlc.pipeline import load_artifact
    # fail here, with a clear message, rather than in a child
    manifests = [load_artifact(d).manifest for d in directories]
    check_int("--steps", steps, 1, 1000)
    check_int("--warmup", warmup, 0, 1000)
    check_int("--batch-size", batch_size, 1, optional=True)
    mems = _listed(child(directories, steps, warmup, batch_size, "memory", timeout))
    timings = _listed(child(directories, max(steps, TIMED_STEPS), warmup, batch_size, "time", timeout))
    out = []
    for mf, mem, timing in zip(manifests, mems, timings):
        param_bytes = FLOAT * (mf["total_elements"] + 3 * mf["trainable_elements"])
        out.append({"model": mf["model"], "method": mf["method"], "passes": mf.get("passes", []), **mem,
                    "param_bytes": param_bytes, "total_bytes": param_bytes + mem["step_peak_bytes"], **timing,
                    "steps": steps, "warmup": warmup})
    return out


def _listed(results: dict | list[dict]) -> list[dict]:
    return results if isinstance(results, list) else [results]


def step_peaks(directories: list[str | Path], steps: int = 2, warmup: int = 1, timeout: float = 1800) -> list[int]:
    """Measured step peak of each artifact, one after another in one fresh process (cheaper than a
    process each when many small artifacts are compared; each is tracked on its own)."""
    return [r["step_peak_bytes"] for r in _listed(child(list(directories), steps, warmup, None, "memory", timeout))]


def main() -> None:
    ap = argparse.ArgumentParser(description="internal: measure one artifact's training step")
    ap.add_argument("directories", type=Path, nargs="+")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--what", choices=("memory", "time", "forward"), default="memory")
    a = ap.parse_args()
    try:
        results = [probe(d, a.steps, a.warmup, a.batch_size, a.what) for d in a.directories]
    except TinyTLError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(results if len(results) > 1 else results[0]))


if __name__ == "__main__":
    main()
