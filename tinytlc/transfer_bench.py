"""`tinytlc bench`: accuracy against measured memory for every transfer-learning method, as in the
TinyTL paper's Figure 3, on real weights and real images, measured on this machine.

Default setting (documented in README): EfficientNet-Lite0 with its ImageNet weights, Fashion-MNIST
(a fixed random subset of the training set, seed 0; a fixed subset of the test set), 128 px,
batch 8, the same epochs, seed and augmentation (random resized crop, horizontal flip) for every
method; learning rate per method (Adam, cosine decay). Each method is compiled with tinytlc's
default passes, trained, evaluated on the test subset, and its training step measured
(`tinytlc memory`). PyTorch eager `full` and `bias` steps of the same model and batch are measured
the same way (torch_baseline.py). Writes results/benchmark.{json,md} and
results/accuracy_vs_memory.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tinytlc.data import load_data
from tinytlc.errors import TinyTLError
from tinytlc.fsutil import atomic_path, write_json
from tinytlc.methods import METHODS, default_lr
from tinytlc.pipeline import compile_model
from tinytlc.report import mib, table
from tinytlc.runtime.memory import measure
from tinytlc.runtime.train import TrainConfig, train
from tinytlc.torch_baseline import measure_torch

FASHION = "/usr/share/datasets/fashion-mnist"


def run(model: str, data: str, methods: list[str], resolution: int, batch_size: int, epochs: int,
        train_images: int, test_images: int, label_smoothing: float, seed: int, lr: dict[str, float],
        log=print) -> dict:
    results = []
    d = load_data(data, 10, limit=train_images, test_limit=test_images, seed=seed)  # the same images for all
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            t0 = time.perf_counter()
            art = compile_model(model, method, Path(tmp) / method.replace("+", "_"), num_classes=10,
                                batch_size=batch_size, resolution=resolution)
            record = train(art.path, art.manifest, d, TrainConfig(
                epochs=epochs, batch_size=batch_size, lr=lr.get(method, default_lr(method)),
                label_smoothing=label_smoothing, seed=seed), log=lambda s: log(f"  [{method}] {s}"))
            mem = measure(art.path)
            results.append({"method": method, "runtime": "tinytlc (ORT)", "accuracy": record["history"][-1]["test_accuracy"],
                            "trainable_elements": art.manifest["trainable_elements"],
                            "lr": lr.get(method, default_lr(method)), "train_seconds": time.perf_counter() - t0,
                            **{k: mem[k] for k in ("param_bytes", "step_peak_bytes", "total_bytes", "step_seconds")}})
            log(f"{method}: accuracy {results[-1]['accuracy']:.2%}, total {mib(mem['total_bytes'])} MiB")
    baselines = []
    for method in ("full", "bias"):
        r = measure_torch(model, method, resolution, batch_size)
        baselines.append(r)
        log(f"pytorch eager {method}: total {mib(r['total_bytes'])} MiB")
    return {"setting": {"model": model, "data": data, "resolution": resolution, "batch_size": batch_size,
                        "epochs": epochs, "train_images": train_images, "test_images": test_images,
                        "label_smoothing": label_smoothing, "seed": seed},
            "results": results, "pytorch_eager": baselines}


def render(report: dict) -> str:
    rows = [[r["method"], r["runtime"], f"{r['accuracy']:.1%}", f"{r['trainable_elements']:,}", mib(r["param_bytes"]),
             mib(r["step_peak_bytes"]), mib(r["total_bytes"]), f"{r['step_seconds'] * 1000:.0f}"]
            for r in report["results"]]
    rows += [[b["method"], b["runtime"], "-", f"{b['trainable_elements']:,}", mib(b["param_bytes"]),
              mib(b["step_peak_bytes"]), mib(b["total_bytes"]), f"{b['step_seconds'] * 1000:.0f}"]
             for b in report["pytorch_eager"]]
    s = report["setting"]
    head = (f"{s['model']} on {s['data']}: {s['train_images']} training images, {s['epochs']} epoch(s), "
            f"{s['test_images']} test images, {s['resolution']} px, batch {s['batch_size']}, seed {s['seed']}\n\n")
    return head + table(["method", "runtime", "test accuracy", "trained params", "params+optim MiB",
                         "step peak MiB", "total MiB", "step ms"], rows)


def targets(report: dict) -> list[str]:
    by = {r["method"]: r for r in report["results"]}
    eager = {b["method"]: b for b in report["pytorch_eager"]}
    out = []
    lb, last, full = by.get("lite+bias"), by.get("last"), by.get("full")
    if lb and last:
        d = 100 * (lb["accuracy"] - last["accuracy"])
        out.append(f"[{'met' if d >= 5 else 'MISSED'}] lite+bias accuracy >= last + 5 points: {d:+.1f} points")
    if lb and full:
        d = 100 * (full["accuracy"] - lb["accuracy"])
        out.append(f"[{'met' if d <= 2 else 'MISSED'}] lite+bias within 2 points of full: {d:.1f} points below")
        f = lb["total_bytes"] / full["total_bytes"]
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
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in report["results"]:
        ax.scatter(r["total_bytes"] / 2**20, 100 * r["accuracy"], s=40)
        ax.annotate(r["method"], (r["total_bytes"] / 2**20, 100 * r["accuracy"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=9)
    for b in report["pytorch_eager"]:
        ax.axvline(b["total_bytes"] / 2**20, ls=":", color="gray")
        ax.annotate(f"PyTorch eager {b['method']}", (b["total_bytes"] / 2**20, ax.get_ylim()[0]), rotation=90,
                    fontsize=8, color="gray", xytext=(3, 5), textcoords="offset points")
    s = report["setting"]
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([10, 20, 50, 100, 200, 500, 1000, 2000]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("measured training memory, MiB (params + optimizer + step peak; log scale)")
    ax.set_ylabel("test accuracy, %")
    data = "Fashion-MNIST" if "fashion" in s["data"].lower() else s["data"]
    ax.set_title(f"{s['model']}, {data}, {s['resolution']} px, batch {s['batch_size']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tinytlc bench", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--data", default=FASHION, help="as for tinytlc train (default: Debian's Fashion-MNIST)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=3000)
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", action="append", default=[], metavar="METHOD=LR", help="per-method learning rate")
    ap.add_argument("--out", type=Path, default=Path("results"))
    a = ap.parse_args(argv)
    try:
        lr = {k: float(v) for k, v in (item.split("=", 1) for item in a.lr)}
    except ValueError:
        print("tinytlc: error: --lr takes METHOD=LR, e.g. --lr full=0.0005", file=sys.stderr)
        return 2
    try:
        report = run(a.model, a.data, a.methods.split(","), a.resolution, a.batch_size, a.epochs, a.train_images,
                     a.test_images, a.label_smoothing, a.seed, lr)
    except TinyTLError as e:
        print(f"tinytlc: error: {e}", file=sys.stderr)
        return 2
    text = render(report) + "\n\n" + "\n".join(targets(report)) + "\n"
    write_json(a.out / "benchmark.json", report)
    with atomic_path(a.out / "benchmark.md") as tmp:
        tmp.write_text(text)
    plot(report, a.out / "accuracy_vs_memory.png")
    print("\n" + text + f"\nwrote {a.out}/benchmark.md, benchmark.json, accuracy_vs_memory.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
