"""Bad input: one clear line on stderr, exit status 2, nothing the user had is destroyed."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from conftest import NETS
from PIL import Image

from tinytlc.export import export_module


def one_line_error(result, *phrases):
    code, out, err = result
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinytlc: error: "), err
    for p in phrases:
        assert p in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from tinytlc.cli import main
    d = tmp_path_factory.mktemp("e") / "art"
    assert main(["compile", f"{NETS}:tiny_net", "--method", "bias", "--resolution", "16", "--out", str(d)]) == 0
    return d


def test_model_errors(tmp_path, cli):
    out = tmp_path / "out"
    one_line_error(cli("compile", tmp_path / "missing.onnx", "--method", "full", "--out", out), "no such file")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    one_line_error(cli("compile", bad, "--method", "full", "--out", out), "not a valid ONNX model")
    one_line_error(cli("compile", "resnet9000", "--method", "full", "--out", out), "unknown model 'resnet9000'")
    one_line_error(cli("compile", f"{NETS}:nope", "--method", "full", "--out", out), "no function 'nope'")
    one_line_error(cli("compile", f"{NETS}:not_a_module", "--method", "full", "--out", out), "expected a torch.nn.Module")
    assert not out.exists()


def test_method_errors(tmp_path, cli):
    one_line_error(cli("compile", "mobilenetv2", "--method", "everything", "--out", tmp_path / "o"), "unknown method")
    one_line_error(cli("compile", "mobilenetv2", "--method", "Bias", "--out", tmp_path / "o"), "unknown method")


def test_pass_errors(tmp_path, cli):
    args = ("compile", f"{NETS}:tiny_net", "--method", "bias", "--resolution", "16", "--out", tmp_path / "o", "--passes")
    one_line_error(cli(*args, "frozen-conv,nope"), "unknown pass 'nope'")
    one_line_error(cli(*args, "+nope"), "unknown pass 'nope'")
    one_line_error(cli(*args, "+pack-masks,dce"), "either name every pass or add to the defaults with +name")
    assert not (tmp_path / "o").exists()
    from tinytlc.passes.training import DEFAULT_PASSES, PASSES
    from tinytlc.pipeline import resolve_passes
    assert "pack-masks" not in DEFAULT_PASSES
    assert resolve_passes(["+pack-masks"]) == [p for p in PASSES if p in DEFAULT_PASSES or p == "pack-masks"]


def test_op_without_gradient(tmp_path, cli):
    one_line_error(cli("compile", f"{NETS}:prod_reduce_net", "--method", "full", "--resolution", 8,
                       "--out", tmp_path / "o"), "op ReduceProd (node ", "has no gradient")
    assert not (tmp_path / "o").exists()


def test_frozen_lstm_with_a_gradient_through_it(tmp_path, cli):
    """ORT's LSTM gradient crashed compile (SIGSEGV, no message) when the LSTM's weights are frozen
    and a layer before it trains (bias); full and last compile."""
    one_line_error(cli("compile", f"{NETS}:lstm_net", "--method", "bias", "--resolution", 16, "--out", tmp_path / "o"),
                   "op LSTM (node ", "frozen weights and a trained layer before it", "--method full")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".*"))
    for method in ("full", "last"):
        code, _, err = cli("compile", f"{NETS}:lstm_net", "--method", method, "--resolution", 16, "--out", tmp_path / method)
        assert code == 0, err


def test_two_heads_summed(tmp_path, cli):
    """VOLO's logits add an auxiliary head's: no single classifier, and the message says why."""
    one_line_error(cli("compile", f"{NETS}:aux_head_net", "--method", "last", "--resolution", 16, "--out", tmp_path / "o"),
                   "no classifier found: the logits combine 2 heads (", "use_aux_head=False")


def test_onnx_resolution_mismatch(tmp_path, cli):
    path = tmp_path / "fixed.onnx"
    model = export_module(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 2)), 32)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    import onnx
    onnx.save(model, path)
    one_line_error(cli("compile", path, "--method", "full", "--resolution", 64, "--out", tmp_path / "o"),
                   "shape mismatch")


def test_existing_output_is_kept(tmp_path, cli, artifact):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    one_line_error(cli("compile", f"{NETS}:tiny_net", "--method", "full", "--out", keep),
                   "not a tinytlc artifact (notes.txt)")
    (keep / "sub").mkdir()
    one_line_error(cli("compile", f"{NETS}:tiny_net", "--method", "full", "--out", keep, "--force"),
                   "not a tinytlc artifact (notes.txt, sub)", "even with --force")
    assert (keep / "notes.txt").read_text() == "precious" and (keep / "sub").is_dir()
    mine = tmp_path / "mine.txt"
    mine.write_text("mine")
    one_line_error(cli("compile", f"{NETS}:tiny_net", "--method", "full", "--out", mine, "--force"), "a file is there")
    assert mine.read_text() == "mine" and not list(tmp_path.glob(".mine.txt*"))
    one_line_error(cli("compile", f"{NETS}:tiny_net", "--method", "full", "--out", artifact), "--force")
    # --force with a compile that fails leaves the old directory as it was
    before = sorted(p.name for p in artifact.iterdir())
    one_line_error(cli("compile", f"{NETS}:prod_reduce_net", "--method", "full", "--force", "--out", artifact),
                   "has no gradient")
    assert sorted(p.name for p in artifact.iterdir()) == before


def write_images(root, classes, size=(20, 20), n=3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")


def test_data_errors(tmp_path, cli, artifact):
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir(parents=True)
    one_line_error(cli("train", artifact, "--data", empty), "no images found")
    single = tmp_path / "single"
    write_images(single, ["only"])
    one_line_error(cli("train", artifact, "--data", single), "only 1 class")
    many = tmp_path / "many"
    write_images(many, [f"c{i}" for i in range(7)])
    one_line_error(cli("train", artifact, "--data", many), "7 classes", "--num-classes 7")
    corrupt = tmp_path / "corrupt"
    write_images(corrupt, ["a", "b"])
    (corrupt / "a" / "9.jpg").write_bytes(b"not a jpeg")
    one_line_error(cli("train", artifact, "--data", corrupt), "9.jpg", "cannot read image", "--skip-bad-images")
    assert not (artifact / "trained").exists()  # found before training started
    import shutil
    shutil.copytree(artifact, tmp_path / "copy")
    code, _, err = cli("train", tmp_path / "copy", "--data", corrupt, "--skip-bad-images")
    assert code == 0, err
    one_line_error(cli("train", artifact, "--data", tmp_path / "nowhere"), "no such directory")
    one_line_error(cli("train", artifact, "--data", "synthetic:lots"), "synthetic:N")


def test_idx_with_wrong_image_sizes(tmp_path, cli, artifact):
    folder = tmp_path / "idx"
    folder.mkdir()
    for prefix, n in (("train", 6), ("t10k", 2)):
        # header says 28x28 but the body holds 20x20 images
        body = np.zeros((n, 20, 20), np.uint8).tobytes()
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBB3I", 0, 8, 3, n, 28, 28) + body)
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBI", 0, 8, 1, n) + bytes([0, 1] * (n // 2)))
    one_line_error(cli("train", artifact, "--data", folder), "wrong image sizes")


def test_checkpoint_errors(tmp_path, cli, artifact):
    one_line_error(cli("train", artifact, "--data", "synthetic:8", "--resume"), "--resume", "no earlier training")
    assert cli("train", artifact, "--data", "synthetic:8")[0] == 0
    one_line_error(cli("train", artifact, "--data", "synthetic:8"), "trained before", "--restart")
    ckpt = artifact / "trained" / "checkpoint"
    good = ckpt.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x10  # loads, but is not what was saved
    ckpt.write_bytes(bytes(flipped))
    one_line_error(cli("eval", artifact, "--data", "synthetic:8"), "corrupt checkpoint")
    one_line_error(cli("train", artifact, "--data", "synthetic:8", "--epochs", 2, "--resume"), "corrupt checkpoint")
    one_line_error(cli("export", artifact, tmp_path / "m.onnx"), "corrupt checkpoint")
    assert ckpt.read_bytes() == bytes(flipped) and not (tmp_path / "m.onnx").exists()
    ckpt.write_bytes(good)
    state = artifact / "trained" / "state.json"
    state.write_text("{}")
    one_line_error(cli("train", artifact, "--data", "synthetic:8", "--epochs", 2, "--resume"), "corrupt training state")
    assert cli("train", artifact, "--data", "synthetic:8", "--restart")[0] == 0
    one_line_error(cli("memory", tmp_path), "not a tinytlc artifact directory")


def test_relative_output_directory(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("compile", f"{NETS}:tiny_net", "--method", "last", "--resolution", 16, "--out", "rel/art")
    assert code == 0, err
    assert (tmp_path / "rel" / "art" / "training_model.onnx").is_file()


@pytest.mark.parametrize("args,phrase", [
    (["compile", "m", "--method", "bias", "--out", "o", "--num-classes", "0"], "--num-classes: 0 is out of range"),
    (["compile", "m", "--method", "bias", "--out", "o", "--num-classes", "-3"], "--num-classes: -3 is out of range"),
    (["compile", "m", "--method", "bias", "--out", "o", "--num-classes", "1"], "--num-classes: 1 is out of range"),
    (["compile", "m", "--method", "bias", "--out", "o", "--lite-kernel", "0"], "--lite-kernel"),
    (["compile", "m", "--method", "bias", "--out", "o", "--lite-kernel", "4"], "must be odd"),
    (["compile", "m", "--method", "bias", "--out", "o", "--lite-expand", "0"], "--lite-expand"),
    (["compile", "m", "--method", "bias", "--out", "o", "--lite-downsample", "-1"], "--lite-downsample"),
    (["compile", "m", "--method", "bias", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["compile", "m", "--method", "bias", "--out", "o", "--resolution", "abc"], "not an integer"),
    (["train", "d", "--data", "x", "--lr", "-1"], "--lr: -1 is out of range"),
    (["train", "d", "--data", "x", "--lr", "1e6"], "--lr"),
    (["train", "d", "--data", "x", "--lr", "nan"], "--lr"),
    (["train", "d", "--data", "x", "--label-smoothing", "2"], "--label-smoothing"),
    (["train", "d", "--data", "x", "--epochs", "0"], "--epochs"),
    (["train", "d", "--data", "x", "--limit", "0"], "--limit"),
    (["train", "d", "--data", "x", "--batch-size", "0"], "--batch-size"),
    (["memory", "d", "--steps", "0"], "--steps"),
    (["train", "d", "--data", "x", "--seed", "-1"], "--seed: -1 is out of range"),
    (["eval", "d", "--data", "x", "--seed", "-1"], "--seed: -1 is out of range"),
    (["compile", "m", "--out", "o"], "required"),
    (["diff", "m", "--method", "bias", "--resolution", "4"], "--resolution: 4 is out of range (must be >= 8"),
    (["train", "d", "--data", "x", "--bogus"], "unrecognized arguments: --bogus (see tinytlc train --help)"),
])
def test_arguments_checked_up_front(cli, capsys, args, phrase):
    with pytest.raises(SystemExit) as exit_:
        cli(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and phrase in err[0], err


@pytest.mark.parametrize("args,phrase", [
    (["compile", "m", "--method", "bias", "--out", "o", "--num-classes", "0"], "out of range (must be >= 2)"),
    (["train", "d", "--data", "x", "--lr", "1e6"], "out of range (must be > 0 and <= 1)"),
])
def test_argument_errors_are_one_line(args, phrase):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "tinytlc", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinytlc: error: ") and phrase in lines[0], proc.stderr


def test_output_and_model_paths_users_get_wrong(tmp_path, cli, artifact):
    """--out a symbolic link (replacing it replaced the link, left a hidden .NAME.old link behind, and
    the next --force failed with shutil's message), --out inside an artifact, --passes "" (was every
    pass); an ONNX file named .ONNX or with no extension is an ONNX file, a directory named .onnx is
    said to be one."""
    import shutil
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    (tmp_path / "link").symlink_to(art)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    base = ("--method", "last", "--resolution", 16)
    for out in ("link", "dangling"):
        one_line_error(cli("compile", f"{NETS}:tiny_net", *base, "--out", tmp_path / out, "--force"),
                       f"--out {tmp_path / out}: a symbolic link")
    assert (tmp_path / "link").is_symlink() and not list(tmp_path.glob(".*"))
    one_line_error(cli("compile", f"{NETS}:tiny_net", *base, "--out", art / "trained" / "sub"), f"inside the artifact {art}")
    one_line_error(cli("compile", f"{NETS}:tiny_net", *base, "--out", tmp_path / "o", "--passes", ""), "--passes names no pass")
    from tinytlc.export import export_module
    import onnx
    from nets import tiny_net
    for name in ("UP.ONNX", "noext"):
        onnx.save(export_module(tiny_net(), 16), tmp_path / name)
        assert cli("compile", tmp_path / name, *base, "--num-classes", 3, "--out", tmp_path / f"o-{name}")[0] == 0
    (tmp_path / "dir.onnx").mkdir()
    one_line_error(cli("compile", tmp_path / "dir.onnx", *base, "--out", tmp_path / "o2"), "is a directory, not an ONNX file")


def test_model_function_that_raises(tmp_path, cli):
    src = tmp_path / "m.py"
    src.write_text("def build():\n    raise ValueError('no weights here')\n")
    one_line_error(cli("compile", f"{src}:build", "--method", "bias", "--out", tmp_path / "o"),
                   "raised ValueError: no weights here, at m.py:2")
    # a helper module the model file imports fails: the line says where, not just the model file
    (tmp_path / "helper.py").write_text("WIDTH = 8\nDEPTH = UNDEFINED_NAME\n")
    (tmp_path / "net.py").write_text("import helper\ndef build():\n    return None\n")
    one_line_error(cli("compile", f"{tmp_path / 'net.py'}:build", "--method", "bias", "--out", tmp_path / "o"),
                   "net.py: failed to import (NameError: name 'UNDEFINED_NAME' is not defined, at helper.py:2)")
    # its forward fails: where, in the model file
    (tmp_path / "fw.py").write_text("import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n"
                                    "        return x @ torch.ones(5, 5)\ndef build():\n    return Net()\n")
    one_line_error(cli("compile", f"{tmp_path / 'fw.py'}:build", "--method", "bias", "--resolution", 16,
                       "--out", tmp_path / "o"), "its forward fails on 3-channel 16 px images: RuntimeError")
    assert cli("compile", f"{tmp_path / 'fw.py'}:build", "--method", "bias", "--resolution", 16,
               "--out", tmp_path / "o")[2].strip().endswith(", at fw.py:4")


def test_out_is_working_directory(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    one_line_error(cli("compile", f"{NETS}:tiny_net", "--method", "bias", "--out", ".", "--force"), "working directory")
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_stale_temporary_folder_is_cleaned(tmp_path):
    from tinytlc.fsutil import atomic_path
    stale = tmp_path / ".out.tmp999999999.abc"  # no such process
    stale.mkdir()
    (stale / "big").write_bytes(b"0" * 100)
    with atomic_path(tmp_path / "out", is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
    assert not stale.exists() and (tmp_path / "out").is_dir()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from tinytlc.data import to_rgb8
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 .. 63000 of 65535
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
        rgb = to_rgb8(im)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb[..., 0], ramp / 65535 * 255, atol=0.6)
    assert (rgb == 255).mean() < 0.05


def test_fuzzed_files_give_one_line_and_stay_untouched(tmp_path, cli, artifact):
    """Bytes flipped in a model file, a checkpoint and an image: one line, exit 2, inputs unchanged."""
    rng = np.random.default_rng(0)

    def flip(path, count=16):
        data = bytearray(path.read_bytes())
        for i in rng.integers(0, len(data), count):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
        return path.read_bytes()

    model = tmp_path / "m.onnx"
    from tinytlc.export import export_module
    import onnx
    onnx.save(export_module(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                                torch.nn.Linear(4 * 14 * 14, 2)).eval(), 16), model)
    for attempt in range(3):
        before = flip(model)
        code, out, err = cli("compile", model, "--method", "bias", "--resolution", 16, "--out", tmp_path / f"o{attempt}")
        if code != 0:
            one_line_error((code, out, err))
        assert model.read_bytes() == before
    art = tmp_path / "art"
    import shutil
    shutil.copytree(artifact, art)
    shutil.rmtree(art / "trained", ignore_errors=True)
    before = flip(art / "checkpoint")
    one_line_error(cli("eval", art, "--data", "synthetic:8"), "corrupt checkpoint")
    assert (art / "checkpoint").read_bytes() == before
    images = tmp_path / "imgs"
    write_images(images, ["a", "b"])
    before = flip(images / "a" / "1.png", 40)
    one_line_error(cli("train", art, "--data", images), "1.png", "cannot read image")
    assert (images / "a" / "1.png").read_bytes() == before


def test_export_targets(tmp_path, cli, artifact):
    before = (artifact / "eval_model.onnx").read_bytes()
    one_line_error(cli("export", artifact, artifact / "eval_model.onnx"), "inside the artifact")
    one_line_error(cli("export", artifact, artifact / "trained" / "x.onnx"), "inside the artifact")
    assert (artifact / "eval_model.onnx").read_bytes() == before
    one_line_error(cli("export", artifact, tmp_path), "is a directory")
    theirs = tmp_path / "theirs.onnx"
    theirs.write_text("someone's notes")
    one_line_error(cli("export", artifact, theirs), "not exported by tinytlc")
    assert theirs.read_text() == "someone's notes"
    one_line_error(cli("export", artifact, tmp_path / "no" / "dir" / "m.onnx"), "no such directory")
    ours = tmp_path / "ours.onnx"
    assert cli("export", artifact, ours)[0] == 0
    assert cli("export", artifact, ours)[0] == 0  # a model tinytlc exported may be replaced


def test_python_api_names_stay_functions():
    """`tinytlc.analyze` and `tinytlc.diff` are functions however often they are used (their modules
    are named otherwise, so importing them cannot rebind the names)."""
    import importlib

    import tinytlc
    for _ in range(2):
        assert callable(tinytlc.analyze) and callable(tinytlc.diff)
        importlib.import_module("tinytlc.accounting")
        importlib.import_module("tinytlc.pass_diff")
    assert tinytlc.analyze.__name__ == "analyze" and tinytlc.diff.__name__ == "diff"


def test_lite_groups_must_divide_block_widths(tmp_path, cli):
    one_line_error(cli("compile", f"{NETS}:lite_net", "--method", "lite", "--resolution", 16, "--lite-groups", 3,
                       "--out", tmp_path / "o"), "--lite-groups 3 does not divide the width")
    assert not (tmp_path / "o").exists()


def test_output_folder_that_cannot_be_made(tmp_path, cli):
    """The file system says no (here: a file where a parent folder should be): one line, exit 2."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    one_line_error(cli("compile", f"{NETS}:tiny_net", "--method", "bias", "--resolution", 16,
                       "--out", blocker / "art"), "blocker")
    assert blocker.read_text() == "a file"


def test_artifact_from_a_cpu_with_other_nchwc_blocks(tmp_path, cli):
    """nchwc-conv writes filters in the compiling CPU's block layout: on a CPU with another block,
    every command that opens a session says so in one line (and trains nothing). An artifact the
    NCHWc passes left unchanged (bias-only training: no trained depthwise conv) records no block."""
    import json
    import shutil

    from tinytlc.passes.training.nchwc_conv import block_size
    art = tmp_path / "art"
    assert cli("compile", f"{NETS}:wide_lite_net", "--method", "full", "--resolution", 16, "--out", art)[0] == 0
    assert cli("compile", f"{NETS}:wide_lite_net", "--method", "bias", "--resolution", 16,
               "--out", tmp_path / "bias")[0] == 0
    assert "nchwc_block" not in json.loads((tmp_path / "bias" / "tinytlc.json").read_text())
    manifest = json.loads((art / "tinytlc.json").read_text())
    assert manifest["nchwc_block"] == block_size()
    other = tmp_path / "other"
    shutil.copytree(art, other)
    manifest["nchwc_block"] = 24 - block_size()  # 8 <-> 16
    (other / "tinytlc.json").write_text(json.dumps(manifest))
    for args in (("train", other, "--data", "synthetic:8"), ("eval", other, "--data", "synthetic:8"),
                 ("memory", other), ("export", other, tmp_path / "m.onnx")):
        one_line_error(cli(*args), "NCHWc convs take blocks of", "compile it again")
    assert not (other / "trained").exists() and not (tmp_path / "m.onnx").exists()


def test_force_replaces_only_what_tinytlc_wrote(tmp_path, cli, artifact):
    """--force replaces an artifact only when it holds nothing but tinytlc's files; a user's file inside
    it (or inside trained/) is named and kept."""
    import shutil
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    (art / "NOTES.txt").write_text("mine")
    (art / "trained").mkdir(exist_ok=True)
    (art / "trained" / "photo.jpg").write_text("mine")
    compile_ = ("compile", f"{NETS}:tiny_net", "--method", "last", "--resolution", 16, "--out", art, "--force")
    one_line_error(cli(*compile_), "NOTES.txt", "trained/photo.jpg", "did not write")
    assert (art / "NOTES.txt").read_text() == "mine" and (art / "trained" / "photo.jpg").read_text() == "mine"
    (art / "NOTES.txt").unlink()
    (art / "trained" / "photo.jpg").unlink()
    code, _, err = cli(*compile_)
    assert code == 0 and "replaced" in err and "and the trained run it held" in err
    assert json.loads((art / "tinytlc.json").read_text())["method"] == "last"
    assert not list(tmp_path.glob(".art*"))


def test_a_users_dot_old_directory_is_never_touched(tmp_path, cli):
    """.NAME.old is where a replaced directory waits; a user's own folder of that name is left alone."""
    mine = tmp_path / ".art.old"
    mine.mkdir()
    (mine / "precious.txt").write_text("x")
    compile_ = ("compile", f"{NETS}:tiny_net", "--method", "bias", "--resolution", 16, "--out", tmp_path / "art")
    assert cli(*compile_)[0] == 0
    assert (tmp_path / "art" / "tinytlc.json").is_file() and not (tmp_path / "art" / "precious.txt").exists()
    one_line_error(cli(*compile_, "--force"), ".art.old", "in the way")
    assert (mine / "precious.txt").read_text() == "x" and (tmp_path / "art" / "tinytlc.json").is_file()


def test_artifact_directories_follow_the_umask(tmp_path, cli, artifact):
    import os
    import stat
    assert stat.S_IMODE(os.stat(artifact).st_mode) == 0o777 & ~_umask()
    shutil_copy = tmp_path / "a"
    import shutil
    shutil.copytree(artifact, shutil_copy)
    shutil.rmtree(shutil_copy / "trained", ignore_errors=True)
    assert cli("train", shutil_copy, "--data", "synthetic:8")[0] == 0
    assert stat.S_IMODE(os.stat(shutil_copy / "trained").st_mode) == 0o777 & ~_umask()


def _umask():
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_kill_between_the_renames_is_recovered_by_eval_and_export(tmp_path, cli, artifact):
    """A train killed between its two renames leaves its run as .trained.old (marked as tinytlc's):
    eval and export put it back, as train does, rather than use the untrained weights."""
    import shutil

    from tinytlc.fsutil import OLD_MARK
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    shutil.rmtree(art / "trained", ignore_errors=True)
    assert cli("train", art, "--data", "synthetic:8")[0] == 0
    for args in (("eval", art, "--data", "synthetic:8"), ("export", art, tmp_path / "m.onnx")):
        (art / "trained" / OLD_MARK).touch()
        (art / "trained").rename(art / ".trained.old")
        code, _, err = cli(*args)
        assert code == 0 and "has not been trained" not in err, err
        assert (art / "trained" / "checkpoint").is_file() and not (art / ".trained.old").exists()
        assert not (art / "trained" / OLD_MARK).exists()


def test_run_mistakes_are_found_before_the_data_is_read(tmp_path, cli, artifact, monkeypatch):
    """--resume/--restart mistakes and an artifact train cannot write to: said before a long scan."""
    import shutil
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    shutil.rmtree(art / "trained", ignore_errors=True)
    missing = tmp_path / "nowhere"
    one_line_error(cli("train", art, "--data", missing, "--resume", "--restart"), "choose one")
    one_line_error(cli("train", art, "--data", missing, "--resume"), "no earlier training")
    import tinytlc.runtime.train as train_module
    monkeypatch.setattr(train_module.os, "access", lambda path, mode: False)  # (root may write anywhere)
    one_line_error(cli("train", art, "--data", missing), f"{art}: not writable")


@pytest.mark.parametrize("text,phrase", [
    ("{}", "'model' is missing"), ("[]", "a JSON list, not an object"), ('"x"', "a JSON str"),
    (None, "'num_classes' is missing or not a JSON integer"), (b"\xff\xfe{", "corrupt manifest")])
def test_manifest_of_the_wrong_shape(tmp_path, cli, artifact, text, phrase):
    import shutil
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    mf = art / "tinytlc.json"
    if text is None:
        text = mf.read_text().replace('"num_classes": 4', '"num_classes": "4"')
    mf.write_bytes(text if isinstance(text, bytes) else text.encode())
    for args in (("train", art, "--data", "synthetic:8"), ("eval", art, "--data", "synthetic:8"), ("memory", art),
                 ("export", art, tmp_path / "m.onnx")):
        one_line_error(cli(*args), "tinytlc.json: corrupt manifest", phrase)


def test_trained_run_of_another_artifact_is_refused(tmp_path, cli, artifact):
    import shutil
    other = tmp_path / "other"
    assert cli("compile", f"{NETS}:tiny_net", "--method", "last", "--resolution", 16, "--out", other)[0] == 0
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    shutil.rmtree(art / "trained", ignore_errors=True)
    assert cli("train", art, "--data", "synthetic:8")[0] == 0
    shutil.copytree(art / "trained", other / "trained")
    for args in (("eval", other, "--data", "synthetic:8"), ("export", other, tmp_path / "m.onnx"),
                 ("train", other, "--data", "synthetic:8", "--epochs", 2, "--resume")):
        one_line_error(cli(*args), "trained from another artifact", "--restart")
    assert not (tmp_path / "m.onnx").exists()
    assert cli("train", other, "--data", "synthetic:8", "--restart")[0] == 0


def test_misleading_messages(tmp_path, cli, artifact):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(cli("export", artifact, afile / "m.onnx"), "afile: is a file, not a directory")
    one_line_error(cli("compile", f"{NETS}:tiny_net", "--method", "bias", "--out", afile / "art"),
                   "afile is a file, not a directory")
    one_line_error(cli("train", artifact, "--data", "synthetic:99999999999999", "--restart"),
                   "need 2 to 10,000,000 images")
    one_line_error(cli("eval", tmp_path / "nonexistent", "--data", "synthetic:8"), "nonexistent: no such directory")
    assert afile.read_text() == "x"


def test_damaged_frozen_weights_are_called_corrupt(tmp_path, cli, artifact):
    """Flipped bytes in a model file load and train, then diverge: compile records every model's SHA-256."""
    import shutil
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    shutil.rmtree(art / "trained", ignore_errors=True)
    name = "training_model.onnx.data" if (art / "training_model.onnx.data").exists() else "training_model.onnx"
    data = bytearray((art / name).read_bytes())
    data[-8] ^= 0x40
    (art / name).write_bytes(bytes(data))
    for args in (("train", art, "--data", "synthetic:8"), ("eval", art, "--data", "synthetic:8")):
        one_line_error(cli(*args), name, "corrupt", "compile again")
    assert not (art / "trained").exists()


def test_one_train_at_a_time(tmp_path, cli, artifact):
    """A second train on an artifact being trained stops at once (it would replace the first's run),
    before it says it trains."""
    import shutil

    from tinytlc.fsutil import locked
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    shutil.rmtree(art / "trained", ignore_errors=True)
    with locked(art, "train"):  # as another process's train holds it
        refused = cli("train", art, "--data", "synthetic:8")
        one_line_error(refused, "another tinytlc train is running")
        assert refused[1] == ""
    assert not (art / "trained").exists()
    code, out, _ = cli("train", art, "--data", "synthetic:8")
    assert code == 0 and out.startswith("training ")


def test_compile_force_does_not_replace_an_artifact_being_trained(tmp_path, cli, artifact):
    """compile --force swapped the directory under a running train, which then wrote its run into
    the new artifact: a train's lock now stops it, and the artifact is left as it was."""
    import shutil

    from tinytlc.fsutil import locked
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    before = {p.name: p.read_bytes() for p in art.iterdir() if p.is_file()}
    args = ("compile", f"{NETS}:tiny_net", "--method", "last", "--resolution", 16, "--out", art, "--force")
    with locked(art, "train"):  # as another process's train holds it
        one_line_error(cli(*args), "a tinytlc train is running on it")
    assert {p.name: p.read_bytes() for p in art.iterdir() if p.is_file()} == before
    assert cli(*args)[0] == 0


def test_resume_with_other_settings_is_said_and_unwritable_out_up_front(tmp_path, cli, artifact, monkeypatch):
    import shutil
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    shutil.rmtree(art / "trained", ignore_errors=True)
    assert cli("train", art, "--data", "synthetic:8", "--lr", "0.01")[0] == 0
    code, out, _ = cli("train", art, "--data", "synthetic:8", "--lr", "0.02", "--epochs", 2, "--resume")
    assert code == 0 and "--resume with other settings than the earlier run: lr 0.01 -> 0.02" in out
    import tinytlc.pipeline
    monkeypatch.setattr(tinytlc.pipeline.os, "access", lambda path, mode: False)  # (root may write anywhere)
    one_line_error(cli("compile", f"{NETS}:tiny_net", "--method", "bias", "--out", tmp_path / "new"),
                   f"{tmp_path} is not writable")
    assert not list(tmp_path.glob(".new*"))
