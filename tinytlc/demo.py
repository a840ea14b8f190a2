"""`make demo`: EfficientNet-Lite0 with its ImageNet weights, adapted to Fashion-MNIST with four
methods (full, last, bias, lite+bias); prints held-out accuracy and the measured memory of a
training step, with ORT's own training graph and with tinytlc's.

Short on purpose (a subset, one epoch, 128 px) so it runs in minutes on two CPU cores;
`tinytlc train` takes the full set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tinytlc.data import load_data
from tinytlc.errors import TinyTLError
from tinytlc.methods import default_lr
from tinytlc.pipeline import compile_model
from tinytlc.report import mib, table
from tinytlc.runtime.memory import measure
from tinytlc.runtime.train import TrainConfig, train

FASHION = Path("/usr/share/datasets/fashion-mnist")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--methods", default="full,last,bias,lite+bias")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(".demo"))
    a = ap.parse_args(argv)

    if FASHION.is_dir():
        spec, what = str(FASHION), f"Fashion-MNIST ({FASHION})"
    else:
        spec, what = f"synthetic:{a.train_images}", "synthetic data: Fashion-MNIST is not installed " \
                                                     "(apt-get install dataset-fashion-mnist)"
    print(f"tinytlc demo: {a.model}, {what}, {a.train_images} training images, {a.epochs} epoch(s), "
          f"{a.resolution} px, batch {a.batch_size}\n")
    rows, tested = [], a.test_images
    try:
        for method in a.methods.split(","):
            t0 = time.perf_counter()
            art = compile_model(a.model, method, a.out / method, num_classes=10, batch_size=a.batch_size,
                                resolution=a.resolution, force=True)
            data = load_data(spec, 10, limit=a.train_images, test_limit=a.test_images)
            tested = len(data.test)  # (synthetic data, or a small dataset, may have fewer)
            print(f"[{method}] compiled in {time.perf_counter() - t0:.1f}s")  # (train says what it trains)
            record = train(art.path, art.manifest, data,
                           TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=default_lr(method)))
            mem = measure(art.path)
            plain = compile_model(a.model, method, a.out / f"{method}-plain", num_classes=10,
                                  batch_size=a.batch_size, resolution=a.resolution, force=True, passes=[])
            plain_mem = measure(plain.path)
            m = art.manifest
            rows.append([method, f"{m['trainable_elements']:,}", f"{record['history'][-1]['test_accuracy']:.1%}",
                         mib(mem["param_bytes"]), mib(plain_mem["step_peak_bytes"]), mib(mem["step_peak_bytes"]),
                         mib(mem["total_bytes"]), f"{mem['step_seconds'] * 1000:.0f}"])
            print()
    except TinyTLError as e:
        print(f"tinytlc: error: {e}", file=sys.stderr)
        return 2
    print(table(["method", "trained params", f"held-out acc ({tested} imgs)", "params+optim MiB",
                 "step peak, plain ORT", "step peak, tinytlc", "total MiB", "step ms"], rows))
    print("\nMemory in MiB, measured in a fresh process per artifact (ORT arena off, memray peak of a training "
          "step). 'plain ORT' is the same model and method with ORT's own training graph (--no-passes). "
          "Step ms: median of 10 steps in another process, ORT's arena on, as training runs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
