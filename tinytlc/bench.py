"""`make bench`: measured training-step memory of every method at real sizes, without and with
tinytlc's memory passes, and the targets the passes are held to.

Every figure comes from `tinytlc memory` (a fresh process per artifact, ORT arena off, memray
peak of a training step; step time from a second, untracked process).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from tinytlc.errors import TinyTLError
from tinytlc.methods import METHODS
from tinytlc.passes.training import DEFAULT_PASSES
from tinytlc.pipeline import compile_model
from tinytlc.report import mib, table
from tinytlc.runtime.memory import measure, measure_all


_MASKS = DEFAULT_PASSES.index("activation-masks") + 1
PACKED = DEFAULT_PASSES[:_MASKS] + ["pack-masks"] + DEFAULT_PASSES[_MASKS:]


def measure_methods(model: str, resolution: int, batch_size: int, methods=METHODS, steps: int = 3,
                    log=print) -> list[dict]:
    """Every method, compiled without passes (ORT's graph) and with the default ones; the paper's
    headline method also with the optional pack-masks pass."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            variants = [("plain", []), ("passes", None)] + ([("packed", PACKED)] if method == "lite+bias" else [])
            for tag, passes in variants:
                try:
                    art = compile_model(model, method, Path(tmp) / f"{method.replace('+', '_')}-{tag}",
                                        num_classes=10, batch_size=batch_size, resolution=resolution, passes=passes)
                except TinyTLError as e:
                    results.append({"model": model, "method": method, "variant": tag, "error": str(e)})
                    log(f"  {method} ({tag}): not compiled ({e})")
                    break
                r = measure(art.path, steps=steps)
                r.update(trainable_elements=art.manifest["trainable_elements"], variant=tag)
                results.append(r)
                log(f"  {method} ({tag}): step peak {mib(r['step_peak_bytes'])} MiB, "
                    f"{r['step_seconds'] * 1000:.0f} ms")
    return results


def render(results: list[dict]) -> str:
    plain_full = next((r for r in results if r["method"] == "full" and r["variant"] == "plain" and "error" not in r),
                      None)
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["method"], "-", "-", "-", "-", "-", "-", "not in this release"])
            continue
        passes = {"plain": "none", "passes": "default", "packed": "default + pack-masks"}[r["variant"]]
        rows.append([r["method"], passes, f"{r['trainable_elements']:,}",
                     mib(r["param_bytes"]), mib(r["step_peak_bytes"]), mib(r["total_bytes"]),
                     f"{r['step_seconds'] * 1000:.0f}",
                     f"{plain_full['total_bytes'] / r['total_bytes']:.2f}x" if plain_full else "-"])
    return table(["method", "passes", "trained params", "params+optim MiB", "step peak MiB", "total MiB", "step ms",
                  "plain full / this (total)"], rows)


def targets(results: list[dict]) -> list[str]:
    """The memory passes' targets (issue: bias <= 0.25 x plain bias and <= 2 x last; no slower;
    full and last no worse), each with its measured figure."""
    get = {(r["method"], r["variant"]): r for r in results if "error" not in r}
    out = []

    def check(name, ok, detail):
        out.append(f"[{'met' if ok else 'MISSED'}] {name}: {detail}")
    bias, plain_bias = get.get(("bias", "passes")), get.get(("bias", "plain"))
    last = get.get(("last", "passes"))
    if bias and plain_bias:
        ratio = bias["step_peak_bytes"] / plain_bias["step_peak_bytes"]
        check("bias step peak <= 0.25 x bias without passes", ratio <= 0.25, f"{ratio:.3f}")
        t = bias["step_seconds"] / plain_bias["step_seconds"]
        check("bias step time no slower than without passes", t <= 1.0, f"{t:.2f}x the time")
    if bias and last:
        ratio = bias["step_peak_bytes"] / last["step_peak_bytes"]
        check("bias step peak <= 2 x last", ratio <= 2.0, f"{ratio:.2f}x")
    for m in ("full", "last"):
        a, b = get.get((m, "passes")), get.get((m, "plain"))
        if a and b:
            ratio = a["step_peak_bytes"] / b["step_peak_bytes"]
            check(f"{m} step peak no worse with passes", ratio <= 1.0, f"{ratio:.3f}x")
    lite = get.get(("lite+bias", "passes"))
    if lite and bias:
        ratio = lite["step_peak_bytes"] / bias["step_peak_bytes"]
        check("lite+bias step peak <= 1.3 x bias (both with passes)", ratio <= 1.3, f"{ratio:.2f}x")
    plain_full = get.get(("full", "plain"))
    for key, label in ((("lite+bias", "passes"), "default passes"), (("lite+bias", "packed"), "with pack-masks")):
        r = get.get(key)
        if r and plain_full:
            frac = r["total_bytes"] / plain_full["total_bytes"]
            check(f"lite+bias total <= 1/6 of full without passes ({label})", frac <= 1 / 6, f"1/{1 / frac:.2f}")
    return out


# TinyTL, Table 2: ProxylessNAS-Mobile (GroupNorm, lite modules in the network), 224 px, batch 8,
# Flowers (102 classes); total training memory in MB (10^6 bytes) by the paper's profiler.
TABLE_2 = {"full": 391, "last": 31, "norm+last": 192, "bias": 32, "lite": 37, "lite+bias": 37}


def paper_table(model: str = "proxylessnas-mobile", norm: str = "group", resolution: int = 224,
                batch_size: int = 8, methods=METHODS, log=print) -> list[dict]:
    """Each method on the paper's network (lite modules in it for every method, 102 classes): the
    paper's accounting and the exact one (tinytlc analyze) beside the measured training step (with
    passes) of the same network, compiled with the modules."""
    from tinytlc.accounting import analyze
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            paper, exact = (analyze(model, method, resolution=resolution, batch_size=batch_size, num_classes=102,
                                    accounting=acc, norm=norm, lite_modules=True) for acc in ("paper", "exact"))
            art = compile_model(model, method, Path(tmp) / method.replace("+", "_"), num_classes=102,
                                batch_size=batch_size, resolution=resolution, norm=norm, pretrained=False,
                                lite_modules=True)
            measured = measure(art.path)
            rows.append({"method": method, "paper": paper, "exact": exact, "measured": measured,
                         "table_2_mb": TABLE_2[method] if (resolution, batch_size) == (224, 8) else None})
            log(f"  {method}: paper {paper['total_bytes'] / 1e6:.1f} MB, exact {exact['total_bytes'] / 1e6:.1f} MB, "
                f"measured {measured['total_bytes'] / 1e6:.1f} MB", flush=True)
    return rows


def render_paper(rows: list[dict]) -> str:
    mb = lambda b: f"{b / 1e6:.1f}"  # noqa: E731  (the paper's unit)
    return table(["method", "Table 2", "paper rules: params", "act/sample", "total", "exact: total",
                  "measured: params+optim", "step peak", "total"],
                 [[r["method"], "-" if r["table_2_mb"] is None else str(r["table_2_mb"]),
                   mb(r["paper"]["param_bytes"]), mb(r["paper"]["activation_bytes_per_sample"]),
                   mb(r["paper"]["total_bytes"]), mb(r["exact"]["total_bytes"]),
                   mb(r["measured"]["param_bytes"]), mb(r["measured"]["step_peak_bytes"]),
                   mb(r["measured"]["total_bytes"])] for r in rows])


def families_table(sources: list[str], resolution: int, batch_size: int, log=print) -> list[dict]:
    """bias and lite+bias of each model source, ORT's own graph against tinytlc's: measured step peaks
    (one fresh process measures them all, each tracked on its own) and lite modules inserted."""
    from tinytlc.runtime.memory import step_peaks
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            row = {"model": source.rpartition(":")[2] or source}
            dirs = []
            for method in ("bias", "lite+bias"):
                for tag, passes in (("plain", []), ("passes", None)):
                    art = compile_model(source, method, Path(tmp) / f"{len(rows)}-{method}-{tag}", num_classes=10,
                                        batch_size=batch_size, resolution=resolution, passes=passes)
                    dirs.append(art.path)
                    if method == "lite+bias" and tag == "passes":
                        row["lite"] = f"{len(art.manifest['lite_modules'])} of {art.manifest['lite_blocks']}"
                        row["params"] = art.manifest["total_elements"]
            row["bias_plain"], row["bias_passes"], row["lite_plain"], row["lite_passes"] = step_peaks(dirs, steps=2)
            log(f"  {row['model']}: bias {mib(row['bias_plain'])} -> {mib(row['bias_passes'])} MiB, "
                f"lite+bias {mib(row['lite_plain'])} -> {mib(row['lite_passes'])} MiB", flush=True)
            rows.append(row)
    return rows


def render_families(rows: list[dict]) -> str:
    return table(["model", "parameters with lite modules", "lite modules (of blocks)", "bias: ORT", "bias: tinytlc", "ratio",
                  "lite+bias: ORT", "lite+bias: tinytlc", "ratio"],
                 [[r["model"], f"{r['params']:,}", r["lite"], mib(r["bias_plain"]), mib(r["bias_passes"]),
                   f"{r['bias_passes'] / r['bias_plain']:.2f}", mib(r["lite_plain"]), mib(r["lite_passes"]),
                   f"{r['lite_passes'] / r['lite_plain']:.2f}"] for r in rows])


def speed_table(model: str, resolution: int, batch_size: int, methods=METHODS, rounds: int = 3, steps: int = 10,
                log=print) -> list[dict]:
    """Each method's training step in tinytlc, in plain ORT (ORT's graph, ORT's session settings) and
    in PyTorch eager (torch_baseline.py: the same network and trainable set), plus an ORT inference
    forward of the same batch. Every figure is the median step of a fresh process (arena on, as
    training runs); `rounds` rounds run the four in turn (tinytlc, plain, eager, forward), and a
    ratio is taken within a round, so drift of the machine's speed cancels; medians over rounds."""
    from tinytlc.runtime.memory import child, run_child
    from tinytlc.torch_baseline import eager_args, has_baseline, measure_torch
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            arts = {tag: compile_model(model, method, Path(tmp) / f"{method.replace('+', '_')}-{tag}", num_classes=10,
                                       batch_size=batch_size, resolution=resolution, passes=passes)
                    for tag, passes in (("tinytlc", None), ("plain", []))}
            lite = arts["tinytlc"].manifest.get("lite_modules")
            with_eager = has_baseline(model, method)  # lite modules: placed on zoo models' blocks only
            eager = eager_args(model, method, resolution, batch_size, 10, steps, 3, lite) + ["time"]
            times = {k: [] for k in ("tinytlc", "plain", "eager", "forward")}
            for _ in range(rounds):
                for tag in ("tinytlc", "plain"):
                    times[tag].append(child(arts[tag].path, steps, 3, None, "time")["step_seconds"])
                if with_eager:
                    times["eager"].append(run_child(eager, False)["step_seconds"])
                times["forward"].append(child(arts["plain"].path, steps, 3, None, "forward")["forward_seconds"])

            def ratio(k):
                return float(np.median([a / b for a, b in zip(times["tinytlc"], times[k])])) if times[k] else None
            row = {"model": model, "method": method, "resolution": resolution, "batch_size": batch_size,
                   "seconds": times, **{f"{k}_seconds": float(np.median(v)) if v else None for k, v in times.items()},
                   "vs_eager": ratio("eager"), "vs_plain": ratio("plain"), "vs_forward": ratio("forward")}
            ours, plain = measure_all([arts["tinytlc"].path, arts["plain"].path])  # (two processes, not four)
            row["memory"] = {"tinytlc": ours, "plain": plain,
                             "eager": measure_torch(model, method, resolution, batch_size, lite_modules=lite)
                             if with_eager else None}
            rows.append(row)
            versus = (f"eager {row['eager_seconds'] * 1000:.0f} ms ({row['vs_eager']:.2f}x eager)" if with_eager
                      else "no eager baseline (lite modules: zoo models only)")
            log(f"  {method}: tinytlc {row['tinytlc_seconds'] * 1000:.0f} ms, plain ORT "
                f"{row['plain_seconds'] * 1000:.0f} ms, {versus}, forward {row['forward_seconds'] * 1000:.1f} ms",
                flush=True)
    return rows


def render_speed(rows: list[dict]) -> str:
    ms = lambda s: f"{s * 1000:.0f}" if s is not None else "-"  # noqa: E731
    total = lambda m: mib(m["total_bytes"]) if m else "-"  # noqa: E731
    return table(["method", "step ms: tinytlc", "plain ORT", "eager", "tinytlc / eager", "tinytlc / plain ORT",
                  "total MiB: tinytlc", "plain ORT", "eager"],
                 [[r["method"], ms(r["tinytlc_seconds"]), ms(r["plain_seconds"]), ms(r["eager_seconds"]),
                   f"{r['vs_eager']:.2f}x" if r["vs_eager"] is not None else "-", f"{r['vs_plain']:.2f}x",
                   *(total(r["memory"][k]) for k in ("tinytlc", "plain", "eager"))]
                  for r in rows])


def speed_targets(rows: list[dict]) -> list[str]:
    """The speed targets (issue 11), each with its measured figure: bias and lite+bias steps <= 0.8x
    eager's, full <= 1.0x, a bias step <= 3x an inference forward."""
    out = []
    for r in rows:
        limit = {"bias": 0.8, "lite+bias": 0.8, "full": 1.0}.get(r["method"])
        if limit is not None and r["vs_eager"] is not None:
            out.append(f"[{'met' if r['vs_eager'] <= limit else 'MISSED'}] {r['method']} step <= {limit}x eager: "
                       f"{r['vs_eager']:.2f}x")
        if r["method"] == "bias":
            out.append(f"[{'met' if r['vs_forward'] <= 3 else 'MISSED'}] bias step <= 3x an inference forward: "
                       f"{r['vs_forward']:.2f}x")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--models", default="mobilenetv2,efficientnet-lite0")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--paper", action="store_true",
                    help="instead: ProxylessNAS-Mobile (GroupNorm) by the paper's accounting beside measured")
    ap.add_argument("--families", default=None,
                    help="instead: bias and lite+bias step peaks of these model sources (comma-separated)")
    ap.add_argument("--speed", action="store_true",
                    help="instead: step time of tinytlc, plain ORT and PyTorch eager, with memory, per method")
    ap.add_argument("--rounds", type=int, default=3, help="--speed: alternating rounds of fresh processes")
    a = ap.parse_args(argv)
    try:
        return run(a)
    except TinyTLError as e:  # a model that does not compile: one line, not a traceback
        print(f"tinytlc: error: {e}", file=sys.stderr)
        return 2


def run(a: argparse.Namespace) -> int:
    if a.speed:
        if a.rounds < 1:
            print("tinytlc: error: --rounds must be >= 1", file=sys.stderr)
            return 2
        everything = {}
        for model in a.models.split(","):
            print(f"{model}, {a.resolution} px, batch {a.batch_size}:", flush=True)
            rows = speed_table(model, a.resolution, a.batch_size, a.methods.split(","), a.rounds,
                               log=lambda s, flush=True: print(s, flush=flush))
            everything[model] = rows
            print("\n" + render_speed(rows) + "\n\n" + "\n".join(speed_targets(rows)) + "\n", flush=True)
        if a.json:
            a.json.write_text(json.dumps(everything, indent=2))
        return 0
    if a.families:
        print(f"bias and lite+bias step peaks (MiB), {a.resolution} px, batch {a.batch_size}, 10 classes:", flush=True)
        rows = families_table(a.families.split(","), a.resolution, a.batch_size,
                              log=lambda s, flush=True: print(s, flush=flush))
        print("\n" + render_families(rows))
        if a.json:
            a.json.write_text(json.dumps(rows, indent=2))
        return 0
    if a.paper:
        rows = paper_table(resolution=a.resolution, batch_size=a.batch_size, methods=a.methods.split(","),
                           log=lambda s, flush=True: print(s, flush=flush))
        print(f"\nproxylessnas-mobile --norm group --lite-modules, {a.resolution} px, batch {a.batch_size}, "
              f"102 classes (MB = 10^6 bytes)\n")
        print(render_paper(rows))
        if a.json:
            a.json.write_text(json.dumps(rows, indent=2))
        return 0
    everything = {}
    for model in a.models.split(","):
        print(f"{model}, {a.resolution} px, batch {a.batch_size}:", flush=True)
        results = measure_methods(model, a.resolution, a.batch_size, a.methods.split(","))
        everything[model] = results
        print("\n" + render(results) + "\n\n" + "\n".join(targets(results)) + "\n", flush=True)
    if a.json:
        a.json.write_text(json.dumps(everything, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
