"""Write Einsum as Transpose, Reshape, MatMul and ReduceSum, which ONNX Runtime 1.19.2 differentiates.

Why: ORT 1.19.2 has no gradient for Einsum, so a network that multiplies with torch.einsum (SAM's
decomposed relative positions, einsum attention, a bilinear pooling) trained nothing before it.

What it writes, for two operands A and B: letters both have and the output keeps are batch axes
(b); letters both have and the output drops are summed (k); the rest are A's own (m) or B's (n).
A letter only one operand has and the output drops is summed out of it first (ReduceSum).
    A -> Transpose to (b, m, k) -> Reshape to (b, M, K)      M, K: products of the m and k sizes
    B -> Transpose to (b, k, n) -> Reshape to (b, K, N)
    MatMul -> (b, M, N) -> Reshape to (b, m, n) -> Transpose to the output's order
Sizes not known at compile time (a batch beside the heads) are read with Shape where a Reshape
needs them. One operand: ReduceSum over the letters the output drops, then a Transpose. Three or
more: two at a time from the left, keeping the letters later operands or the output still need.
Ellipses become letters; the implicit form (no "->") takes ONNX's output (the ellipsis, then the
letters that appear once, sorted).
Exact: the same products, summed in another order. Memory: MatMul keeps its two inputs for
backward, as torch's einsum keeps its operands.
Left as it is (autodiff then names the op): a letter repeated within one operand (a diagonal), an
ellipsis over different numbers of axes, or an unknown rank.
"""

from __future__ import annotations

import string
from collections import Counter

import numpy as np
import onnx_ir as ir

from tinytlc.passes.forward._values import LOWERED, Constants, replace_node


def parse(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """(one term per operand, the output term), ellipses written as letters; None if unsupported."""
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    spare = [c for c in string.ascii_letters if c not in lhs + rhs]
    ellipsis, out_terms = None, []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            n = rank - (len(term) - 3)
            if n < 0 or (ellipsis is not None and n != len(ellipsis)):
                return None
            ellipsis = "".join(spare[:n])
            term = term.replace("...", ellipsis)
        if len(term) != rank or len(set(term)) != len(term) or (term and not term.isalpha()):
            return None
        out_terms.append(term)
    if arrow:
        if "..." in rhs and ellipsis is None:
            return None
        out = rhs.replace("...", ellipsis or "")
    else:
        counts = Counter("".join(out_terms))
        out = (ellipsis or "") + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in (ellipsis or "")))
    if len(set(out)) != len(out) or not set(out) <= set("".join(out_terms)):
        return None
    return out_terms, out


class _Writer:
    def __init__(self, const: Constants, t: ir.tape.Tape, sizes: dict):
        self.const, self.t, self.sizes = const, t, sizes

    def ints(self, values) -> ir.Value:
        return self.const([int(v) for v in values])

    def transpose(self, x: ir.Value, term: str, order: str) -> ir.Value:
        perm = [term.index(c) for c in order]
        return x if perm == sorted(perm) else self.t.op("Transpose", [x], attributes={"perm": perm})

    def sum_out(self, x: ir.Value, term: str, drop: str) -> tuple[ir.Value, str]:
        if not drop:
            return x, term
        y = self.t.op("ReduceSum", [x, self.ints([term.index(c) for c in drop])], attributes={"keepdims": 0})
        return y, "".join(c for c in term if c not in drop)

    def dims(self, x: ir.Value, term: str, letters: str, product: bool) -> list:
        """The letters' sizes in x (or their product): ints where known, else read from Shape(x)."""
        sizes = [self.sizes[c] for c in letters]
        if all(isinstance(s, int) for s in sizes):
            return [int(np.prod(sizes, dtype=np.int64))] if product else sizes
        read = self.t.op("Gather", [self.t.op("Shape", [x]), self.ints([term.index(c) for c in letters])],
                         attributes={"axis": 0})
        return [self.t.op("ReduceProd", [read], attributes={"keepdims": 1}) if product and len(letters) > 1 else read]

    def reshape(self, x: ir.Value, batch: int, pieces: list) -> ir.Value:
        """x reshaped to (its first `batch` axes as they are, then `pieces`: ints and 1-D int64 values)."""
        parts, ints = [], [0] * batch
        for p in pieces:
            if isinstance(p, ir.Value):
                parts += [self.ints(ints)] if ints else []
                parts, ints = parts + [p], []
            else:
                ints.append(p)
        parts += [self.ints(ints)] if ints else []
        target = parts[0] if len(parts) == 1 else self.t.op("Concat", parts, attributes={"axis": 0})
        return self.t.op("Reshape", [x, target])

    def two(self, a: ir.Value, ta: str, b: ir.Value, tb: str, keep: str) -> tuple[ir.Value, str]:
        a, ta = self.sum_out(a, ta, "".join(c for c in ta if c not in tb and c not in keep))
        b, tb = self.sum_out(b, tb, "".join(c for c in tb if c not in ta and c not in keep))
        batch = "".join(c for c in ta if c in tb and c in keep)
        k = "".join(c for c in ta if c in tb and c not in keep)
        m = "".join(c for c in ta if c not in tb)
        n = "".join(c for c in tb if c not in ta)
        a, ta = self.transpose(a, ta, batch + m + k), batch + m + k
        b, tb = self.transpose(b, tb, batch + k + n), batch + k + n
        y = self.t.op("MatMul", [self.reshape(a, len(batch), self.dims(a, ta, m, True) + self.dims(a, ta, k, True)),
                                 self.reshape(b, len(batch), self.dims(b, tb, k, True) + self.dims(b, tb, n, True))])
        return self.reshape(y, len(batch), self.dims(a, ta, m, False) + self.dims(b, tb, n, False)), batch + m + n


def _lower(const: Constants, node: ir.Node, t: ir.tape.Tape) -> ir.Value | None:
    shapes = [x.shape for x in node.inputs]
    if not node.inputs or any(s is None for s in shapes):
        return None
    parsed = parse(node.attributes.get_string("equation", ""), [len(s) for s in shapes])
    if parsed is None:
        return None
    terms, out = parsed
    sizes: dict[str, int | object] = {}
    for term, shape in zip(terms, shapes):
        for c, d in zip(term, shape):
            if not isinstance(sizes.get(c), int):
                sizes[c] = d
    w = _Writer(const, t, sizes)
    x, term = node.inputs[0], terms[0]
    if len(terms) == 1:
        x, term = w.sum_out(x, term, "".join(c for c in term if c not in out))
    for i in range(1, len(terms)):
        keep = "".join(dict.fromkeys(out + "".join(terms[i + 1:])))
        x, term = w.two(x, term, node.inputs[i], terms[i], keep)
    y = w.transpose(x, term, out)
    return y if y is not node.inputs[0] else t.op("Identity", [y])


class EinsumAsMatMulPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        const = Constants(graph, "tinytlc.einsum")
        for node in list(graph):
            if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx"):
                continue
            t = ir.tape.Tape(graph)
            y = _lower(const, node, t)
            if y is None:
                continue
            for n in t.nodes:
                n.meta[LOWERED] = ("Einsum", node.inputs[0])  # one layer for the accounting
            replace_node(graph, node, t.nodes, y)
            modified = True
        return ir.passes.PassResult(model, modified)
