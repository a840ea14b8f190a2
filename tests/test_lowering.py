"""Ops ORT 1.19.2 cannot differentiate, written out before autodiff (passes/forward/lower_for_autodiff.py):
one `full` step equals PyTorch autograd for every parameter, and the op is gone from the graph."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import NETS
from test_gradients import ort_step, torch_reference

import nets
from tinytlc.pipeline import compile_model


@pytest.mark.parametrize("net,op", [("group_norm_net", "InstanceNormalization"), ("global_max_net", "GlobalMaxPool"),
                                    ("pixel_shuffle_net", "DepthToSpace"), ("einsum_net", "Einsum"),
                                    ("token_pool_net", "AveragePool"), ("ceil_avg_pool_net", "AveragePool"),
                                    ("interpolated_positions_net", "Resize")])
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


class _BlurPool(nn.Module):
    """timm's BlurPool2d: reflect padding, then a fixed [1 2 1]^2 / 16 depthwise filter at stride 2
    (a buffer, not a parameter, written as a Constant node)."""

    def __init__(self, channels):
        super().__init__()
        f = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (f[:, None] * f[None, :] / 16).repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x):
        return F.conv2d(F.pad(x, [1, 1, 1, 1], mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class _Replicate(nn.Module):
    def forward(self, x):
        return F.pad(x, [2, 1, 0, 1], mode="replicate")  # asymmetric; the top row is not padded


def blur_pool_net():
    """Pad in reflect and edge mode (ORT 1.19.2 differentiates constant mode only): timm's BlurPool,
    nn.ReflectionPad2d(2) and a replicate pad before trained convs."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), _BlurPool(6), nn.ReflectionPad2d(2),
                         nn.Conv2d(6, 6, 3), nn.ReLU(), _Replicate(), nn.Conv2d(6, 8, 3, stride=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


class _Cbam(nn.Module):
    """timm's CBAM: channel attention from the average and the max (amax over (2, 3)) through a
    shared MLP, then spatial attention from the channel mean and max (amax over 1) through a 7x7 conv."""

    def __init__(self, channels, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, hidden, 1), nn.Conv2d(hidden, channels, 1)
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        mlp = lambda v: self.fc2(F.relu(self.fc1(v)))  # noqa: E731
        x = x * torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(s))


def cbam_net():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _Cbam(8, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3)).eval()


class _PooledQuery(nn.Module):
    """Hiera's query pooling: q.view(B, heads, windows, stride, -1, head_dim).amax(dim=3), a 6-D
    max over one inner axis (as a MaxPool it would pool 4 axes: ORT pools 1 to 3)."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q = q.view(B, self.heads, 2, 4, -1, C // self.heads).amax(dim=3).flatten(2, 3)
        x = ((q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5).softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, -1, C))


class _PooledQueryNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.norm, self.attn, self.head = nn.Conv2d(3, 8, 4, 4), nn.LayerNorm(8), _PooledQuery(), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(self.norm(self.stem(x).flatten(2).transpose(1, 2))).mean(1))


def pooled_query_net():
    torch.manual_seed(5)
    return _PooledQueryNet().eval()


def test_ceil_average_pool_of_another_producer_is_refused(tmp_path):
    """Where ceil_mode extends a pool whose padding counts, ORT, onnx's reference and torch divide
    three ways: only PyTorch's exporter says which it meant."""
    from tinytlc.errors import TinyTLError
    path = tmp_path / "m.onnx"
    torch.onnx.export(nets.ceil_avg_pool_net(), (torch.zeros(1, 3, 12, 12),), str(path), dynamo=False, opset_version=17,
                      dynamic_axes={"input": {0: "n"}}, input_names=["input"])
    model = onnx.load(path)
    model.producer_name = "tf2onnx"
    onnx.save(model, path)
    with pytest.raises(TinyTLError, match="divide differently"):
        compile_model(path, "bias", tmp_path / "a", resolution=12, batch_size=3)


@pytest.mark.parametrize("net,op,res", [("blur_pool_net", "Pad", 20), ("cbam_net", "ReduceMax", 16),
                                        ("pooled_query_net", "ReduceMax", 16)])
@pytest.mark.parametrize("method", ["full", "bias"])
def test_reflect_pad_and_reduce_max_train_exactly(tmp_path, net, op, res, method):
    """ORT 1.19.2 builds no training graph for a reflect / edge Pad or a ReduceMax; lowered, one step
    (ORT's own graph and the default passes' alike) equals PyTorch autograd for every trained tensor.
    (The reduce-max gradient goes to one maximal element where torch's amax splits it among ties: random
    inputs have none.)"""
    spec = f"{__file__}:{net}"
    arts = [compile_model(spec, method, tmp_path / "plain", resolution=res, batch_size=2, passes=[]),
            compile_model(spec, method, tmp_path / "lean", resolution=res, batch_size=2)]
    for art in arts:
        modes = [a.s for n in onnx.load(art.path / "forward_model.onnx").graph.node if n.op_type == op
                 for a in n.attribute if a.name == "mode"]
        assert not (modes if op == "Pad" else [n for n in onnx.load(art.path / "forward_model.onnx").graph.node
                                                 if n.op_type == op])
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, res, res), dtype=np.float32)
    y = np.array([0, 2])
    model, train = torch_reference(method, globals()[net])
    # (no zero bias for the blur under bias: a fixed filter is no layer)
    assert train == set(arts[0].manifest["trainable"]) == set(arts[1].manifest["trainable"])
    logits_t = model(torch.from_numpy(x))
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(y))
    loss_t.backward()
    params = dict(model.named_parameters())
    for art in arts:
        loss, logits, grads = ort_step(art, x, y, 0.0)
        np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-5)
        for name in train:
            np.testing.assert_allclose(grads[name].reshape(params[name].shape), params[name].grad.numpy(),
                                       rtol=1e-4, atol=1e-6, err_msg=f"{method} {art.manifest['passes']}: {name}")


def _run(model: onnx.ModelProto, feeds: dict) -> list:
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("opset", [10, 13, 18, 19])
def test_lowered_pad_and_reduce_max_equal_the_ops(opset):
    """Every written-out Pad mode (pads as an attribute before opset 11, an input after, with an axes
    input from 18, negative entries cropping) and ReduceMax / ReduceMin (axes an attribute or, from
    opset 18, an input; keepdims 0 and 1; image axes, channels, both) computes what ORT's op does."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from tinytlc.passes.forward import LowerForAutodiffPass
    x = np.random.default_rng(6).standard_normal((2, 3, 5, 6), dtype=np.float32)
    cases = []
    for mode in ["reflect", "edge"] + (["wrap"] if opset >= 19 else []):
        for pads in ([0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 2, 0, 0, 0, 1, 4], [0, 1, 0, 3, 0, 2, 4, 0],
                     [0, 0, -1, 2, 0, 0, 3, -2]):
            if opset < 11:
                cases.append(([helper.make_node("Pad", ["x"], ["y"], mode=mode, pads=pads)], []))
            else:
                inits = [helper.make_tensor("pads", TensorProto.INT64, [8], pads)]
                cases.append(([helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)], inits))
        if opset >= 18:
            inits = [helper.make_tensor("pads", TensorProto.INT64, [4], [2, 1, 3, 4]),
                     helper.make_tensor("axes", TensorProto.INT64, [2], [3, -2])]
            cases.append(([helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode=mode)], inits))
    if opset >= 13:
        for op in ("ReduceMax", "ReduceMin"):
            for axes in ([2, 3], [1], [-1], [1, 3], [1, 2, 3]):
                for keepdims in (0, 1):
                    if opset >= 18:
                        inits = [helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes)]
                        cases.append(([helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)], inits))
                    else:
                        cases.append(([helper.make_node(op, ["x"], ["y"], axes=axes, keepdims=keepdims)], []))
    for nodes, inits in cases:
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 5, 6])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
        irm = ir.serde.deserialize_model(model)
        assert LowerForAutodiffPass()(irm).modified
        lowered = ir.serde.serialize_model(irm)
        assert nodes[0].op_type not in {n.op_type for n in lowered.graph.node}
        np.testing.assert_array_equal(_run(lowered, {"x": x})[0], _run(model, {"x": x})[0], err_msg=str(nodes[0]))


def test_lowered_depth_to_space_and_space_to_depth_equal_the_ops():
    """DepthToSpace in both modes (DCR: TensorFlow's, the default; CRD: torch's pixel_shuffle) and
    SpaceToDepth, written as Reshape-Transpose-Reshape, move every element where ORT's op does."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from tinytlc.passes.forward import LowerForAutodiffPass
    x = np.random.default_rng(7).standard_normal((2, 8, 4, 6), dtype=np.float32)
    for node in (helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2),
                 helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD"),
                 helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)):
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 4, 6])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
        irm = ir.serde.deserialize_model(model)
        assert LowerForAutodiffPass()(irm).modified
        lowered = ir.serde.serialize_model(irm)
        assert node.op_type not in {n.op_type for n in lowered.graph.node}
        np.testing.assert_array_equal(_run(lowered, {"x": x})[0], _run(model, {"x": x})[0], err_msg=str(node))


# (equation, operand shapes: "n" is a symbolic batch, run at 3; left alone: whether the pass must keep the Einsum)
_EINSUMS = [("bhid,bhjd->bhij", [("n", 2, 5, 4), ("n", 2, 6, 4)]), ("bhwc,hkc->bhwk", [("n", 3, 4, 5), (3, 2, 5)]),
            ("...c,cd->...d", [("n", 3, 4, 5), (5, 2)]), ("bi,ij", [("n", 4), (4, 3)]), ("bnhd->bhnd", [("n", 3, 2, 4)]),
            ("bij->bj", [("n", 3, 4)]), ("bij->", [("n", 3, 4)]), ("bi,bj->bij", [("n", 3), ("n", 4)]),
            ("bi,bi->b", [("n", 5), ("n", 5)]), ("bi,ij,jk->bk", [("n", 3), (3, 4), (4, 2)]),
            ("ijk,jl->lik", [(2, 3, 4), (3, 5)]), ("bxy,y->bx", [("n", 3, 4), (4,)]), ("...ij,...jk->...ik", [("n", 2, 3, 4), ("n", 2, 4, 5)]),
            ("bij,bjk->bik", [("n", "m", 4), ("n", 4, 5)]), ("ii->i", [(3, 3)]), ("ij,jk->ik", [("n", "m"), ("m", 4)]),
            ("bij,bjk->bik", [("n", "m", "p"), ("n", "p", 5)]), ("ijk,kl->ijl", [("n", "m", 4), (4, "q")])]


@pytest.mark.parametrize("equation,shapes", _EINSUMS, ids=[e for e, _ in _EINSUMS])
def test_einsum_as_matmul_equals_the_op(equation, shapes):
    """Einsum written as Transpose/Reshape/MatMul/ReduceSum (passes/forward/einsum_as_matmul.py)
    computes ORT's Einsum: batched products, sums over one operand's own letters, outer products,
    three operands, ellipses, the implicit output and sizes known only at run time; a diagonal (a
    repeated letter) is left alone."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from tinytlc.passes.forward import EinsumAsMatMulPass
    names = [f"x{i}" for i in range(len(shapes))]
    node = helper.make_node("Einsum", names, ["y"], equation=equation)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(names, shapes)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    irm = ir.serde.deserialize_model(model)
    lowered = EinsumAsMatMulPass()(irm).modified
    assert lowered == (equation != "ii->i"), equation
    if not lowered:
        return
    out = ir.serde.serialize_model(irm)
    assert "Einsum" not in {n.op_type for n in out.graph.node}
    rng = np.random.default_rng(8)
    feeds = {n: rng.standard_normal([3 if isinstance(d, str) else d for d in s], dtype=np.float32) for n, s in zip(names, shapes)}
    np.testing.assert_allclose(_run(out, feeds)[0], _run(model, feeds)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_bidirectional_rnn_as_two_forward_ones_is_exact(op):
    """split_bidirectional_rnn.py: every output (Y, Y_h and Y_c) of a bidirectional op with initial
    states equals ORT's own bidirectional op, bit for bit (gradients: test_gradients' bilstm_net)."""
    import onnx_ir as ir
    from onnx import helper, numpy_helper
    from tinytlc.passes.forward import SplitBidirectionalRnnPass
    rng = np.random.default_rng(0)
    hidden, batch, steps, width, gates = 3, 2, 4, 5, 4 if op == "LSTM" else 3
    weights = {"W": (2, gates * hidden, width), "R": (2, gates * hidden, hidden), "B": (2, 2 * gates * hidden),
               "h0": (2, batch, hidden), **({"c0": (2, batch, hidden)} if op == "LSTM" else {})}
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in weights.items()]
    outputs = ["y", "yh"] + (["yc"] if op == "LSTM" else [])
    node = helper.make_node(op, ["x", "W", "R", "B", "", "h0"] + (["c0"] if op == "LSTM" else []), outputs,
                            hidden_size=hidden, direction="bidirectional")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [steps, batch, width])],
                              [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = {"x": rng.standard_normal((steps, batch, width)).astype(np.float32)}
    irm = ir.serde.deserialize_model(model)
    assert SplitBidirectionalRnnPass()(irm).modified
    split = ir.serde.serialize_model(irm)
    assert [n.op_type for n in split.graph.node].count(op) == 2
    assert all(a.s != b"bidirectional" for n in split.graph.node for a in n.attribute if a.name == "direction")
    for got, expected in zip(_run(split, x), _run(model, x)):
        np.testing.assert_array_equal(got, expected)
