"""`make bench`: measured training-step memory of every method, at real sizes.

Each figure comes from `tinytlc memory` (a fresh process per artifact, ORT arena off, memray peak
of a training step). Methods that this release cannot compile are listed with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tinytlc.errors import TinyTLError
from tinytlc.methods import METHODS
from tinytlc.pipeline import compile_model
from tinytlc.report import mib, table
from tinytlc.runtime.memory import measure


def memory_table(model: str, resolution: int, batch_size: int, methods=METHODS, num_classes: int = 10,
                 steps: int = 3, log=print) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            try:
                art = compile_model(model, method, Path(tmp) / method.replace("+", "_"), num_classes=num_classes,
                                    batch_size=batch_size, resolution=resolution)
            except TinyTLError as e:
                results.append({"model": model, "method": method, "error": str(e)})
                log(f"  {method}: not compiled ({e})")
                continue
            r = measure(art.path, steps=steps)
            r["trainable_elements"] = art.manifest["trainable_elements"]
            results.append(r)
            log(f"  {method}: step peak {mib(r['step_peak_bytes'])} MiB, total {mib(r['total_bytes'])} MiB")
    return results


def render(results: list[dict]) -> str:
    full = next((r for r in results if r["method"] == "full" and "error" not in r), None)
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["method"], "-", "-", "-", "-", "-", "-", "not in this release"])
            continue
        ratio = f"{full['total_bytes'] / r['total_bytes']:.2f}x" if full else "-"
        rows.append([r["method"], f"{r['trainable_elements']:,}", mib(r["param_bytes"]), mib(r["step_peak_bytes"]),
                     mib(r["hwm_rise_bytes"]), mib(r["total_bytes"]), f"{r['step_seconds'] * 1000:.0f}", ratio])
    return table(["method", "trained params", "params+optim MiB", "step peak MiB", "VmHWM rise MiB", "total MiB",
                  "step ms", "full / this (total)"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mobilenetv2,efficientnet-lite0")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    everything = {}
    for model in a.models.split(","):
        print(f"{model}, {a.resolution} px, batch {a.batch_size}:", flush=True)
        try:
            results = memory_table(model, a.resolution, a.batch_size)
        except TinyTLError as e:
            print(f"tinytlc: error: {e}", file=sys.stderr)
            return 2
        everything[model] = results
        print("\n" + render(results) + "\n", flush=True)
    if a.json:
        a.json.write_text(json.dumps(everything, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
