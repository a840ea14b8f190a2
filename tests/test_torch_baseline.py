"""The PyTorch eager baseline (tinytlc/torch_baseline.py) builds the network tinytlc compiles."""

import pytest
import torch
import torch.nn as nn

from tinytlc.pipeline import compile_model
from tinytlc.torch_baseline import eager_model


def tiny_net(bias=True):
    """A 3-class head (loaded as `tests/test_torch_baseline.py:tiny_net`)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3, bias=bias))


def tiny_net_no_bias():
    return tiny_net(bias=False)


@pytest.mark.parametrize("classes", [5, 2])
def test_eager_head_grows_and_shrinks_as_compiled(tmp_path, classes):
    """More or fewer classes than the head has: a new head, as the ONNX side draws it."""
    source = f"{__file__}:tiny_net"
    net, _, trainable = eager_model(source, "last", 16, classes, None)
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, classes)
    assert [tuple(p.shape) for p in trainable] == [(classes, 8), (classes,)]
    art = compile_model(source, "last", tmp_path / "a", num_classes=classes, resolution=16, batch_size=2)
    assert sum(p.numel() for p in trainable) == art.manifest["trainable_elements"]


def test_eager_head_without_bias_grows():
    net, _, trainable = eager_model(f"{__file__}:tiny_net_no_bias", "last", 16, 5, None)
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 5)
    assert [tuple(p.shape) for p in trainable] == [(5, 8)]


def test_eager_child_error_is_passed_on_cleanly():
    from tinytlc.errors import TinyTLError
    from tinytlc.torch_baseline import measure_torch
    with pytest.raises(TinyTLError) as e:
        measure_torch("resnet-9000", "bias", 16, 2)
    assert str(e.value).startswith("memory measurement failed: PyTorch baseline: resnet-9000 is neither"), e.value
