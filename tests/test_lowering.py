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
