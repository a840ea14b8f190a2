"""Pack stored activation masks to 1 bit per element (from 1 byte).

What it removes: 7/8 of every bool mask the activation-mask pass keeps from the forward until the
backward. In the forward, right after a mask is made:
    packed[n, k] = sum_j mask[n, 8k + j] << j     (MatMulInteger of the 0/1 bytes with 1, 2, .., 128)
and the forward's data dependency reads `packed` instead of the mask, so the bool mask dies there.
Each backward reader gets bit j of packed[n, k] back, reshaped to the activation's shape.
A Clip (ReLU6) mask is made from X alone here, (X >= min) and (X <= max), and packed before the
Clip in graph order: activation-masks makes it as Clip(X) == X, which needs Y, so the unpacked
mask would live beside both float maps X and Y (+4.5 MiB at MobileNetV2's first 112 x 112 map).
Exact: a bit holds a bool, and both Clip predicates are ORT's own bounds (NaN: false either way).
Needs the activation's non-batch shape from shape inference.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from tinytlc.passes.training._graph import Constants
from tinytlc.passes.training.activation_masks import MASK, MASK_DEPENDENCY


class PackMasksPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        const = Constants(graph, "tinytlc.pack_const")
        for maker in list(graph):
            for mask in maker.outputs:
                if not mask.meta.get(MASK) or mask.shape is None:
                    continue
                dims = list(mask.shape)[1:]
                if not all(isinstance(d, int) for d in dims):
                    continue
                modified |= self._pack(graph, const, maker, mask, dims)
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _clip_mask_from_input(graph: ir.Graph, maker: ir.Node, mask: ir.Value) -> ir.Node:
        """Equal(Clip(X), X) as And(X >= min, X <= max), placed before the Clip; the new maker."""
        y, x = maker.inputs[0], maker.inputs[1]
        clip = y.producer()
        if maker.op_type != "Equal" or clip is None or clip.op_type != "Clip" or clip.inputs[0] is not x:
            return maker
        lo, hi = (list(clip.inputs[1:3]) + [None, None])[:2]
        t = ir.tape.Tape(graph)
        parts = ([t.op("GreaterOrEqual", [x, lo])] if lo is not None else []) + \
                ([t.op("LessOrEqual", [x, hi])] if hi is not None else [])
        if not parts:
            return maker
        made = parts[0] if len(parts) == 1 else t.op("And", parts)
        graph.insert_before(clip, t.nodes)
        ir.convenience.replace_all_uses_with(mask, made)
        name, mask.name = mask.name, None
        made.name, made.shape, made.type, made.meta[MASK] = name, mask.shape, mask.type, True
        graph.remove(maker, safe=True)
        return made.producer()

    def _pack(self, graph: ir.Graph, const: Constants, maker: ir.Node, mask: ir.Value, dims: list[int]) -> bool:
        maker = self._clip_mask_from_input(graph, maker, mask)
        mask = maker.outputs[0]
        per_sample = int(np.prod(dims))
        k = math.ceil(per_sample / 8)
        readers = list(mask.uses())
        t = ir.tape.Tape(graph)
        flat = t.op("Reshape", [t.op("Cast", [mask], attributes={"to": ir.DataType.UINT8}),
                                const([-1, per_sample])])
        if k * 8 != per_sample:
            flat = t.op("Pad", [flat, const([0, 0, 0, k * 8 - per_sample])])
        lanes = t.op("Reshape", [flat, const([-1, k, 8])])
        weights = const((1 << np.arange(8, dtype=np.uint8)).reshape(8, 1))
        packed = t.op("Cast", [t.op("MatMulInteger", [lanes, weights])], attributes={"to": ir.DataType.UINT8})
        packed.name = f"{mask.name}.packed"
        graph.insert_after(maker, t.nodes)
        for reader, index in readers:
            if reader.meta.get(MASK_DEPENDENCY):
                reader.replace_input_with(index, packed)  # rank 3 now: slice its first element
                reader.replace_input_with(1, const([0, 0, 0]))
                reader.replace_input_with(2, const([1, 1, 1]))
                continue
            u = ir.tape.Tape(graph)
            # bit j alone: shift it to the top (the higher bits fall off the byte), then to the bottom
            # (BitShift is opset 11; BitwiseAnd would need opset 18)
            top = u.op("BitShift", [packed, const(7 - np.arange(8, dtype=np.uint8))],
                       attributes={"direction": "LEFT"})
            bits = u.op("BitShift", [top, const(np.array(7, np.uint8))],
                        attributes={"direction": "RIGHT"})
            flat_bits = u.op("Reshape", [bits, const([-1, k * 8])])
            if k * 8 != per_sample:
                flat_bits = u.op("Slice", [flat_bits, const([0]),
                                           const([per_sample]), const([1])])
            restored = u.op("Cast", [u.op("Reshape", [flat_bits, const([-1, *dims])])],
                            attributes={"to": ir.DataType.BOOL})
            graph.insert_before(reader, u.nodes)
            reader.replace_input_with(index, restored)
        return True
