"""What users run today: a PyTorch eager training step of the same zoo model, measured the same
way as tinytlc's artifacts (fresh process, memray peak of native allocations during the steps,
after warm-up; Adam; the same batch and resolution).

`full` trains every parameter; `bias` trains the norm shifts (the biases of BN-folded convs) and
the classifier. BatchNorm stays in eval mode (frozen statistics), as in tinytlc.
"""

from __future__ import annotations

import argparse
import json
import sys

from tinytlc.errors import TinyTLError

METHODS = ("full", "bias")


def probe(model: str, method: str, resolution: int, batch_size: int, num_classes: int, steps: int, warmup: int,
          what: str) -> dict:

    import torch
    import torch.nn as nn

    from tinytlc import zoo
    from tinytlc.runtime.memory import median_seconds, peak_during
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net = zoo.get(model).build(resolution=resolution, pretrained=False)
    head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    head.out_features, head.weight = num_classes, nn.Parameter(head.weight[:num_classes].clone())
    head.bias = nn.Parameter(head.bias[:num_classes].clone())
    net.eval()
    for name, p in net.named_parameters():
        p.requires_grad_(method == "full" or name.endswith(".bias") or p is head.weight)
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-4)
    x = torch.randn(batch_size, 3, resolution, resolution)
    y = torch.randint(0, num_classes, (batch_size,))

    def step():
        opt.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for _ in range(warmup):
        step()
    if what == "time":
        return {"step_seconds": median_seconds(step, steps)}
    n_all = sum(p.numel() for p in net.parameters())
    n_train = sum(p.numel() for p in trainable)
    return {"param_bytes": 4 * (n_all + 3 * n_train), "trainable_elements": n_train, **peak_during(step, steps)}


def measure_torch(model: str, method: str, resolution: int, batch_size: int, num_classes: int = 10,
                  steps: int = 3, warmup: int = 2) -> dict:
    from tinytlc.runtime.memory import run_child
    if method not in METHODS:
        raise TinyTLError(f"PyTorch baseline: method {method} not one of {', '.join(METHODS)}")
    args = [sys.executable, "-m", "tinytlc.torch_baseline", model, method, str(resolution), str(batch_size),
            str(num_classes), str(steps), str(warmup)]
    mem = run_child(args + ["memory"], True)
    timing = run_child(args + ["time"], False)
    return {"model": model, "method": method, "runtime": "pytorch eager", **mem, **timing,
            "total_bytes": mem["param_bytes"] + mem["step_peak_bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description="internal: measure a PyTorch eager training step")
    for name in ("model", "method"):
        ap.add_argument(name)
    for name in ("resolution", "batch_size", "num_classes", "steps", "warmup"):
        ap.add_argument(name, type=int)
    ap.add_argument("what", choices=("memory", "time"))
    a = ap.parse_args()
    print(json.dumps(probe(a.model, a.method, a.resolution, a.batch_size, a.num_classes, a.steps, a.warmup, a.what)))


if __name__ == "__main__":
    main()
