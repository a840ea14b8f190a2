"""The paper's transfer-learning methods, as the forward passes they need and the parameters they
train. Parameters are found from the graph's structure, so any ONNX CNN works, not only the zoo.

| method    | trains                                              | BatchNorm becomes            |
|-----------|-----------------------------------------------------|------------------------------|
| full      | every conv/linear weight and bias, norm scale/shift | affine over frozen stats     |
| last      | classifier                                          | folded into the conv         |
| norm+last | norm scale and shift, classifier                    | affine over frozen stats     |
| bias      | every bias (conv bias after folding BN), classifier | folded into the conv         |
| lite      | lite residual modules, classifier                   | folded into the conv         |
| lite+bias | lite residual modules, every bias, classifier       | folded into the conv         |
"""

from __future__ import annotations

import onnx_ir as ir

from tinytlc.errors import TinyTLError
from tinytlc.passes.forward import (AddZeroBiasPass, AveragePoolToConvPass, BatchNormToAffinePass,
                                    FoldBatchNormIntoConvPass, LiteOptions, LiteResidualPass, find_classifier)
from tinytlc.passes.forward.lite_residual import LITE
from tinytlc.passes.forward._values import is_constant

METHODS = ("full", "last", "norm+last", "bias", "lite", "lite+bias")
TRAINS_NORMS = {"full", "norm+last"}


def default_lr(method: str) -> float:
    """Adam's peak learning rate: fine-tuning every weight wants a smaller step than the rest."""
    return 5e-4 if method == "full" else 3e-3


def check_method(method: str) -> None:
    if method not in METHODS:
        raise TinyTLError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")


def norm_params(graph: ir.Graph) -> list[str]:
    """Scale and shift of every norm: BatchNormalization (names survive BatchNormToAffinePass) and
    a norm written out as Add(Mul(x, scale), shift) with per-channel parameters (e.g. GroupNorm)."""
    names = [v.name for n in graph if n.op_type == "BatchNormalization" for v in n.inputs[1:3]
             if v is not None and v.is_initializer()]
    for add in graph:
        if add.op_type != "Add" or len(add.inputs) != 2:
            continue
        mul = next((v.producer() for v in add.inputs if v.producer() is not None and v.producer().op_type == "Mul"), None)
        shift = next((v for v in add.inputs if v.is_initializer()), None)
        scale = next((v for v in mul.inputs if v.is_initializer()), None) if mul is not None else None
        if shift is not None and scale is not None and shift.shape is not None and len(shift.shape) == 3:
            names += [scale.name, shift.name]
    return names


def forward_passes(method: str, lite: LiteOptions | None = None) -> list[ir.passes.PassBase]:
    """Passes that shape the forward graph for `method` before autodiff (shapes must be inferred)."""
    if method in TRAINS_NORMS:
        passes = [BatchNormToAffinePass()]
    else:
        passes = [FoldBatchNormIntoConvPass(), BatchNormToAffinePass()]  # BN with no conv before it
    if method.startswith("lite"):
        passes.append(LiteResidualPass(lite or LiteOptions()))
    passes.append(AveragePoolToConvPass())
    if method.endswith("bias"):
        passes.append(AddZeroBiasPass())
    return passes


def _layer_params(graph: ir.Graph, slots: tuple[int, ...]) -> list[str]:
    names = []
    for node in graph:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            for i in slots:
                v = node.inputs[i] if i < len(node.inputs) else None
                if v is not None and v.is_initializer() and not is_constant(v):
                    names.append(v.name)
    return names


def trainable_params(graph: ir.Graph, method: str, norms: list[str]) -> list[str]:
    """Names of the initializers `method` trains, in graph order, each once."""
    _, weight, bias, _ = find_classifier(graph)
    classifier = [weight.name] + ([bias.name] if bias is not None else [])
    if method == "full":
        names = _layer_params(graph, (1, 2)) + norms
    elif method == "last":
        names = classifier
    elif method == "norm+last":
        names = norms + classifier
    elif method == "bias":  # conv biases, norm shifts (scales and shifts alternate in `norms`)
        names = _layer_params(graph, (2,)) + norms[1::2] + classifier
    elif method in ("lite", "lite+bias"):
        lite = [name for name, v in graph.initializers.items() if v.meta.get(LITE)]
        names = lite + (_layer_params(graph, (2,)) + norms[1::2] if method == "lite+bias" else []) + classifier
    else:
        check_method(method)
        raise AssertionError(method)
    present = set(graph.initializers)
    return [n for n in dict.fromkeys(names) if n in present]
