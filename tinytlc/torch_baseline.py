"""What users run today: a PyTorch eager training step of the same zoo model, measured the same
way as tinytlc's artifacts (fresh process, memray peak of native allocations during the steps,
after warm-up; Adam; the same batch and resolution; torch's default threads, one per core).

The methods train what tinytlc's do. BatchNorm stays in eval mode (frozen statistics), as in tinytlc:
- `full`: every parameter; `last`: the classifier; `norm+last`: the norms' scales and shifts too;
- `bias`: the norm shifts (tinytlc trains them as the biases of BN-folded convs) and the classifier;
- `lite`, `lite+bias`: lite residual modules beside the blocks tinytlc put them by (the artifact's
  manifest lists them: input and output sizes, stride, kernel), written as a PyTorch user would
  (nn.AvgPool2d, grouped nn.Conv2d, nn.GroupNorm, F.interpolate), trained with the classifier;
  `lite+bias` trains the shifts too and keeps each module's final shift frozen, as tinytlc does.
"""

from __future__ import annotations

import argparse
import json
import sys

from tinytlc.errors import TinyTLError

METHODS = ("full", "last", "norm+last", "bias", "lite", "lite+bias")


def lite_module(spec: dict):
    """The lite residual branch tinytlc splices beside a block (passes/forward/lite_residual.py)."""
    import torch.nn as nn
    import torch.nn.functional as F

    (cin, hin, win), (cout, hout, wout), k = spec["input"], spec["output"], spec["kernel"]

    def group_norm(c):
        return nn.GroupNorm(max(1, c // 8) if c % 8 == 0 else 1, c)

    class Lite(nn.Module):
        def __init__(self):
            super().__init__()
            d = 2 if min(hin, win) >= 2 else 1
            self.pool = nn.AvgPool2d(d) if d > 1 else nn.Identity()
            # the taps that reach the map, and their paddings (top, left, bottom, right), as compiled
            top, left, bottom, right = spec.get("pads", [k // 2] * 4)
            same = (top, left) == (bottom, right)
            self.pad = None if same else (left, right, top, bottom)
            mid, groups = spec.get("width", cin), spec.get("groups", 2 if cin % 2 == 0 else 1)
            self.conv1 = nn.Conv2d(cin, mid, tuple(spec.get("taps", [k, k])), spec["stride"],
                                   (top, left) if same else 0, groups=groups, bias=False)
            self.norm1, self.conv2, self.norm2 = group_norm(mid), nn.Conv2d(mid, cout, 1, bias=False), group_norm(cout)
            nn.init.zeros_(self.norm2.weight)

        def forward(self, x):
            x = self.pool(x) if self.pad is None else F.pad(self.pool(x), self.pad)
            r = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
            return r if r.shape[-2:] == (hout, wout) else F.interpolate(r, (hout, wout), mode="bilinear",
                                                                       align_corners=False)
    return Lite()


def has_baseline(model: str, method: str) -> bool:
    """Whether eager_model can build METHOD for MODEL: any module for the methods without lite
    modules; lite modules go beside the blocks of zoo models only."""
    from tinytlc import zoo
    return model in zoo.MODELS or not method.startswith("lite")


def eager_model(model: str, method: str, resolution: int, num_classes: int, lite_modules: list[dict] | None):
    """(network in eval mode, its lite branches, its trainable parameters) for METHOD, as tinytlc
    trains it; the branches run from forward hooks on the blocks they sit beside."""
    import torch
    import torch.nn as nn

    from tinytlc import zoo
    if model in zoo.MODELS:
        net = zoo.get(model).build(resolution=resolution, pretrained=False)
    elif ".py:" in model:
        from tinytlc.export import load_function
        net = load_function(model)
    else:
        raise TinyTLError(f"PyTorch baseline: {model} is neither a zoo model ({', '.join(zoo.MODELS)}) "
                          "nor path/to/file.py:function")
    heads = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise TinyTLError(f"PyTorch baseline: {model} has no nn.Linear classifier to re-initialise")
    head = heads[-1]
    if num_classes != head.out_features:  # a new head, drawn as ReplaceClassifierPass draws it
        head.out_features, head.weight = num_classes, nn.Parameter(torch.empty(num_classes, head.in_features))
        head.bias = nn.Parameter(torch.empty(num_classes)) if head.bias is not None else None
        head.reset_parameters()
    lite = nn.ModuleList()
    if method.startswith("lite"):
        if not lite_modules:
            raise TinyTLError(f"PyTorch baseline {method}: no lite modules given (compile with tinytlc first)")
        if not hasattr(net, "blocks"):  # where tinytlc's blocks are in a module's own tree is the zoo's alone
            raise TinyTLError(f"PyTorch baseline {method}: lite modules are placed on zoo models only, not {model}")
        blocks = net.blocks
        for spec in lite_modules:
            block, branch = blocks[spec["index"]], lite_module(spec)
            lite.append(branch)
            block.register_forward_hook(lambda mod, args, out, b=branch: out + b(args[0]))
    net.eval()
    # what tinytlc trains (methods.py): norms' scales and shifts, every conv and linear bias
    norm_kinds = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
    norm_layers = [m for m in net.modules() if isinstance(m, norm_kinds)]
    classifier = {id(head.weight), id(head.bias)}
    norms = {id(p) for m in norm_layers for p in m.parameters()}
    shifts = {id(m.bias) for m in net.modules() if isinstance(m, (*norm_kinds, nn.Conv2d, nn.Linear))
              and getattr(m, "bias", None) is not None}
    branch = {id(p) for p in lite.parameters()} - {id(b.norm2.bias) for b in lite if method == "lite+bias"}

    def trains(p) -> bool:
        return (method == "full" or id(p) in classifier or (method == "norm+last" and id(p) in norms)
                or (method in ("bias", "lite+bias") and id(p) in shifts) or id(p) in branch)
    params = list(net.parameters()) + list(lite.parameters())
    for p in params:
        p.requires_grad_(trains(p))
    trainable = [p for p in params if p.requires_grad]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, resolution, resolution))
    except RuntimeError as e:
        raise TinyTLError(f"PyTorch baseline {method}: the lite modules do not fit {model}'s blocks at "
                          f"{resolution} px ({str(e).splitlines()[0]})") from e
    return net, lite, trainable


def probe(model: str, method: str, resolution: int, batch_size: int, num_classes: int, steps: int, warmup: int,
          what: str, lite_modules: list[dict] | None = None) -> dict:

    import torch
    import torch.nn as nn

    from tinytlc.runtime.memory import median_seconds, peak_during
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net, lite, trainable = eager_model(model, method, resolution, num_classes, lite_modules)
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
    n_all = sum(p.numel() for p in net.parameters()) + sum(p.numel() for p in lite.parameters())
    n_train = sum(p.numel() for p in trainable)
    return {"param_bytes": 4 * (n_all + 3 * n_train), "trainable_elements": n_train, **peak_during(step, steps)}


def eager_args(model: str, method: str, resolution: int, batch_size: int, num_classes: int = 10,
               steps: int = 3, warmup: int = 2, lite_modules: list[dict] | None = None) -> list[str]:
    """The command of a fresh process that probes an eager step (append "memory" or "time")."""
    if method not in METHODS:
        raise TinyTLError(f"PyTorch baseline: method {method} not one of {', '.join(METHODS)}")
    return [sys.executable, "-m", "tinytlc.torch_baseline", model, method, str(resolution), str(batch_size),
            str(num_classes), str(steps), str(warmup), "--lite-modules", json.dumps(lite_modules or [])]


def measure_torch(model: str, method: str, resolution: int, batch_size: int, num_classes: int = 10,
                  steps: int = 3, warmup: int = 2, lite_modules: list[dict] | None = None) -> dict:
    """Memory and step time of the eager step, each in a fresh process. `lite_modules`: the
    manifest's list, for the lite methods."""
    from tinytlc.runtime.memory import run_child
    args = eager_args(model, method, resolution, batch_size, num_classes, steps, warmup, lite_modules)
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
    ap.add_argument("--lite-modules", type=json.loads, default=[])
    ap.add_argument("what", choices=("memory", "time"))
    a = ap.parse_args()
    try:
        print(json.dumps(probe(a.model, a.method, a.resolution, a.batch_size, a.num_classes, a.steps, a.warmup,
                               a.what, a.lite_modules)))
    except TinyTLError as e:  # one line for the parent to pass on (runtime/memory.py:run_child)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
