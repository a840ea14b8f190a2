"""`tinytlc bench`: accuracy against measured memory for every transfer-learning method, as in the
TinyTL paper's Figure 3, on real weights and real images, measured on this machine.

The protocol (the README has the settings and the figures):
- Data: a validation split (`--val-images`, fixed, seed 0) is carved from the training images; the
  training images of a run are drawn from the rest; the test images (`--test-images` of the test
  split) are used only for the final runs, never to choose anything.
- Settings: `many` (`--train-images` images, `--epochs`) and `few` (`--few-shot` images a class,
  `--few-shot-epochs`); each seed draws its own training images.
- Learning rate of each method: a sweep over LR_GRID (Adam, cosine decay), one run per value with
  seed 0, scored on the validation split, going on past an edge of the grid (x3 a step, at most
  EXTEND steps) while the score improves; the best one is kept.
- Final runs: `--seeds` seeds with the chosen rate, scored on the test images; mean and standard
  deviation. Batch size 1 (`lite+bias`, the paper's Figure 5) gets its own sweep and seeds.
- Memory: each method's training step measured once (`tinytlc memory`: fresh process, memray peak),
  and PyTorch eager `full` and `bias` the same way (torch_baseline.py).
Writes results/benchmark.{json,md} and results/accuracy_vs_memory.png (error bars: one standard
deviation over seeds).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tinytlc.data import Data, Split, load_data
from tinytlc.errors import TinyTLError
from tinytlc.fsutil import atomic_path, write_json
from tinytlc.methods import METHODS
from tinytlc.pipeline import compile_model
from tinytlc.report import mib, table
from tinytlc.runtime.memory import measure
from tinytlc.runtime.train import TrainConfig, train
from tinytlc.torch_baseline import measure_torch

FASHION = "/usr/share/datasets/fashion-mnist"
# Adam learning rates swept per method: fine-tuning every weight wants smaller steps
LR_GRID = {"full": [1e-4, 3e-4, 1e-3], "other": [1e-3, 3e-3, 1e-2]}
EXTEND = 2  # a best rate at the edge of the grid: up to this many more steps past it


def take(split: Split, idx: np.ndarray) -> Split:
    idx = np.sort(idx)
    return Split(split.labels[idx], lambda i, s=split, m=idx: s.load(int(m[i])))


def carve(split: Split, n: int, seed: int = 0) -> tuple[Split, np.ndarray]:
    """A fixed validation split of `n` images, and the indices of the rest (the training pool)."""
    order = np.random.default_rng(seed).permutation(len(split))
    return take(split, order[:n]), order[n:]


def draw(split: Split, pool: np.ndarray, seed: int, images: int | None = None, per_class: int | None = None) -> Split:
    """Training images for one run: `images` from the pool, or `per_class` of each class."""
    rng = np.random.default_rng([seed, 1])
    if per_class is None:
        return take(split, rng.permutation(pool)[:images])
    labels = split.labels[pool]
    picks = [rng.permutation(pool[labels == c])[:per_class] for c in np.unique(labels)]
    return take(split, np.concatenate(picks))


def _run(art, data: Data, lr: float, epochs: int, batch_size: int, seed: int) -> float:
    record = train(art.path, art.manifest, data, TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                                             label_smoothing=0.1, restart=True,
                                                             eval_every_epoch=False), log=lambda s: None)
    return record["history"][-1]["test_accuracy"]


def protocol(art, train_split: Split, pool, val: Split, test: Split, classes, grid: list[float], epochs: int,
             batch_size: int, seeds: int, draw_args: dict, log) -> dict:
    """Sweep the learning rate on the validation split, then train `seeds` times and test."""
    sweep = {}

    def score(lr: float) -> float:
        sweep[lr] = _run(art, Data(classes, draw(train_split, pool, 0, **draw_args), val), lr, epochs, batch_size, 0)
        log(f"lr {lr:g}: validation {sweep[lr]:.2%}")
        return sweep[lr]

    for lr in grid:
        score(lr)
    best = lambda: max(sweep, key=lambda v: (sweep[v], -v))  # noqa: E731  (a tie goes to the smaller rate)
    factor = grid[1] / grid[0] if len(grid) > 1 else 3.0
    for _ in range(EXTEND):  # the best rate at an edge of the grid: go on past it while it improves
        lr = best()
        if lr not in (min(sweep), max(sweep)):
            break
        if score(lr / factor if lr == min(sweep) else lr * factor) <= sweep[lr]:
            break
    lr = best()
    accs = [_run(art, Data(classes, draw(train_split, pool, s, **draw_args), test), lr, epochs, batch_size, s)
            for s in range(seeds)]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0  # (sample standard deviation)
    log(f"lr {lr:g} chosen; test {100 * statistics.mean(accs):.1f} +- {100 * sd:.1f} %")
    return {"lr": lr, "sweep": {f"{k:g}": v for k, v in sweep.items()}, "accuracies": accs,
            "accuracy": statistics.mean(accs), "accuracy_std": sd}


def run(model: str, data: str, methods: list[str], resolution: int, batch_size: int, seeds: int,
        settings: dict[str, dict], val_images: int, test_images: int, batch1: bool, lite_reference: int = 128,
        log=print) -> dict:
    from tinytlc.passes.forward import LiteOptions
    lite = LiteOptions(reference=lite_reference)
    d = load_data(data, 10, test_limit=test_images, seed=0)
    classes = len(d.classes)  # (a folder of 3 classes gets a 3-class head, here and in the PyTorch baseline)
    val, pool = carve(d.train, val_images)
    results, memory = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            t0 = time.perf_counter()
            art = compile_model(model, method, Path(tmp) / method.replace("+", "_"), num_classes=classes,
                                batch_size=batch_size, resolution=resolution, lite=lite)
            memory[method] = measure(art.path)
            for name, s in settings.items():
                tag = lambda msg, m=method, n=name: log(f"  [{n} {m}] {msg}")  # noqa: E731
                r = protocol(art, d.train, pool, val, d.test, d.classes, LR_GRID.get(method, LR_GRID["other"]),
                             s["epochs"], batch_size, seeds, s["draw"], tag)
                results.append(_row(name, method, batch_size, r, art, memory[method]))
            log(f"{method}: " + ", ".join(f"{r['setting']} {100 * r['accuracy']:.1f} +- {100 * r['accuracy_std']:.1f} %"
                                          for r in results if r["method"] == method and r["batch_size"] == batch_size)
                + f"; total {mib(memory[method]['total_bytes'])} MiB ({time.perf_counter() - t0:.0f} s)")
        if batch1 and "lite+bias" in methods:
            art = compile_model(model, "lite+bias", Path(tmp) / "lite_bias_b1", num_classes=classes, batch_size=1,
                                resolution=resolution, lite=lite)
            mem = measure(art.path)
            for name, s in settings.items():
                if s["draw"].get("per_class") is None:
                    continue  # batch 1 where it is cheap: the few-shot setting
                tag = lambda msg, n=name: log(f"  [{n} lite+bias batch 1] {msg}")  # noqa: E731
                r = protocol(art, d.train, pool, val, d.test, d.classes, LR_GRID["other"], s["epochs"], 1, seeds,
                             s["draw"], tag)
                results.append(_row(name, "lite+bias", 1, r, art, mem))
    baselines = []
    for method in ("full", "bias"):
        r = measure_torch(model, method, resolution, batch_size, num_classes=classes)
        baselines.append(r)
        log(f"pytorch eager {method}: total {mib(r['total_bytes'])} MiB")
    return {"setting": {"model": model, "data": data, "resolution": resolution, "batch_size": batch_size,
                        "seeds": seeds, "val_images": val_images, "test_images": len(d.test),
                        "label_smoothing": 0.1, "lr_grid": LR_GRID, "lite_reference": lite_reference,
                        "settings": {k: {"epochs": v["epochs"], **v["draw"]} for k, v in settings.items()}},
            "results": results, "pytorch_eager": baselines}


def _row(setting: str, method: str, batch_size: int, r: dict, art, mem: dict) -> dict:
    return {"setting": setting, "method": method, "batch_size": batch_size, "runtime": "tinytlc (ORT)", **r,
            "trainable_elements": art.manifest["trainable_elements"],
            **{k: mem[k] for k in ("param_bytes", "step_peak_bytes", "total_bytes", "step_seconds")}}


def render(report: dict) -> str:
    rows = [[r["setting"], r["method"] + (" (batch 1)" if r["batch_size"] == 1 else ""),
             f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f}", f"{r['lr']:g}",
             f"{r['trainable_elements']:,}", mib(r["param_bytes"]), mib(r["step_peak_bytes"]), mib(r["total_bytes"])]
            for r in report["results"]]
    rows += [["-", f"{b['method']} (PyTorch eager)", "-", "-", f"{b['trainable_elements']:,}", mib(b["param_bytes"]),
              mib(b["step_peak_bytes"]), mib(b["total_bytes"])] for b in report["pytorch_eager"]]
    s = report["setting"]
    kinds = "; ".join(f"{k}: " + (f"{v['per_class']} images a class" if v.get("per_class") else f"{v['images']} images")
                      + f", {v['epochs']} epochs" for k, v in s["settings"].items())
    head = (f"{s['model']} on {s['data']}, {s['resolution']} px, batch {s['batch_size']}; {kinds}; "
            f"learning rate chosen on {s['val_images']} validation images, then {s['seeds']} seeds tested on "
            f"{s['test_images']} test images (mean ± standard deviation)\n\n")
    return head + table(["setting", "method", "test accuracy %", "lr", "trained params", "params+optim MiB",
                         "step peak MiB", "total MiB"], rows)


def targets(report: dict) -> list[str]:
    """The paper's claims, per setting, on the means over seeds."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in report["results"]):
        by = {r["method"]: r for r in report["results"] if r["setting"] == setting and r["batch_size"] > 1}
        acc = {m: 100 * r["accuracy"] for m, r in by.items()}
        if {"lite+bias", "last", "full"} <= set(acc):
            d = acc["lite+bias"] - acc["last"]
            out.append(f"[{'met' if d >= 5 else 'MISSED'}] {setting}: lite+bias >= last + 5 points: {d:+.1f}")
            d = acc["full"] - acc["lite+bias"]
            out.append(f"[{'met' if d <= 2 else 'MISSED'}] {setting}: lite+bias within 2 points of full: "
                       f"{d:.1f} below")
        order = [m for m in ("full", "lite+bias", "bias", "last") if m in acc]
        if len(order) > 1:
            ok = all(acc[a] >= acc[b] for a, b in zip(order, order[1:]))
            out.append(f"[{'met' if ok else 'MISSED'}] {setting}: " + " >= ".join(order) + ": "
                       + ", ".join(f"{acc[m]:.1f}" for m in order))
    # memory does not depend on the setting
    by = {r["method"]: r for r in report["results"] if r["batch_size"] == report["setting"]["batch_size"]}
    eager = {b["method"]: b for b in report["pytorch_eager"]}
    lb = by.get("lite+bias")
    if lb and "full" in by:
        f = lb["total_bytes"] / by["full"]["total_bytes"]
        out.append(f"[{'met' if f <= 0.2 else 'MISSED'}] lite+bias total <= 1/5 of full (both tinytlc): 1/{1 / f:.2f}")
    if lb and "bias" in eager:
        f = lb["step_peak_bytes"] / eager["bias"]["step_peak_bytes"]
        out.append(f"[{'met' if f <= 0.25 else 'MISSED'}] lite+bias step peak <= 1/4 of PyTorch eager bias: "
                   f"1/{1 / f:.2f}")
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    settings = list(dict.fromkeys(r["setting"] for r in report["results"]))
    fig, axes = plt.subplots(1, len(settings), figsize=(6.0 * len(settings), 4.2), squeeze=False)
    s = report["setting"]
    for ax, setting in zip(axes[0], settings):
        for r in (r for r in report["results"] if r["setting"] == setting):
            x, y = r["total_bytes"] / 2**20, 100 * r["accuracy"]
            ax.errorbar(x, y, yerr=100 * r["accuracy_std"], fmt="o" if r["batch_size"] > 1 else "s", capsize=3)
            label = r["method"] + (" (batch 1)" if r["batch_size"] == 1 else "")
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
        for b in report["pytorch_eager"]:
            ax.axvline(b["total_bytes"] / 2**20, ls=":", color="gray")
            ax.annotate(f"PyTorch eager {b['method']}", (b["total_bytes"] / 2**20, 0.02), xycoords=("data", "axes fraction"),
                        rotation=90, fontsize=8, color="gray", xytext=(3, 0), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([5, 10, 20, 50, 100, 200, 500, 1000, 2000]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("measured training memory, MiB (params + optimizer + step peak; log scale)")
        ax.set_ylabel(f"test accuracy, % (mean ± sd over {s['seeds']} seeds)")
        data = "Fashion-MNIST" if "fashion" in s["data"].lower() else s["data"]
        ax.set_title(f"{s['model']}, {data} ({setting}), {s['resolution']} px", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


OUTPUTS = ("benchmark.json", "benchmark.md", "accuracy_vs_memory.png")


def check_out(out: Path) -> None:
    """bench writes its files only as new ones or over an earlier bench's: never over a user's."""
    if out.exists() and not out.is_dir():
        raise TinyTLError(f"--out {out}: a file is there; give a directory")
    theirs = [name for name in OUTPUTS if (out / name).exists() and not _written_by_bench(out / name)]
    if theirs:
        raise TinyTLError(f"--out {out}: {', '.join(theirs)} exist and were not written by tinytlc bench; "
                          "choose another --out")
    parent = next(p for p in [out, *out.parents] if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise TinyTLError(f"--out {out}: {parent} is {'not writable' if parent.is_dir() else 'a file'}")


def _written_by_bench(path: Path) -> bool:
    try:
        if path.suffix == ".json":
            report = json.loads(path.read_text())
            return isinstance(report, dict) and {"setting", "results"} <= set(report)
        if path.suffix == ".md":
            return "| setting | method " in path.read_text()
        from PIL import Image
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software", "").startswith(("Matplotlib", "tinytlc"))
    except (OSError, ValueError, SyntaxError):
        return False


def main(argv=None) -> int:
    from tinytlc.cli import _Parser, _ranged
    count, positive = _ranged(int, 0), _ranged(int, 1)
    ap = _Parser(prog="tinytlc bench", description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--data", default=FASHION, help="as for tinytlc train (default: Debian's Fashion-MNIST)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--resolution", type=_ranged(int, 8, 4096), default=32)
    ap.add_argument("--batch-size", type=positive, default=8)
    ap.add_argument("--train-images", type=count, default=2000, help="the `many` setting (0: leave it out)")
    ap.add_argument("--epochs", type=_ranged(int, 1, 100000), default=2)
    ap.add_argument("--few-shot", type=count, default=20, help="images a class in the `few` setting (0: leave it out)")
    ap.add_argument("--few-shot-epochs", type=_ranged(int, 1, 100000), default=10)
    ap.add_argument("--val-images", type=positive, default=1000)
    ap.add_argument("--test-images", type=positive, default=2000)
    ap.add_argument("--seeds", type=count, default=3)
    ap.add_argument("--no-batch1", action="store_true", help="leave out lite+bias at batch size 1")
    ap.add_argument("--lite-reference", type=_ranged(int, 0, 4096), default=0,
                    help="lite module kernels as compile's --lite-reference (default 0 here: sized by the real maps; "
                         "at 32 px the paper's 128 px reference puts 5x5 kernels on 1x1 and 2x2 maps)")
    ap.add_argument("--out", type=Path, default=Path("results"),
                    help="folder for benchmark.json, benchmark.md, accuracy_vs_memory.png (new files, or an "
                         "earlier bench's)")
    a = ap.parse_args(argv)
    settings = {}
    if a.train_images:
        settings["many"] = {"epochs": a.epochs, "draw": {"images": a.train_images}}
    if a.few_shot:
        settings["few"] = {"epochs": a.few_shot_epochs, "draw": {"per_class": a.few_shot}}
    if not settings or a.seeds < 1:
        raise TinyTLError("nothing to run (--train-images and --few-shot are both 0, or --seeds < 1)")
    check_out(a.out)  # before hours of runs, and again just before writing
    report = run(a.model, a.data, a.methods.split(","), a.resolution, a.batch_size, a.seeds, settings,
                 a.val_images, a.test_images, not a.no_batch1, a.lite_reference, log=lambda s: print(s, flush=True))
    text = render(report) + "\n\n" + "\n".join(targets(report)) + "\n"
    check_out(a.out)
    write_json(a.out / "benchmark.json", report)
    with atomic_path(a.out / "benchmark.md") as tmp:
        tmp.write_text(text)
    plot(report, a.out / "accuracy_vs_memory.png")
    print("\n" + text + f"\nwrote {a.out}/benchmark.md, benchmark.json, accuracy_vs_memory.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
