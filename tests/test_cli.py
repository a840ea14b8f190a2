"""End to end through the `tinytlc` command: compile, train, resume, eval, export, memory."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import NETS

from tinytlc.data import Preprocess, load_data
from tinytlc.pipeline import load_artifact
from tinytlc.runtime.session import open_session

RES = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tiny_net compiled for `full` and trained 2 epochs on separable synthetic data."""
    from tinytlc.cli import main
    d = tmp_path_factory.mktemp("art") / "tiny"
    assert main(["compile", f"{NETS}:tiny_net", "--method", "full", "--num-classes", "4", "--resolution", str(RES),
                 "--batch-size", "16", "--out", str(d)]) == 0
    assert main(["train", str(d), "--data", "synthetic:240", "--epochs", "1", "--lr", "0.01"]) == 0
    return d


def test_train_reaches_high_accuracy_and_resumes(trained, cli):
    code, out, _ = cli("train", trained, "--data", "synthetic:240", "--epochs", "6", "--lr", "0.01", "--resume", "--json")
    assert code == 0, out
    record = json.loads(out)
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4, 5, 6]  # epoch 1 from the first run, kept
    assert record["history"][-1]["test_accuracy"] > 0.9
    assert record["history"][-1]["train_loss"] < record["history"][0]["train_loss"]

    code, out, _ = cli("eval", trained, "--data", "synthetic:240", "--json")
    assert code == 0
    assert json.loads(out)["accuracy"] == pytest.approx(record["history"][-1]["test_accuracy"])


def test_export_round_trip_matches_eval_model(trained, cli, tmp_path):
    out = tmp_path / "model.onnx"
    code, _, err = cli("export", trained, out)
    assert code == 0, err
    art = load_artifact(trained)
    data = load_data("synthetic:240", 4)
    pre = Preprocess.from_manifest(art.manifest)
    x = pre([data.test.load(i) for i in range(8)])
    sess = open_session(art.path, art.manifest, with_optimizer=False)
    sess.module.eval()
    _, expected = sess.eval_step(x, data.test.labels[:8])
    inference = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in inference.get_inputs()] == ["input"]
    got = inference.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # trained weights, not the compiled ones
    fresh = open_session(art.path, art.manifest, art.path / "checkpoint", with_optimizer=False)
    fresh.module.eval()
    assert not np.allclose(fresh.eval_step(x, data.test.labels[:8])[1], got, atol=1e-3)
    # what its input must be, for whoever deploys it without the artifact: the same x from the images
    import onnx
    note = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["preprocess"])
    import torch
    import torch.nn.functional as F
    images = torch.from_numpy(np.stack([data.test.load(i) for i in range(8)]).transpose(0, 3, 1, 2) / 255)
    assert (note["layout"], note["dtype"], note["channels"]) == ("NCHW", "float32", 3) and "bilinear" in note["resize"]
    resized = F.interpolate(images.float(), size=(note["resolution"],) * 2, mode="bilinear", antialias=True).numpy()
    mean, std = np.array(note["mean"])[:, None, None], np.array(note["std"])[:, None, None]
    np.testing.assert_allclose((resized - mean) / std, x, atol=1e-4)


def test_memory_json_and_methods_ordering(tmp_path, cli):
    """Measured in subprocesses: classifier-only training needs less than full fine-tuning."""
    figures = {}
    for method in ("full", "last"):
        d = tmp_path / method
        assert cli("compile", f"{NETS}:small_net", "--method", method, "--resolution", 32, "--out", d)[0] == 0
        code, out, err = cli("memory", d, "--steps", 2, "--warmup", 1, "--json")
        assert code == 0, err
        figures[method] = json.loads(out)
    for r in figures.values():
        assert {"param_bytes", "step_peak_bytes", "total_bytes", "step_seconds"} <= set(r)
        assert r["step_peak_bytes"] > 0 and r["step_seconds"] > 0
        assert r["total_bytes"] == r["param_bytes"] + r["step_peak_bytes"]
    assert figures["last"]["step_peak_bytes"] < figures["full"]["step_peak_bytes"]
    assert figures["last"]["param_bytes"] < figures["full"]["param_bytes"]
    code, out, _ = cli("memory", tmp_path / "last", "--steps", 1, "--warmup", 0)
    assert code == 0 and "training step peak" in out


def test_python_api_mirrors_the_cli(tmp_path):
    import tinytlc
    art = tinytlc.compile_model(f"{NETS}:tiny_net", "bias", tmp_path / "a", resolution=RES, batch_size=4)
    data = tinytlc.load_data("synthetic:8", art.manifest["num_classes"])
    record = tinytlc.train(art.path, art.manifest, data, tinytlc.TrainConfig(epochs=1, batch_size=4), log=lambda s: None)
    assert record["epoch"] == 1
    assert tinytlc.export_inference(art.path, art.manifest, tmp_path / "m.onnx")["max_abs_diff"] < 1e-4


def _colour_folders(root, colours, n=6):
    from PIL import Image
    rng = np.random.default_rng(0)
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = np.clip(np.array(rgb)[None, None] + rng.normal(0, 20, (RES, RES, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")


def test_class_names_are_recorded_and_followed(tmp_path, cli):
    """train records the class names in label order (state.json, exported model); eval and --resume
    label a folder by name, so one lacking a class is not scored against shifted labels."""
    import onnx
    colours = {"a_red": (220, 30, 30), "b_green": (30, 220, 30), "c_blue": (30, 30, 220)}
    _colour_folders(tmp_path / "all", colours)
    _colour_folders(tmp_path / "nored", {k: v for k, v in colours.items() if k != "a_red"})
    _colour_folders(tmp_path / "other", {"a_red": colours["a_red"], "x_grey": (128, 128, 128)})
    art = tmp_path / "art"
    assert cli("compile", f"{NETS}:tiny_net", "--method", "full", "--resolution", RES, "--batch-size", 6,
               "--out", art)[0] == 0
    assert cli("train", art, "--data", tmp_path / "all", "--epochs", 6, "--lr", "0.02")[0] == 0
    state = json.loads((art / "trained" / "state.json").read_text())
    assert state["classes"] == list(colours)
    full = json.loads(cli("eval", art, "--data", tmp_path / "all", "--json")[1])["accuracy"]
    code, out, err = cli("eval", art, "--data", tmp_path / "nored", "--json")
    assert code == 0 and "no class folder for a_red" in err
    assert full > 0.5 and json.loads(out)["accuracy"] >= full - 0.01  # not shifted to 0%
    code, _, err = cli("eval", art, "--data", tmp_path / "other")
    assert code == 2 and "x_grey are not among the 3 the model was trained on" in err
    code, _, err = cli("train", art, "--data", tmp_path / "other", "--epochs", 7, "--resume")
    assert code == 2 and "x_grey" in err
    assert cli("export", art, tmp_path / "m.onnx")[0] == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["classes"]) == list(colours)


def test_no_held_out_images(tmp_path, cli):
    _colour_folders(tmp_path / "one", {"a": (200, 0, 0), "b": (0, 200, 0)}, n=1)
    art = tmp_path / "art"
    assert cli("compile", f"{NETS}:tiny_net", "--method", "bias", "--resolution", RES, "--out", art)[0] == 0
    code, out, err = cli("train", art, "--data", tmp_path / "one")
    assert code == 0 and "no held-out images" in out and "0.00%" not in out, (out, err)
    code, _, err = cli("eval", art, "--data", tmp_path / "one")
    assert code == 2 and "no held-out images to evaluate" in err


def test_bench_arguments_and_outputs_are_checked_up_front(tmp_path, cli, capsys):
    """`tinytlc bench` keeps the CLI's contract: one-line errors, range checks, and never a user's file
    replaced (checked before hours of runs)."""
    import shutil
    for args, phrase in ((["--methdos", "bias"], "unrecognized arguments"), (["--epochs", "-1"], "--epochs"),
                         (["--resolution", "abc"], "not an integer"), (["--train-images", "-5"], "--train-images")):
        with pytest.raises(SystemExit) as exit_:
            cli("bench", *args)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and phrase in err[0], err
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "benchmark.md").write_text("MY OWN notes")
    (mine / "benchmark.json").write_text('{"mine": 1}')
    code, _, err = cli("bench", "--out", mine, "--data", "synthetic:40")
    assert code == 2 and "benchmark.json, benchmark.md exist and were not written by tinytlc bench" in err, err
    assert (mine / "benchmark.md").read_text() == "MY OWN notes"
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = cli("bench", "--out", afile)
    assert code == 2 and "a file is there" in err
    from tinytlc.transfer_bench import OUTPUTS, check_out
    ours = tmp_path / "ours"
    ours.mkdir()
    repo_results = Path(__file__).parent.parent / "results"
    for name in OUTPUTS:
        if (repo_results / name).exists():
            shutil.copy(repo_results / name, ours / name)
    check_out(ours)  # an earlier bench's output may be replaced


def test_ctrl_c_while_starting_is_one_line(cli, monkeypatch):
    """The command's module imports nothing heavy (Ctrl-C during torch's import would be a traceback
    outside main), and an interrupt anywhere in main is one line."""
    import subprocess
    import sys
    probe = "import sys, tinytlc.cli; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"
    import tinytlc.cli

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(tinytlc.cli, "parser", interrupted)
    code, _, err = cli("train", "x", "--data", "y")
    assert code == 130 and err.strip() == "tinytlc: interrupted"

    def terminated():  # SIGTERM's handler, as the signal would call it
        import signal
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    monkeypatch.setattr(tinytlc.cli, "parser", terminated)
    code, _, err = cli("train", "x", "--data", "y")
    assert code == 143 and err.strip() == "tinytlc: terminated"


def test_export_keeps_the_files_metadata(tmp_path, cli):
    """The user's file's metadata (author, licence) survives train and export beside the class
    names; tinytlc's own keys (tinytlc.exported_batch of a fixed-batch file) do not leak into it."""
    import onnx
    import torch
    from nets import tiny_net
    path = tmp_path / "m.onnx"
    torch.onnx.export(tiny_net().eval(), (torch.zeros(1, 3, RES, RES),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"])  # fixed batch 1
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"author": "me", "license": "MIT"})
    onnx.save(model, str(path))
    assert cli("compile", path, "--method", "last", "--num-classes", 4, "--resolution", RES, "--batch-size", 8,
               "--out", tmp_path / "a")[0] == 0
    assert cli("train", tmp_path / "a", "--data", "synthetic:16", "--epochs", 1)[0] == 0
    assert cli("export", tmp_path / "a", tmp_path / "out.onnx")[0] == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "out.onnx")).metadata_props}
    assert props.keys() == {"author", "license", "classes", "preprocess"} and props["author"] == "me"


def test_passes_and_no_passes_together_are_refused(cli, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli("compile", f"{NETS}:tiny_net", "--method", "bias", "--passes", "frozen-conv", "--no-passes",
            "--out", tmp_path / "o")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--no-passes: not allowed with argument --passes" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_eval_and_resume_hold_out_the_split_training_held_out(tmp_path, cli):
    """train records its --seed: eval (without --seed) scores the images that run held out, and
    --resume goes on with its split; before, both took seed 0 and counted training images as held out."""
    _colour_folders(tmp_path / "data", {"a": (220, 30, 30), "b": (30, 220, 30), "c": (30, 30, 220)}, n=20)
    art = tmp_path / "art"
    assert cli("compile", f"{NETS}:tiny_net", "--method", "last", "--resolution", RES, "--batch-size", 4,
               "--out", art)[0] == 0
    assert cli("train", art, "--data", tmp_path / "data", "--seed", 5)[0] == 0
    assert json.loads((art / "trained" / "state.json").read_text())["seed"] == 5

    def loss(*seed):
        return json.loads(cli("eval", art, "--data", tmp_path / "data", "--json", *seed)[1])["loss"]
    assert loss() == loss("--seed", 5) != loss("--seed", 0)
    code, out, err = cli("train", art, "--data", tmp_path / "data", "--epochs", 2, "--resume")
    assert code == 0 and "(seed 5)" in out, out
    assert json.loads((art / "trained" / "state.json").read_text())["seed"] == 5


def test_an_incomplete_training_run_is_said_not_taken_for_none(tmp_path, cli):
    """A trained/ holding its state but not its checkpoint (or the other way) was read as untrained
    (eval and export used the initial weights) or trained without the check state.json gives."""
    import shutil
    _colour_folders(tmp_path / "data", {"a": (220, 30, 30), "b": (30, 220, 30)})
    art = tmp_path / "art"
    assert cli("compile", f"{NETS}:tiny_net", "--method", "last", "--num-classes", 2, "--resolution", RES,
               "--batch-size", 4, "--out", art)[0] == 0
    assert cli("train", art, "--data", tmp_path / "data")[0] == 0
    for missing in ("checkpoint", "state.json"):
        broken = tmp_path / f"no-{missing}"
        shutil.copytree(art, broken)
        (broken / "trained" / missing).unlink()
        for args in (("eval", broken, "--data", tmp_path / "data"), ("export", broken, tmp_path / f"{missing}.onnx"),
                     ("train", broken, "--data", tmp_path / "data", "--epochs", 2, "--resume")):
            code, _, err = cli(*args)
            assert code == 2 and f"an incomplete training run (its {missing} is missing)" in err, (args, err)
        assert not (tmp_path / f"{missing}.onnx").exists()
        assert cli("train", broken, "--data", tmp_path / "data", "--restart")[0] == 0


def test_eval_scores_every_image_of_a_folder_it_did_not_train_on(tmp_path, cli):
    """A separate test set laid out <class>/<image> had a random tenth of it scored, and a folder
    holding only test/ was read as one class. Every image of a folder other than the one trained on
    is scored now, and a lone test/ folder is held-out images; the training folder's held-out split
    is scored as before. Before training, no image was trained on: all are scored. A trained model
    scores a folder of one of its classes (a warning names the others); training needs two."""
    colours = {"a": (220, 30, 30), "b": (30, 220, 30), "c": (30, 30, 220)}
    _colour_folders(tmp_path / "data", colours, n=10)
    _colour_folders(tmp_path / "other", colours, n=4)
    _colour_folders(tmp_path / "only" / "test", colours, n=2)
    _colour_folders(tmp_path / "just_b", {"b": colours["b"]}, n=4)
    _colour_folders(tmp_path / "just_b_test" / "test", {"b": colours["b"]}, n=2)
    art = tmp_path / "art"
    assert cli("compile", f"{NETS}:tiny_net", "--method", "last", "--resolution", RES, "--batch-size", 4,
               "--out", art)[0] == 0

    def scored(folder):
        code, out, err = cli("eval", art, "--data", folder, "--json")
        assert code == 0, err
        result = json.loads(out)
        return result["scored"], result["images"]
    assert scored(tmp_path / "data") == ("all", 30)
    code, _, err = cli("eval", art, "--data", tmp_path / "just_b")
    assert code == 2 and "only 1 class found" in err  # (no class names to label one folder by)
    assert cli("train", art, "--data", tmp_path / "data")[0] == 0
    assert scored(tmp_path / "data") == ("held-out", 3)
    assert scored(tmp_path / "other") == ("all", 12)
    assert scored(tmp_path / "only") == ("held-out", 6)
    assert scored(tmp_path / "just_b") == ("all", 4)
    assert scored(tmp_path / "just_b_test") == ("held-out", 2)
    code, _, err = cli("eval", art, "--data", tmp_path / "just_b")
    assert code == 0 and "no class folder for a, c" in err
    code, _, err = cli("train", art, "--data", tmp_path / "only", "--restart")
    assert code == 2 and "no training images" in err
    for resumed in (["--restart"], ["--resume", "--epochs", "2"]):
        code, _, err = cli("train", art, "--data", tmp_path / "just_b", *resumed)
        assert code == 2 and "only 1 class found; need at least 2 class folders" in err, err
