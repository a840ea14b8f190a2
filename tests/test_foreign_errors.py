""".onnx files tinytlc cannot train, or that ORT cannot differentiate as they are: each is refused
in one line naming the problem (or made trainable, where that is exact)."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinytlc.errors import TinyTLError
from tinytlc.onnx_file import load_onnx


def small_model(middle: list, inits=(), opset=17) -> onnx.ModelProto:
    """x -> Conv 'c' -> middle nodes (read 'c', write 'a') -> GlobalAveragePool -> Flatten -> Gemm -> y."""
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 3, 3, 3)) * 0.3, "b": np.full(4, 0.1), "fw": rng.standard_normal((3, 4)),
              "fb": np.zeros(3)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="/conv")] + middle + [
        helper.make_node("GlobalAveragePool", ["a"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()] + list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def branch(op: str, out: str, x: str = "c") -> onnx.GraphProto:
    return helper.make_graph([helper.make_node(op, [x], [out])], op, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


def data_if(out="a", name="/If") -> list:
    """if mean(c) > 0: relu(c) else: -c (a torch.jit.script'ed branch)."""
    return [helper.make_node("ReduceMean", ["c"], ["m"], keepdims=0),
            helper.make_node("Greater", ["m", "zero"], ["cond"]),
            helper.make_node("If", ["cond"], [out], then_branch=branch("Relu", out + "_t"),
                             else_branch=branch("Neg", out + "_e"), name=name)]


ZERO = numpy_helper.from_array(np.float32(0), "zero")


def test_control_flow_is_refused_by_name(tmp_path):
    """ORT's gradient builder aborts the process on an If (even when nothing before it trains)."""
    onnx.save(small_model(data_if(), [ZERO]), tmp_path / "if.onnx")
    with pytest.raises(TinyTLError, match=r"control flow \(If node /If\) cannot be differentiated by "
                                          r"onnxruntime-training; export with tracing"):
        load_onnx(tmp_path / "if.onnx", 16)
    # a data-dependent If inside the branch a constant If takes: the outer is inlined, the inner refused
    inner = helper.make_graph(data_if("t", "/inner/If"), "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    outer = helper.make_node("If", ["yes"], ["a"], then_branch=inner, else_branch=branch("Neg", "e"), name="/outer/If")
    onnx.save(small_model([outer], [ZERO, numpy_helper.from_array(np.array(True), "yes")]), tmp_path / "nested.onnx")
    with pytest.raises(TinyTLError, match=r"control flow \(If node /inner/If\)"):
        load_onnx(tmp_path / "nested.onnx", 16)


def test_a_native_abort_in_the_gradient_builder_is_not_silent(tmp_path):
    """tinytlc captures ORT's native log on fd 2 while it builds the graph: an abort there (If, before
    it was refused) printed nothing at all."""
    onnx.save(small_model(data_if(), [ZERO]), tmp_path / "if.onnx")
    code = ("import onnx, sys; from tinytlc.runtime import artifacts; "
            "artifacts.generate(onnx.load(sys.argv[1]), ['fw', 'fb'], sys.argv[2])")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "if.onnx"), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "Fatal Python error: Aborted" in r.stderr and "generate_artifacts" in r.stderr


@pytest.mark.parametrize("weight,group", [((4, 2, 1, 1), 3), ((6, 1, 1, 1), 4)], ids=["channels", "outputs"])
def test_a_conv_whose_group_does_not_fit_is_named(tmp_path, weight, group):
    """onnx.checker accepts it; ORT failed at the first step and tinytlc's passes crashed."""
    w2 = numpy_helper.from_array(np.ones(weight, np.float32), "w2")
    onnx.save(small_model([helper.make_node("Conv", ["c", "w2"], ["a"], group=group, name="/2/Conv")], [w2]), tmp_path / "g.onnx")
    with pytest.raises(TinyTLError, match=rf"Conv /2/Conv is invalid: group {group} with a weight of shape"):
        load_onnx(tmp_path / "g.onnx", 16)


def test_a_constant_made_for_another_image_size_is_named(tmp_path):
    """A mean image (1, C, 16, 16) subtracted in a file with a dynamic image size: at 24 px ORT said
    "Input 0 expected to have type but instead is null" about the Gemm at the end."""
    mean = numpy_helper.from_array(np.ones((1, 4, 16, 16), np.float32), "mean")
    model = small_model([helper.make_node("Sub", ["c", "mean"], ["a"], name="/Sub")], [mean])
    for axis, name in ((2, "h"), (3, "w")):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(TinyTLError, match=r"Sub /Sub combines shapes \['\?', 4, 24, 24\] and \[1, 4, 16, 16\], which do "
                                          r"not broadcast at 24 px \(a constant made for another image size\): compile "
                                          r"at the size it was made for \(--resolution 16\)$"):
        load_onnx(tmp_path / "m.onnx", 24)
    load_onnx(tmp_path / "m.onnx", 16)


def test_ort_logs_no_run_time_error_on_stderr(capfd):
    """A failing op: the exception says it (tinytlc prints one line); ORT's own ERROR log line must not."""
    import onnxruntime as ort

    from tinytlc.runtime.session import session_options
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("s", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="cannot be reshaped"):
        sess.run(None, {"x": np.zeros((2, 3), np.float32), "s": np.array([5], np.int64)})
    assert "onnxruntime" not in capfd.readouterr().err


def test_the_cli_keeps_onnx_ir_warnings_off_stderr(tmp_path, capsys, caplog):
    """onnx_ir logs WARNINGs with tracebacks (failed shape inference it recovers from) to stderr."""
    import logging

    from tinytlc.cli import main
    logger = logging.getLogger("onnx_ir")
    level = logger.level
    try:
        assert main(["compile", str(tmp_path / "none.onnx"), "--method", "bias", "--out", str(tmp_path / "a")]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"tinytlc: error: {tmp_path / 'none.onnx'}: no such file"]
        logging.getLogger("onnx_ir.passes.common.shape_inference").warning("Shape inference failed")
        assert not caplog.records
    finally:
        logger.setLevel(level)
