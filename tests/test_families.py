"""The common model families (tests/families.py: torchvision's building blocks, tiny): every method
compiles; one step's gradients equal PyTorch autograd (full: every parameter) and ORT's own graph
(every method, passes on); lite modules go beside every block but the first; bias and lite+bias
train and export; and the two export routes users take (TorchScript with their own input name,
dynamo at opset 18) train as .onnx files."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TESTS
from test_gradients import ort_step

import families
from tinytlc.methods import METHODS
from tinytlc.pipeline import compile_model
from tinytlc.runtime.inference import export_inference
from tinytlc.runtime.train import TrainConfig, train
from tinytlc.data import load_data

FAMILIES = families.FAMILIES
NORMS = (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.InstanceNorm2d)
SOURCE = str(TESTS / "families.py")
RES, BATCH, CLASSES = 32, 2, 3


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, 3, RES, RES), dtype=np.float32), rng.integers(0, CLASSES, BATCH)


def torch_full_grads(name: str, x, y, head_weight, head_bias):
    """PyTorch autograd of the same network with the same new classifier head; also the names of its
    norms' parameters."""
    model = getattr(families, name)()
    norms = {f"{m}.{p}" for m, module in model.named_modules() if isinstance(module, NORMS)
             for p, _ in module.named_parameters(recurse=False)}
    head = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    with torch.no_grad():
        head.weight.data = torch.from_numpy(head_weight.reshape((CLASSES,) + tuple(head.weight.shape[1:])).copy())
        head.bias.data = torch.from_numpy(head_bias.copy())
        head.out_features = CLASSES
    logits = model(torch.from_numpy(x))
    loss = F.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    return float(loss), logits.detach().numpy(), {n: p.grad.numpy() for n, p in model.named_parameters()}, norms


@pytest.mark.parametrize("name", FAMILIES)
def test_family_all_methods_exact(tmp_path, name):
    x, y = batch()
    reference_logits = None
    for method in METHODS:
        plain = compile_model(f"{SOURCE}:{name}", method, tmp_path / f"{method}-plain", num_classes=CLASSES,
                              resolution=RES, batch_size=BATCH, passes=[])
        lean = compile_model(f"{SOURCE}:{name}", method, tmp_path / f"{method}-lean", num_classes=CLASSES,
                             resolution=RES, batch_size=BATCH)
        loss_p, logits_p, grads_p = ort_step(plain, x, y, 0.0)
        loss_l, logits_l, grads_l = ort_step(lean, x, y, 0.0)
        np.testing.assert_allclose(logits_l, logits_p, rtol=1e-5, atol=1e-6, err_msg=f"{name} {method}")
        reference_logits = logits_p if reference_logits is None else reference_logits
        # every method starts from the same function (lite modules output zeros at first)
        np.testing.assert_allclose(logits_p, reference_logits, rtol=1e-4, atol=1e-5, err_msg=f"{name} {method}")
        assert grads_l.keys() == grads_p.keys() and grads_p
        for param in grads_p:
            np.testing.assert_allclose(grads_l[param], grads_p[param], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{name} {method}: {param}, passes vs ORT's own graph")
        if method in ("full", "norm+last"):  # every parameter, or every norm's: PyTorch's names and gradients
            head_w, head_b = _head(plain)
            loss_t, logits_t, grads_t, norms = torch_full_grads(name, x, y, head_w, head_b)
            np.testing.assert_allclose(loss_p, loss_t, rtol=1e-5)
            np.testing.assert_allclose(logits_p, logits_t, rtol=1e-4, atol=1e-5)
            expected = set(grads_t) if method == "full" else norms | _head_names(plain)
            assert set(grads_p) == expected, f"{name} {method}: {set(grads_p) ^ expected}"
            for param in expected & set(grads_t):
                np.testing.assert_allclose(grads_p[param].reshape(grads_t[param].shape), grads_t[param],
                                           rtol=2e-3, atol=2e-5, err_msg=f"{name} {method}: {param} vs torch")
        if method == "full":  # the inference graph computes what PyTorch does (ORT's optimisations on)
            exported = export_inference(lean.path, lean.manifest, tmp_path / "full.onnx")
            assert exported["max_abs_diff"] < 1e-4
            import onnxruntime as ort
            session = ort.InferenceSession(str(tmp_path / "full.onnx"), providers=["CPUExecutionProvider"])
            np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], logits_t,
                                       rtol=1e-4, atol=1e-5, err_msg=f"{name}: exported model vs torch")
        if method.startswith("lite"):
            m = lean.manifest
            assert m["lite_modules"], f"{name}: no lite modules ({m['lite_skipped']})"
            assert len(m["lite_modules"]) == m["lite_blocks"] - 1, m["lite_skipped"]


def _initializers(art):
    import onnx
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(art.path / "forward_model.onnx").graph.initializer}


def _head_names(art) -> set[str]:
    import onnx_ir as ir

    from tinytlc.passes.forward import find_classifier
    _, w, b, _ = find_classifier(ir.load(art.path / "forward_model.onnx").graph)
    return {w.name, b.name}


def _head(art):
    """The new classifier's weight as (classes, in) and its bias, from the compiled forward model."""
    import onnx_ir as ir

    from tinytlc.passes.forward import find_classifier
    weights = _initializers(art)
    _, w, b, out_by_in = find_classifier(ir.load(art.path / "forward_model.onnx").graph)
    wv = weights[w.name]
    return (wv.reshape(wv.shape[0], -1) if out_by_in else wv.T), weights[b.name]


@pytest.mark.parametrize("name", FAMILIES)
def test_family_trains_and_exports(tmp_path, name):
    data = load_data("synthetic:8", CLASSES, seed=0)
    for method in ("bias", "lite+bias"):
        art = compile_model(f"{SOURCE}:{name}", method, tmp_path / method, num_classes=CLASSES, resolution=RES,
                            batch_size=BATCH)
        record = train(art.path, art.manifest, data, TrainConfig(epochs=1, batch_size=BATCH, lr=1e-3),
                       log=lambda s: None)
        assert record["epoch"] == 1 and np.isfinite(record["history"][0]["train_loss"])
        result = export_inference(art.path, art.manifest, tmp_path / f"{method}.onnx")  # checked against eval
        assert result["max_abs_diff"] < 1e-4


def _torchscript_file(tmp_path, name):
    path = tmp_path / f"{name}.onnx"
    model = getattr(families, name)()
    torch.onnx.export(model, (torch.zeros(1, 3, RES, RES),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["scores"],
                      dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}})
    return path


def _dynamo_file(tmp_path, name):
    path = tmp_path / f"{name}_dynamo.onnx"
    model = getattr(families, name)()
    torch.onnx.export(model, (torch.zeros(2, 3, RES, RES),), str(path), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=18, optimize=True,
                      external_data=True)
    return path


@pytest.mark.parametrize("route", ["torchscript", "dynamo"])
def test_foreign_onnx_file_trains(tmp_path, cli, capsys, route):
    name = "mobilenetv3"
    path = (_torchscript_file if route == "torchscript" else _dynamo_file)(tmp_path, name)
    capsys.readouterr()  # what the exporter printed
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == (17 if route == "torchscript" else 18)
    for method in ("bias", "lite+bias"):
        out = tmp_path / f"{route}-{method}"
        code, stdout, err = cli("compile", path, "--method", method, "--num-classes", CLASSES, "--resolution", RES,
                                "--batch-size", BATCH, "--out", out, "--json")
        assert code == 0, err
        manifest = json.loads(stdout)
        assert manifest["input"]["name"] == model.graph.input[0].name
        assert manifest["logits"] == model.graph.output[0].name
        if method == "lite+bias":
            assert manifest["lite_modules"]
        code, _, err = cli("train", out, "--data", "synthetic:8", "--epochs", 1)
        assert code == 0, err
        code, _, err = cli("eval", out, "--data", "synthetic:8")
        assert code == 0, err
        code, _, err = cli("export", out, tmp_path / f"{route}-{method}.onnx")
        assert code == 0, err


@pytest.mark.parametrize("method", ["bias", "lite+bias"])  # (two tests: the slowest, split across workers)
def test_passes_never_raise_the_step_peak(tmp_path, method):
    """bias, and lite+bias, on every family: the measured step peak with tinytlc's passes (and the
    session settings compile picks for them) is never above ORT's own graph's."""
    from tinytlc.runtime.memory import step_peaks
    pairs = []
    for name in FAMILIES:
        dirs = [compile_model(f"{SOURCE}:{name}", method, tmp_path / f"{name}-{label}", num_classes=CLASSES,
                              resolution=RES, batch_size=4, passes=passes).path
                for label, passes in (("plain", []), ("lean", None))]
        pairs.append((f"{name} {method}", dirs))
    peaks = step_peaks([d for _, dirs in pairs for d in dirs])
    rises = [(label, peaks[2 * i], peaks[2 * i + 1]) for i, (label, _) in enumerate(pairs)
             if peaks[2 * i + 1] > peaks[2 * i]]
    assert not rises, f"step peak rose with the passes (plain, lean bytes): {rises}"


def test_activation_masks_skip_floats_backward_keeps(tmp_path):
    """A 1-byte mask beside a float that backward reads anyway (the input of a conv whose weight
    trains) only adds memory: with the pass, the planned step peak (the step's tensors) is never
    above the same passes without it, where ReLUs feed trained convs (lite modules, `full`) and
    where they do not. (Measured peaks at this size are ORT's per-node objects as much as tensors.)"""
    import onnx
    from tinytlc.passes.training import DEFAULT_PASSES
    from tinytlc.pipeline import load_artifact
    from tinytlc.runtime.plan import plan
    without = [p for p in DEFAULT_PASSES if p != "activation-masks"]
    pairs, masks = [], {}
    for name, method in (("convnext", "lite+bias"), ("resnet_basic", "full"), ("resnet_basic", "bias")):
        dirs = [compile_model(f"{SOURCE}:{name}", method, tmp_path / f"{name}-{method}-{label}", num_classes=CLASSES,
                              resolution=RES, batch_size=4, passes=passes).path
                for label, passes in (("without", without), ("with", None))]
        graph = onnx.load(dirs[1] / "training_model.onnx", load_external_data=False).graph
        masks[name, method] = sum(n.op_type == "DropoutGrad" for n in graph.node)
        pairs.append((f"{name} {method}", dirs))
    assert masks["resnet_basic", "bias"] > masks["resnet_basic", "full"]  # frozen convs: every ReLU is masked
    peaks = [[plan(d, load_artifact(d).manifest).peak_bytes for d in dirs] for _, dirs in pairs]
    rises = [(label, *p) for (label, _), p in zip(pairs, peaks) if p[1] > p[0]]
    assert not rises, f"planned step peak rose with activation-masks (without, with bytes): {rises}"


def test_legacy_onnx_file_trains(tmp_path, cli):
    """Opset 11 with initializers listed as graph inputs (how files were written for IR < 4) and an
    input named 'x': converted to opset 17, trained, exported."""
    path = tmp_path / "legacy.onnx"
    torch.onnx.export(getattr(families, "resnet_basic")(), (torch.zeros(1, 3, RES, RES),), str(path), dynamo=False,
                      opset_version=11, input_names=["x"], output_names=["y"], keep_initializers_as_inputs=True,
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    import onnx
    legacy = onnx.load(str(path))
    assert len(legacy.graph.input) > 1 and legacy.opset_import[0].version == 11
    out = tmp_path / "a"
    code, stdout, err = cli("compile", path, "--method", "lite+bias", "--num-classes", CLASSES, "--resolution", RES,
                            "--batch-size", BATCH, "--out", out, "--json")
    assert code == 0, err
    manifest = json.loads(stdout)
    assert manifest["input"]["name"] == "x" and manifest["lite_modules"]
    code, _, err = cli("train", out, "--data", "synthetic:8", "--epochs", 1)
    assert code == 0, err
    code, _, err = cli("export", out, tmp_path / "out.onnx")
    assert code == 0, err


@pytest.mark.parametrize("name", ["vit", "squeezenet", "shufflenetv2"])
def test_dynamo_files_of_other_families(tmp_path, cli, capsys, name):
    """The dynamo exporter writes attention reshapes over batch x heads, flattens as Reshape(x, [-1, classes])
    and shuffles with shape arithmetic: all must compile, train and export."""
    path = _dynamo_file(tmp_path, name)
    capsys.readouterr()
    out = tmp_path / "a"
    code, stdout, err = cli("compile", path, "--method", "lite+bias", "--num-classes", CLASSES, "--resolution", RES,
                            "--batch-size", BATCH, "--out", out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["lite_modules"]
    code, _, err = cli("train", out, "--data", "synthetic:8", "--epochs", 1)
    assert code == 0, err
    code, _, err = cli("export", out, tmp_path / "a.onnx")
    assert code == 0, err


@pytest.mark.parametrize("dynamo", [False, True])
def test_file_exported_for_batch_one(tmp_path, cli, capsys, dynamo):
    """A file exported without a dynamic batch has the batch size written into its Reshapes and
    Expands; they are rewritten to follow the input's batch (ShuffleNet: the channel shuffle too)."""
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(families.shufflenetv2(), (torch.zeros(1, 3, RES, RES),), str(path), dynamo=dynamo,
                      **({"opset_version": 18} if dynamo else {}))
    capsys.readouterr()
    out = tmp_path / "a"
    code, _, err = cli("compile", path, "--method", "bias", "--num-classes", CLASSES, "--resolution", RES,
                       "--batch-size", BATCH, "--out", out)
    assert code == 0, err
    code, _, err = cli("train", out, "--data", "synthetic:8", "--epochs", 1)
    assert code == 0, err


def test_swin_windows_keep_static_shapes(tmp_path):
    """Swin merges its windows back into images with the image's B (a Reshape from batch x windows):
    written with -1, every later tensor lost the batch's symbol, so later blocks' qkv reshapes
    (x.size(0), which is batch x windows) could not be evaluated and q, k, v were three Slices of an
    axis of unknown length rather than one Split (static_reshapes.py)."""
    import onnx
    art = compile_model(f"{SOURCE}:swin", "bias", tmp_path / "a", resolution=RES, batch_size=BATCH)
    graph = onnx.load(art.path / "forward_model.onnx").graph
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in graph.value_info}
    picks = [n.op_type for n in graph.node if n.op_type in ("Split", "Slice", "Gather") and rank.get(n.input[0]) == 5]
    blocks = sum(isinstance(m, families.ShiftedWindowAttention) for m in families.swin().modules())
    assert blocks == 3 and picks == ["Split"] * blocks, picks


def test_vit_attention_picks_qkv_with_one_split(tmp_path):
    """nn.MultiheadAttention works on [tokens, batch, dim] and unflattens its packed projection with
    a Reshape whose target is read off that shape (batch second): evaluated only for a leading
    batch, q, k, v were three Slices of an axis of unknown length, each with a SliceGrad padding its
    gradient to the whole projection, rather than one Split (static_reshapes.py)."""
    import onnx
    art = compile_model(f"{SOURCE}:vit", "bias", tmp_path / "a", resolution=RES, batch_size=BATCH)
    ops = [n.op_type for n in onnx.load(art.path / "training_model.onnx").graph.node]
    blocks = sum(isinstance(m, torch.nn.MultiheadAttention) for m in families.vit().modules())
    # one SliceGrad is left: the class token's x[:, 0], before the head
    assert blocks == 2 and ops.count("Split") == blocks and ops.count("SliceGrad") == 1, \
        (ops.count("Split"), ops.count("SliceGrad"))


def test_infer_shapes_is_onnx_irs_inference():
    """InferShapesPass merges onnx's inference back from the value infos alone: on Swin's shape
    arithmetic it finds the same shape and type for every value as onnx_ir's ShapeInferencePass; a
    graph with a subgraph gets the same too; where inference fails, the model is left as it was."""
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto, helper
    from onnx_ir.passes.common import ShapeInferencePass
    from tinytlc.export import export_module
    from tinytlc.passes.forward import InferShapesPass

    def shapes(model):
        return {v.name: (None if v.shape is None else str(v.shape), v.dtype) for node in model.graph for v in node.outputs}

    def both(proto):
        results = []
        for infer in (ShapeInferencePass, InferShapesPass):
            model = ir.serde.deserialize_model(proto)
            for node in model.graph:
                for v in node.outputs:
                    v.shape = None
            results.append((infer()(model).modified, shapes(model)))
        return results

    (mod_a, a), (mod_b, b) = both(export_module(families.swin(), RES))
    assert mod_a and mod_b and a == b and sum(s is not None for s, _ in b.values()) > 100

    then = helper.make_graph([helper.make_node("Relu", ["c"], ["r"])], "then", [],
                             [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["c"]),
         helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=then)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    (_, a), (_, b) = both(helper.make_model(branch))
    assert a == b and b["c"] == ("[2,3]", ir.DataType.FLOAT)

    clash = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "z"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    (mod_a, a), (mod_b, b) = both(helper.make_model(clash))
    assert not mod_a and not mod_b and a == b and b["r"] == (None, None)
