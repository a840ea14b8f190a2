"""The `tinytlc` command: compile, train, eval, export, memory, diff, analyze, bench. Bad input
ends with one line on stderr and exit status 2; set TINYTLC_DEBUG=1 to see tracebacks."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from tinytlc.errors import TinyTLError
from tinytlc.report import mib

# torch, onnx and ORT are imported where they are needed: Ctrl-C during those slow imports is then
# inside main()'s handler (one line), and --help stays quick.



def _resolution(a) -> int | None:
    """Fill in --resolution when it was not given: a .onnx file's own fixed size (returned, for
    the command to say), else 224."""
    if a.resolution is not None:
        return None
    from tinytlc.onnx_file import file_resolution
    fixed = file_resolution(a.model)
    a.resolution = fixed or 224
    return fixed


def cmd_compile(a) -> dict:
    from tinytlc.pipeline import compile_model
    if a.passes is not None and not a.passes.strip(" ,"):
        raise TinyTLError("--passes names no pass; give pass names, or --no-passes for ORT's own graph")
    passes = [] if a.no_passes else ([p.strip() for p in a.passes.split(",") if p.strip()] if a.passes else None)
    had_run = a.force and (Path(a.out) / "trained").is_dir()
    from_file = _resolution(a)
    art = compile_model(a.model, a.method, a.out, num_classes=a.num_classes, batch_size=a.batch_size,
                        resolution=a.resolution, force=a.force, pretrained=not a.random_init, passes=passes,
                        lite=_lite_options(a), norm=a.norm, lite_modules=a.lite_modules, pixels=a.pixels)
    m = art.manifest
    found = m.get("found", {})
    if not a.json:
        print(f"compiled {m['source']} for method {m['method']} -> {art.path}")
        print(f"  input '{m['input']['name']}' {m['input']['shape']}, logits '{m['logits']}', {m['num_classes']} classes"
              + (f"; {from_file} px, the file's own input size (no --resolution given)" if from_file else ""))
        if found:
            print(f"  classifier: {found['classifier']}; norms: {found['norms'] or 'none'}; blocks: {found['blocks']}")
        print(f"  trains {len(m['trainable'])} tensors, {m['trainable_elements']:,} parameters (the model has "
              f"{m['model_elements']:,}); memory passes: {', '.join(m['passes']) or 'none'}")
        if "lite_modules" in m:
            mods = m["lite_modules"]
            params = sum(x["params"] for x in mods)
            print(f"  lite residual modules: {len(mods)} beside {m['lite_blocks']} blocks (the first gets none), "
                  f"{params:,} parameters" + (f"; e.g. {mods[0]['block']} {mods[0]['input']} -> {mods[0]['output']}, "
                                             f"stride {mods[0]['stride']}, kernel {mods[0]['kernel']}" if mods else ""))
            cropped = [x for x in mods if x.get("taps", [x["kernel"]] * 2) != [x["kernel"]] * 2]
            if cropped:
                c = cropped[0]
                what = ("module's kernel is wider than its map reaches" if len(cropped) == 1
                        else "modules' kernels are wider than their maps reach")
                print(f"  {len(cropped)} {what}: only the taps that reach "
                      f"the map are made (e.g. {c['kernel']}x{c['kernel']} -> {c['taps'][0]}x{c['taps'][1]} on "
                      f"{'x'.join(map(str, c['pooled']))})")
            narrowed = [x for x in mods if x.get("width", x["input"][0]) < x["input"][0]]
            if narrowed:
                n, factor = narrowed[0], m.get("lite_width", 1)
                why = (f"at 1/{round(1 / factor)} of the paper's width (or a bottleneck's), so that they hold no more "
                       f"weights than their blocks" if factor < 1 else "no wider than the block's narrowest conv")
                print(f"  {len(narrowed)} narrower than their input, each group reading half the width as in the "
                      f"paper (e.g. {n['input'][0]} channels in, {n['width']} wide in {n['groups']} groups): {why}")
            for skip in m.get("lite_skipped", []):
                print(f"  no module beside block {skip['block']} ({skip['kind']}): {skip['reason']}")
    sys.stdout.flush()
    if had_run:
        print(f"tinytlc: note: --force replaced {art.path} and the trained run it held", file=sys.stderr)
    if m["method"] == "norm+last" and found and not found["norms"]:
        print("tinytlc: warning: no norm layers found (an exporter may have folded BatchNorm into the convs); "
              "norm+last trains the classifier only", file=sys.stderr)
    if "lite_modules" in m and not m["lite_modules"]:
        print(f"tinytlc: warning: no lite residual module was inserted ({m['lite_blocks']} block(s) found); "
              f"{m['method']} trains {'biases and ' if m['method'] == 'lite+bias' else ''}the classifier only",
              file=sys.stderr)
    return m


def _lite_options(a):
    from tinytlc.passes.forward import LiteOptions
    if a.lite_norm not in ("group", "affine"):
        raise TinyTLError(f"--lite-norm {a.lite_norm}: choose group or affine")
    return LiteOptions(downsample=a.lite_downsample, kernel=a.lite_kernel, groups=a.lite_groups, expand=a.lite_expand,
                       norm=a.lite_norm, strict_groups=a.lite_groups != 2, reference=a.lite_reference,
                       budget=a.lite_budget)


def _load(a):
    from tinytlc.pipeline import load_artifact
    return load_artifact(a.dir)


def _load_data(a, m: dict, classes: list[str] | None, **kw):
    from tinytlc.data import load_data
    data = load_data(a.data, m["num_classes"], seed=a.seed, skip_bad=a.skip_bad_images, classes=classes, **kw)
    for w in data.warnings:
        print(f"tinytlc: warning: {w}", file=sys.stderr)
    return data


def cmd_train(a) -> dict:
    from tinytlc.methods import default_lr
    from tinytlc.runtime.train import TrainConfig, earlier_run, train
    art = _load(a)
    m = art.manifest
    lr = a.lr or default_lr(m["method"])
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size or m["input"]["shape"][0], lr=lr,
                      label_smoothing=a.label_smoothing, seed=a.seed or 0, resume=a.resume, restart=a.restart)
    record = earlier_run(art.path, m, cfg)  # --resume/--restart mistakes before the data is read
    if a.seed is None:  # a resumed run goes on with the split it started with
        a.seed = cfg.seed = record.get("seed", 0) if record else 0
    data = _load_data(a, m, record and record.get("classes"), limit=a.limit)
    if len(data.classes) < m["num_classes"] and not record:
        print(f"tinytlc: warning: --data {a.data} has {len(data.classes)} classes and the model {m['num_classes']} "
              f"outputs; the other {m['num_classes'] - len(data.classes)} are never trained (compile with "
              f"--num-classes {len(data.classes)} for a head of that size)", file=sys.stderr)
    log = (lambda s: print(s, file=sys.stderr)) if a.json else print
    return train(art.path, m, data, cfg, log=log)  # (it says what it trains once no other train holds the artifact)


def _note_untrained(art) -> None:
    from tinytlc.runtime.session import trained_checkpoint
    if trained_checkpoint(art.path) is None:
        print(f"tinytlc: note: {art.path} has not been trained (tinytlc train); using its initial weights, "
              "with a new, untrained classifier", file=sys.stderr)


def cmd_eval(a) -> dict:
    from tinytlc.runtime.train import evaluate
    art = _load(a)
    result = evaluate(art.path, a.data, a.batch_size, seed=a.seed, skip_bad_images=a.skip_bad_images)
    _note_untrained(art)
    if not a.json:
        what = "held-out accuracy" if result["scored"] == "held-out" else "accuracy (every image: none was trained on)"
        print(f"{what} {result['accuracy']:.2%}, loss {result['loss']:.4f} on {result['images']} images")
    return result


def cmd_export(a) -> dict:
    from tinytlc.pipeline import export_inference
    art = _load(a)
    r = export_inference(art.path, art.manifest, Path(a.out))
    _note_untrained(art)
    if not a.json:
        print(f"wrote {r['path']} (inputs {r['inputs']}, outputs {r['outputs']}; "
              f"matches the eval model to {r['max_abs_diff']:.2g})")
    return r


def cmd_memory(a) -> dict:
    from tinytlc.runtime.memory import measure
    _load(a)  # a damaged artifact is said here, not from the measuring process
    r = measure(a.dir, steps=a.steps, warmup=a.warmup, batch_size=a.batch_size)
    if not a.json:
        print(f"{r['model']} ({r['method']}), batch {r['batch_size']}, {r['resolution']} px, "
              f"passes: {', '.join(r['passes']) or 'none'}")
        rows = [("parameters + optimizer state", mib(r["param_bytes"]) + " MiB"),
                ("training step peak (memray)", mib(r["step_peak_bytes"]) + " MiB"),
                ("  cross-check: VmHWM rise", mib(r["hwm_rise_bytes"]) + " MiB"),
                ("total", mib(r["total_bytes"]) + " MiB"),
                ("step time", f"{r['step_seconds'] * 1000:.1f} ms")]
        for k, v in rows:
            print(f"  {k:<30} {v:>12}")
    return r


def cmd_diff(a) -> list:
    from tinytlc.pass_diff import diff, render
    log = (lambda s: print(s, file=sys.stderr)) if a.json else (lambda s: print("  " + s, flush=True))
    _resolution(a)
    rows = diff(a.model, a.method, num_classes=a.num_classes, batch_size=a.batch_size, resolution=a.resolution,
                measure_steps=a.steps, log=log)
    if not a.json:
        print(f"\n{a.model} ({a.method}), batch {a.batch_size}, {a.resolution} px\n")
        print(render(rows))
    return rows


def cmd_analyze(a) -> dict:
    from tinytlc.accounting import analyze
    if a.accounting not in ("paper", "exact"):
        raise TinyTLError(f"--accounting {a.accounting}: choose paper or exact")
    _resolution(a)
    r = analyze(a.model, a.method, resolution=a.resolution, batch_size=a.batch_size, num_classes=a.num_classes,
                accounting=a.accounting, norm=a.norm, lite=_lite_options(a), lite_modules=a.lite_modules)
    if not a.json:
        print(f"{r['model']} ({r['method']}{', with lite modules' if r['lite_modules'] else ''}), "
              f"{r['resolution']} px, batch {r['batch_size']}, {r['accounting']} accounting")
        rows = [("parameters", mib(r["param_bytes"]) + " MiB"),
                ("peak activations per sample", mib(r["activation_bytes_per_sample"]) + " MiB"),
                ("  of which stored for backward", mib(r["stored_bytes_per_sample"]) + " MiB"),
                (f"total (batch {r['batch_size']})", f"{mib(r['total_bytes'])} MiB ({r['total_bytes'] / 1e6:.1f} MB)")]
        for k, v in rows:
            print(f"  {k:<32} {v:>20}")
    return r


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block) and exit status 2."""

    def error(self, message: str, prog: str | None = None):
        self.exit(2, f"tinytlc: error: {message} (see {prog or self.prog} --help)\n")


def _ranged(kind, low=None, high=None, low_open=False, odd=False):
    """An argparse type: `kind` within [low, high] (low excluded if low_open), odd if asked."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or (low is not None and (value <= low if low_open else value < low)) or \
                (high is not None and value > high):
            bound = f"> {low}" if low_open else f">= {low}"
            span = f"{bound}" + (f" and <= {high}" if high is not None else "") if low is not None else f"<= {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {span})")
        if odd and value % 2 == 0:
            raise argparse.ArgumentTypeError(f"{text} must be odd")
        return value
    parse.__name__ = kind.__name__
    return parse


POSITIVE = _ranged(int, 1)
CLASSES = _ranged(int, 2)


def _model_arguments(p: argparse.ArgumentParser, min_resolution: int) -> None:
    """MODEL and the options that say which network and step: shared by diff (which compiles, so
    from 8 px as compile) and analyze (which only counts)."""
    from tinytlc.methods import METHODS
    p.add_argument("model", help="zoo name, a .onnx file, or path/to/file.py:function")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--num-classes", type=CLASSES, default=None)
    p.add_argument("--batch-size", type=POSITIVE, default=8)
    p.add_argument("--resolution", type=_ranged(int, min_resolution, 4096), default=None,
                   help="input size in pixels (default: a .onnx file's own fixed size, else 224)")


def parser() -> argparse.ArgumentParser:
    from tinytlc import __version__
    from tinytlc.methods import METHODS, default_lr
    from tinytlc.passes.training import DEFAULT_PASSES, PASSES
    p = _Parser(prog="tinytlc", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--version", action="version", version=f"tinytlc {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("bench", help="accuracy against measured memory for every method (tinytlc bench --help)",
                   add_help=False)

    c = sub.add_parser("compile", help="compile a model into ORT training artifacts for a method")
    c.add_argument("model", help="zoo name (efficientnet-lite0, mobilenetv2, proxylessnas-mobile), "
                                 "a .onnx file, or path/to/file.py:function returning an nn.Module")
    c.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    c.add_argument("--num-classes", type=CLASSES, default=None, help="new classifier size (default: keep the head)")
    c.add_argument("--batch-size", type=POSITIVE, default=8, help="batch the step is measured with (default 8)")
    c.add_argument("--resolution", type=_ranged(int, 8, 4096), default=None,
                   help="input size in pixels (default: a .onnx file's own fixed size, else 224)")
    c.add_argument("--out", required=True, help="artifact directory to write")
    chosen = c.add_mutually_exclusive_group()
    chosen.add_argument("--no-passes", action="store_true", help="keep ORT's training graph unmodified")
    chosen.add_argument("--passes", default=None,
                   help=f"comma-separated training-graph passes to run, from {','.join(PASSES)} "
                        f"(default: {','.join(DEFAULT_PASSES)}); +name adds one to the defaults, "
                        f"as in +pack-masks")
    c.add_argument("--random-init", action="store_true", help="do not load pretrained weights")
    c.add_argument("--pixels", choices=["imagenet", "0-1", "0-255"], default=None,
                   help="what the network takes, where compile cannot read it from the graph: ImageNet-"
                        "normalised images, or raw pixels in 0..1 or 0..255 (default: as compile finds)")
    c.add_argument("--force", action="store_true", help="replace --out if it exists")
    c.set_defaults(func=cmd_compile)

    # (train checks these ranges again for the Python API: runtime/train.py RANGES)
    t = sub.add_parser("train", help="train a compiled artifact with ONNX Runtime on the CPU")
    t.add_argument("dir")
    t.add_argument("--data", required=True, help="image folder (class per subfolder), idx folder, or synthetic:N")
    t.add_argument("--epochs", type=_ranged(int, 1, 100000), default=1)
    t.add_argument("--batch-size", type=POSITIVE, default=None, help="default: the compiled batch size")
    t.add_argument("--lr", type=_ranged(float, 0, 1, low_open=True), default=None, help=f"peak learning rate (default {default_lr('full'):g} "
                                                          f"for full, {default_lr('bias'):g} otherwise); cosine decay")
    t.add_argument("--label-smoothing", type=_ranged(float, 0, 0.99), default=0.0)
    t.add_argument("--limit", type=_ranged(int, 2), default=None, help="train on a fixed random subset of N images")
    t.add_argument("--seed", type=_ranged(int, 0), default=None,
                   help="seed of the held-out split and the shuffling (default 0; --resume: the run's)")
    t.add_argument("--resume", action="store_true", help="continue from the last saved epoch")
    t.add_argument("--restart", action="store_true",
                   help="train anew over an earlier run (kept until the new run saves its first epoch)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="accuracy of the trained (or compiled) model on the held-out split")
    e.add_argument("dir")
    e.add_argument("--data", required=True)
    e.add_argument("--batch-size", type=POSITIVE, default=None)
    e.add_argument("--seed", type=_ranged(int, 0), default=None,
                   help="seed of the held-out split (default: the one the artifact was trained with)")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write an inference ONNX model with the trained weights")
    x.add_argument("dir")
    x.add_argument("out")
    x.set_defaults(func=cmd_export)

    m = sub.add_parser("memory", help="measure the memory and time of one training step")
    m.add_argument("dir")
    m.add_argument("--steps", type=_ranged(int, 1, 1000), default=3)
    m.add_argument("--warmup", type=_ranged(int, 0, 1000), default=2)
    m.add_argument("--batch-size", type=POSITIVE, default=None, help="default: the compiled batch size")
    m.set_defaults(func=cmd_memory)

    d = sub.add_parser("diff", help="planned and measured step memory after each pass")
    _model_arguments(d, 8)
    d.add_argument("--steps", type=_ranged(int, 1, 1000), default=3, help="training steps measured per row")
    d.set_defaults(func=cmd_diff)

    an = sub.add_parser("analyze", help="memory by the paper's accounting (or an exact one), from the graph")
    _model_arguments(an, 1)
    an.add_argument("--accounting", default="paper", help="paper (TinyTL's rules) or exact")
    an.set_defaults(func=cmd_analyze)

    for s in (t, e):
        s.add_argument("--skip-bad-images", action="store_true",
                       help="leave out images that cannot be read (default: stop and name the first)")
    for s in (c, an):
        s.add_argument("--lite-modules", action="store_true",
                       help="lite residual modules in the network whatever the method (frozen unless it trains "
                            "them), as the paper profiles every method")
        s.add_argument("--lite-downsample", type=_ranged(int, 1, 16), default=2,
                       help="lite modules: input pooling (default 2)")
        s.add_argument("--lite-kernel", type=_ranged(int, 1, 15, odd=True), default=5,
                       help="lite modules: largest group conv kernel (default 5)")
        s.add_argument("--lite-reference", type=_ranged(int, 0, 4096), default=128,
                       help="lite modules: kernels shrink to fit the pooled size the blocks would have if the "
                            "first module's input were this many pixels wide, as the paper (default 128); "
                            "0: to fit the real pooled size")
        s.add_argument("--lite-groups", type=_ranged(int, 1, 1024), default=2, help="lite modules: conv groups (default 2)")
        s.add_argument("--lite-expand", type=_ranged(int, 1, 16), default=1,
                       help="lite modules: width multiplier (default 1)")
        s.add_argument("--lite-norm", default="group", help="lite modules: group (GroupNorm, 8 channels a group) "
                                                            "or affine")
        s.add_argument("--lite-budget", type=_ranged(float, 0), default=1.0,
                       help="lite modules: narrowed (halved up to 4 times) until they hold no more than this "
                            "times the weights of the blocks beside them (default 1; 0: the paper's width)")
        s.add_argument("--norm", default="batch", help="norm layers of a zoo model: batch, or group (GroupNorm, "
                                                       "8 channels a group; proxylessnas-mobile)")
    for s in (c, t, e, x, m, d, an):
        s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return p


ISSUES = "the tinytlc issue tracker"


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding as Ctrl-C does; the exit status is the shell's for the signal (143)."""


def _interrupt(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # SIGTERM unwinds like Ctrl-C, so temporary folders are removed on the way out
    signal.signal(signal.SIGTERM, _interrupt)
    # onnx_ir warns (with tracebacks) about graphs it then handles; tinytlc reports problems in one line
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    try:
        if argv[:1] == ["bench"]:  # its own options; see tinytlc/transfer_bench.py
            from tinytlc import transfer_bench
            return transfer_bench.main(argv[1:])
        p = parser()
        args, extra = p.parse_known_args(argv)
        if extra:  # named with the command's own help, not the top level's
            p.error(f"unrecognized arguments: {' '.join(extra)}", prog=f"{p.prog} {args.cmd}")
        result = args.func(args)
    except TinyTLError as e:
        print(f"tinytlc: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("tinytlc: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("tinytlc: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the file system said no (permissions, disk full): the user's to fix
        where = f"{e.filename}: " if e.filename else ""
        print(f"tinytlc: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug of ours: still one line unless debugging
        if os.environ.get("TINYTLC_DEBUG"):
            raise
        from tinytlc.runtime.session import strip_paths
        first = strip_paths(str(e).strip().splitlines()[0]) if str(e).strip() else ""
        print(f"tinytlc: internal error (a bug in tinytlc; please report it with TINYTLC_DEBUG=1's traceback at "
              f"{ISSUES}): {type(e).__name__}: {first}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
