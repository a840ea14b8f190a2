"""The paper's transfer-learning methods, as the forward passes they need and the parameters they
train. Parameters are found from the graph's structure, so any ONNX CNN works, not only the zoo.

| method    | trains                                              | BatchNorm becomes            |
|-----------|-----------------------------------------------------|------------------------------|
| full      | every conv/linear weight and bias, norm scale/shift | affine over frozen stats     |
| last      | classifier                                          | folded into the conv         |
| norm+last | norm scale and shift, classifier                    | affine over frozen stats     |
| bias      | every bias (conv bias after folding BN), classifier | folded into the conv         |
| lite      | lite residual modules, classifier                   | folded into the conv         |
| lite+bias | lite residual modules but their final norm's shift, every bias, classifier | folded into the conv |

"Every bias" is what the paper trains: a conv or linear bias, and a norm's shift; a conv that feeds
a norm gets no zero bias of its own (AddZeroBiasPass).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from tinytlc.errors import TinyTLError
from tinytlc.passes.forward import (AddZeroBiasPass, AveragePoolToConvPass, BatchNormToAffinePass,
                                    FoldBatchNormIntoConvPass, FoldTrainedBatchNormPass, LiteOptions,
                                    LiteResidualPass, find_classifier)
from tinytlc.passes.forward.add_zero_bias import added_bias, bias_parts, is_bias
from tinytlc.passes.forward._values import LITE, PARAMETER, is_constant, opset
from tinytlc.passes.forward.blocks import param_source
from tinytlc.passes.forward.norms import find_norms, param_sources

METHODS = ("full", "last", "norm+last", "bias", "lite", "lite+bias")
TRAINS_NORMS = {"full", "norm+last"}


def default_lr(method: str) -> float:
    """Adam's peak learning rate: fine-tuning every weight wants a smaller step than the rest."""
    return 5e-4 if method == "full" else 3e-3


def check_method(method: str) -> None:
    if method not in METHODS:
        raise TinyTLError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")


def norm_params(graph: ir.Graph) -> list[tuple[list[str], list[str]]]:
    """(scale, shift) parameter names of every norm layer in graph order, however it is written
    (passes/forward/norms.py): BatchNormalization, LayerNormalization, or written out as Mul and Add
    (torch's GroupNorm, and Instance- and GroupNormalization once lowered), parameters seen through
    views such as Unsqueeze. Taken before the method's passes, which rewrite norms but keep the names."""
    def names(values):
        return [v.name for v in values if v.is_initializer() and v.dtype is not None and v.dtype.is_floating_point()]
    return [(names(n.scales), names(n.shifts)) for n in find_norms(graph)]


def forward_passes(method: str, lite: LiteOptions | None = None, lite_modules: bool = False,
                   fold_norms: bool = True, fold_trained_batchnorm: bool = True) -> list[ir.passes.PassBase]:
    """Passes that shape the forward graph for `method` before autodiff (shapes must be inferred).
    `lite_modules`: insert lite residual modules whatever the method (the paper profiles every
    method on the network with them, frozen unless the method trains them). `fold_norms=False`
    keeps every BatchNorm a layer of its own (an affine), as the paper's accounting counts it.
    `fold_trained_batchnorm`: in `full`, fold a BatchNorm that follows a conv into it while both
    train (FoldTrainedBatchNormPass); off, every trained norm is an affine, as in ORT's own graph."""
    if method == "full" and fold_norms and fold_trained_batchnorm:
        passes = [FoldTrainedBatchNormPass(), BatchNormToAffinePass()]  # BN with no conv before it
    elif method in TRAINS_NORMS or not fold_norms:
        passes = [BatchNormToAffinePass()]
    else:
        passes = [FoldBatchNormIntoConvPass(), BatchNormToAffinePass()]  # BN with no conv before it
    if method.startswith("lite") or lite_modules:
        passes.append(LiteResidualPass(lite or LiteOptions()))
    passes.append(AveragePoolToConvPass())
    if method.endswith("bias"):
        passes.append(AddZeroBiasPass())
    return passes


def parameters(graph: ir.Graph) -> list[str]:
    """Every float initializer of rank >= 1 (a scalar is a constant such as an eps, unless a PyTorch
    module says it is a parameter: NFNet's skipinit_gain) that a pass did
    not write and that the outputs depend on differentiably, in graph order. Exporters write
    constants and buffers as initializers too (the dynamo exporter: Resize's scales; a threshold
    buffer compared with): those that reach only inputs ONNX marks non-differentiable (scales,
    pads, shapes, indices, Clip bounds, comparisons) are no parameters, and ORT cannot give them a
    gradient. A buffer used as data (added, multiplied, gathered from) looks like a parameter in
    ONNX and is trained as one."""
    reached = {id(v) for v in graph.outputs}
    for node in reversed(graph):  # nodes are in topological order
        if any(id(v) in reached for v in node.outputs):
            reached |= {id(v) for i, v in enumerate(node.inputs) if v is not None and _differentiable(node, i)}
    return [name for name, v in graph.initializers.items() if id(v) in reached and not is_constant(v)
            and v.dtype is not None and v.dtype.is_floating_point() and v.shape is not None
            and (len(v.shape) > 0 or v.meta.get(PARAMETER))]


def _differentiable(node: ir.Node, i: int) -> bool:
    """Whether input `i` of `node` may get a gradient: unless its ONNX schema says it cannot (ops
    outside ai.onnx, and inputs marked Unknown such as LayerNormalization's, may)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, node.version or opset(node.graph), node.domain)
    except onnx.defs.SchemaError:
        return True
    formal = schema.inputs[min(i, len(schema.inputs) - 1)]  # the last input may be variadic
    return formal.differentiation_category != onnx.defs.OpSchema.DifferentiationCategory.NonDifferentiable


def bias_params(graph: ir.Graph) -> list[str]:
    """Biases: a Conv/Gemm bias input, and a per-channel parameter added to a layer's output (or
    the parameters either is concatenated from); also a scalar or per-channel parameter added to
    any data (StarReLU's s * relu(x)^2 + b in timm's MetaFormers), but not a lite module's own nor
    a constant (an .onnx file's 0-d initializers are constants: parameters() says which are not)."""
    names, sources, params = [], param_sources(graph), set(parameters(graph))
    for node in graph:
        if node.op_type in ("Conv", "Gemm") and len(node.inputs) > 2:
            names += bias_parts(node.inputs[2])
        names += added_bias(node)
        if node.op_type == "Add" and len(node.inputs) == 2 and None not in node.inputs:
            for v, other in (node.inputs, node.inputs[::-1]):
                p = param_source(v)
                if p is not None and p.name in params and not p.meta.get(LITE) and sources.get(id(other), set()) is None:
                    names.append(p)
    return [v.name for v in names if is_bias(v)]


def trainable_params(graph: ir.Graph, method: str, norms: list[tuple[list[str], list[str]]]) -> list[str]:
    """Names of the initializers `method` trains, in graph order, each once. Lite modules' norms
    count as norms (norm+last and bias train them when the modules are in the network); lite+bias
    keeps each module's final shift frozen, as the paper does (the block's own shift does its job)."""
    _, weight, bias, _ = find_classifier(graph)
    classifier = [weight.name] + ([bias.name] if bias is not None else [])
    role = {name: v.meta.get(LITE) for name, v in graph.initializers.items() if v.meta.get(LITE)}
    lite_norms = [n for n, r in role.items() if r in ("scale", "shift", "final-shift")]
    lite_shifts = [n for n, r in role.items() if r in ("shift", "final-shift")]
    shifts = [n for _, norm_shifts in norms for n in norm_shifts]
    if method == "full":
        names = parameters(graph)
    elif method == "last":
        names = classifier
    elif method == "norm+last":
        names = [n for scales, shifts in norms for n in scales + shifts] + lite_norms + classifier
    elif method == "bias":  # biases, norm shifts
        names = bias_params(graph) + shifts + lite_shifts + classifier
    elif method == "lite":
        names = list(role) + classifier
    elif method == "lite+bias":
        names = [n for n, r in role.items() if r != "final-shift"] + bias_params(graph) + shifts + classifier
    else:
        check_method(method)
        raise AssertionError(method)
    present = set(graph.initializers)
    return [n for n in dict.fromkeys(names) if n in present]
