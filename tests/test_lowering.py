"""Ops ORT 1.19.2 cannot differentiate, written out before autodiff (passes/forward/lower_for_autodiff.py):
one `full` step equals PyTorch autograd for every parameter, and the op is gone from the graph."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import NETS
from test_gradients import ort_step

import nets
from tinytlc.pipeline import compile_model


@pytest.mark.parametrize("net,op", [("group_norm_net", "InstanceNormalization"), ("global_max_net", "GlobalMaxPool")])
def test_lowered_op_trains_exactly(tmp_path, net, op):
    art = compile_model(f"{NETS}:{net}", "full", tmp_path / "a", resolution=12, batch_size=3)
    ops = {n.op_type for n in onnx.load(art.path / "forward_model.onnx").graph.node}
    assert op not in ops
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 12, 12), dtype=np.float32)
    y = np.array([0, 1, 2])
    loss, logits, grads = ort_step(art, x, y, 0.0)
    model = getattr(nets, net)()
    logits_t = model(torch.from_numpy(x))
    F.cross_entropy(logits_t, torch.from_numpy(y)).backward()
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    params = dict(model.named_parameters())
    assert set(grads) == set(params)
    for name, p in params.items():
        np.testing.assert_allclose(grads[name].reshape(p.shape), p.grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=name)


def test_resize_becomes_matmuls_only_where_a_gradient_passes(tmp_path):
    """ORT has no CPU ResizeGrad: a Resize with a trained tensor before it becomes two MatMuls by
    constant interpolation matrices (passes/forward/resize_as_matmul.py; `full` and `bias` steps of
    this net equal PyTorch's in test_gradients.py); with only the head trained the Resizes stay."""
    def resizes(method):
        art = compile_model(f"{NETS}:fusion_net", method, tmp_path / method, resolution=15, batch_size=2)
        return sum(n.op_type == "Resize" for n in onnx.load(art.path / "forward_model.onnx").graph.node)
    assert resizes("last") == 3  # nearest x2, bilinear to a size, bilinear with align_corners
    assert resizes("bias") == 0
