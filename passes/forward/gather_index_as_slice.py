"""Write a Gather of one constant index (`qkv[0]`, `x[:, 0]`) as a Slice (and a Squeeze), and the
Gathers of every index of a short axis of known length (`q, k, v = qkv[0], qkv[1], qkv[2]`) as
one Split.

Why: ORT 1.19.2's GatherGrad scatters the gradient into zeros element by element: torchvision
Swin-T's q, k, v picks took 1287 ms of a 2008 ms `bias` step in ORT's own graph (224 px, batch 4;
705 ms with this pass, profiled). SliceGrad pads dY with zeros; SplitGrad concatenates the parts'
gradients (one full-size tensor where three GatherGrads and their Sum made four). An axis of
unknown length gets Slices (static_reshapes gives Swin's qkv axis its length). Data only: a Gather from a
parameter (an embedding, a position bias table) or from shape arithmetic stays.
Exact: the same elements are copied, forward and backward.
"""

from __future__ import annotations

import onnx_ir as ir

from tinytlc.passes.forward._values import add_constant, const_array, replace_node

MAX_SPLIT = 16  # an axis this short split in full: q, k, v; heads


def _picks(node: ir.Node) -> tuple[int, int, bool] | None:
    """(axis, index, squeezed) of a Gather of one constant index from a computed float tensor (not
    shape arithmetic), else None."""
    if node.op_type != "Gather" or node.domain != "" or len(node.inputs) != 2:
        return None
    x, index = node.inputs
    i = const_array(index)
    if x is None or x.is_initializer() or x.shape is None or x.dtype is None or not x.dtype.is_floating_point() \
            or i is None or i.size != 1 or i.ndim > 1:
        return None
    axis = node.attributes.get_int("axis", 0)
    axis = axis + len(x.shape) if axis < 0 else axis
    dim = x.shape[axis]
    index = int(i.reshape(()))
    if index < 0:
        if not isinstance(dim, int):
            return None
        index += dim
    return axis, index, i.ndim == 0


class GatherIndexAsSlicePass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for node in list(graph):
            pick = _picks(node)
            if pick is None or node.graph is None:
                continue
            x, (axis, index, squeezed) = node.inputs[0], pick
            users = [u for u, _ in x.uses()]
            picks = [_picks(u) for u in users]
            dim = x.shape[axis]
            if isinstance(dim, int) and 1 < dim <= MAX_SPLIT and all(p is not None and p[0] == axis for p in picks) \
                    and sorted(p[1] for p in picks) == list(range(dim)):
                self._split(graph, x, axis, dim, users, picks)
            else:
                self._slice(graph, node, axis, index, squeezed)
            modified = True
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _split(graph: ir.Graph, x: ir.Value, axis: int, dim: int, users: list[ir.Node], picks: list) -> None:
        sizes = add_constant(graph, f"{x.name}/split_sizes", [1] * dim)
        split = ir.Node("", "Split", [x, sizes], attributes=[ir.AttrInt64("axis", axis)], num_outputs=dim,
                        name=f"{x.name}/split")
        readers = {id(u) for u in users}
        graph.insert_before(next(n for n in graph if id(n) in readers), [split])  # before the first, in graph order
        axes = add_constant(graph, f"{x.name}/split_axes", [axis])
        for user, (_, index, squeezed) in zip(users, picks):
            part = split.outputs[index]
            nodes = [ir.Node("", "Squeeze", [part, axes], name=f"{user.name}/squeeze")] if squeezed else \
                [ir.Node("", "Identity", [part], name=f"{user.name}/part")]
            replace_node(graph, user, nodes, nodes[-1].outputs[0])

    @staticmethod
    def _slice(graph: ir.Graph, node: ir.Node, axis: int, index: int, squeezed: bool) -> None:
        name = node.name or node.outputs[0].name
        start, end, axes = (add_constant(graph, f"{name}/{k}", [v]) for k, v in
                            (("start", index), ("end", index + 1), ("axes", axis)))
        nodes = [ir.Node("", "Slice", [node.inputs[0], start, end, axes], name=f"{name}/slice")]
        if squeezed:
            nodes.append(ir.Node("", "Squeeze", [nodes[0].outputs[0], axes], name=f"{name}/squeeze"))
        replace_node(graph, node, nodes, nodes[-1].outputs[0])
