"""Graph rewrites for the ONNX Runtime-only graph (``export onnx --fused-attention``).

The exported transformer block is pre-norm: ``x1 = x + W_o o + b_o; h = LN_2(x1); x2 = x1 + W_2 gelu(...) + b_2``,
then the next block's ``LN_1(x2)``. Unfused, every residual sum is an Add over [B, N, W] followed by a
LayerNormalization reading it back, and every bias is one more Add: on an H100 at batch 256 (ViT-B/16, fp16) those
element-wise passes took about a fifth of the graph's GPU time. ONNX Runtime's ``SkipLayerNormalization`` does
``bias + input + skip`` and the normalization in one pass and also returns the sum (its 4th output) for the next
residual. The fusion passes are onnxruntime's own (``onnxruntime.transformers``); what this module adds is the shape
evidence they check: ONNX shape inference must see both inputs of a residual Add as the same [batch, N, W].
"""

from __future__ import annotations

import math
from typing import Any


CONTRIB_SAME_SHAPE = ("Attention",)  # contrib ops whose output 0 has input 0's shape in our graphs ([B, N, W])


def inferred_shapes(model: Any) -> dict[str, list[int | str | None]]:
    """Shape of every value by ONNX shape inference, carried through ONNX Runtime's attention ops (which ONNX does not
    know): each one's output 0 gets its input 0's shape, and inference runs again until nothing new is learned.
    Works on a copy without the float weights' data (only their dims matter)."""
    import onnx
    from onnx import helper

    light = onnx.ModelProto()
    light.CopyFrom(model)
    del light.graph.value_info[:]  # the exporter's guesses, e.g. made-up dims for contrib outputs
    for t in light.graph.initializer:
        if t.data_type != onnx.TensorProto.INT64:
            t.ClearField("raw_data")
            t.ClearField("float_data")
    contrib = [n for n in light.graph.node if n.domain == "com.microsoft" and n.op_type in CONTRIB_SAME_SHAPE]
    while True:
        inferred = onnx.shape_inference.infer_shapes(light)
        values = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)
                  + list(inferred.graph.output)}
        shapes = {name: _dims(v) for name, v in values.items()}
        learned = [n for n in contrib if shapes.get(n.output[0]) is None and shapes.get(n.input[0]) is not None]
        if not learned:
            return shapes
        for n in learned:
            light.graph.value_info.append(helper.make_tensor_value_info(
                n.output[0], values[n.input[0]].type.tensor_type.elem_type, shapes[n.input[0]]))


def pin_batch_reshapes(model: Any) -> int:
    """Rewrite each Reshape target [-1, d1..dk] as [0, d1..dk] where its input is [b, s1..sm] with static s and
    prod(s) == prod(d): the same tensor (0 copies the input's dim 0, which is then b), but ONNX shape inference carries
    the input's batch symbol through instead of inventing a new one per Reshape. Returns the number rewritten."""
    from onnx import numpy_helper

    shapes = inferred_shapes(model)
    targets = {i.name: i for i in model.graph.initializer}
    targets.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                    if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    pinned = 0
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        dims, tensor = shapes.get(node.input[0]), targets.get(node.input[1])
        if tensor is None or not dims or isinstance(dims[0], int):
            continue
        target = numpy_helper.to_array(tensor)
        static = dims[1:]
        if (target.ndim == 1 and target.size and target[0] == -1 and (target[1:] > 0).all()
                and all(isinstance(d, int) for d in static) and math.prod(static) == math.prod(target[1:].tolist())):
            target = target.copy()
            target[0] = 0
            tensor.CopyFrom(numpy_helper.from_array(target, tensor.name))
            pinned += 1
    return pinned


def _dims(value_info: Any) -> list[int | str | None] | None:
    """A value's shape as ints (static), strings (symbolic) or None (unknown); None when it has no shape."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


class _InferredShapes:
    """What onnxruntime's fusions ask of a shape helper (``get_edge_shape``), answered by ONNX shape inference.

    An unknown dimension is its own object, so two unknowns never compare equal."""

    def __init__(self, model: Any):
        self.shapes = inferred_shapes(model)

    def get_edge_shape(self, name: str) -> list[Any] | None:
        dims = self.shapes.get(name)
        return None if dims is None else [object() if d is None else d for d in dims]


def _materialize_initializer_identities(wrapped: Any) -> None:
    """Replace each ``Identity(initializer)`` by an initializer of its own under the Identity's output name. The torch
    exporter writes equal weights (e.g. the zero biases of a fresh model) once and the copies as Identity nodes; the
    bias fusion needs an initializer. A copy, not a shared read: the fp16 converter names the Cast it puts before an
    fp32-kept op after the initializer it reads, so two such ops reading one initializer would collide."""
    from onnx import numpy_helper

    outputs = {o.name for o in wrapped.model.graph.output}
    for node in list(wrapped.model.graph.node):
        source = wrapped.get_initializer(node.input[0]) if node.op_type == "Identity" else None
        if source is None or node.output[0] in outputs:
            continue
        wrapped.add_initializer(numpy_helper.from_array(numpy_helper.to_array(source), node.output[0]))
        wrapped.remove_node(node)


def fuse_skip_layer_norm(model: Any) -> dict[str, int]:
    """In place: residual Add + LayerNormalization -> ``com.microsoft::SkipLayerNormalization`` (the sum kept as its
    4th output where later nodes read it), then a bias Add between a MatMul and it folded in as its bias input.
    Only Adds whose two inputs ONNX shape inference proves to be the same rank-3 shape are fused. Returns the count
    of each fused node kind."""
    from onnxruntime.transformers.fusion_skiplayernorm import (FusionBiasSkipLayerNormalization,
                                                               FusionSkipLayerNormalization)
    from onnxruntime.transformers.onnx_model import OnnxModel

    pin_batch_reshapes(model)
    wrapped = OnnxModel(model)
    _materialize_initializer_identities(wrapped)
    skip = FusionSkipLayerNormalization(wrapped, shape_infer=False)
    skip.shape_infer_helper = _InferredShapes(model)  # the library's own shape check, with ONNX's inference
    skip.apply()
    sln = sum(n.op_type == "SkipLayerNormalization" for n in model.graph.node)
    FusionBiasSkipLayerNormalization(wrapped).apply()
    wrapped.prune_graph()
    with_bias = sum(n.op_type == "SkipLayerNormalization" and len(n.input) == 5 for n in model.graph.node)
    wrapped.topological_sort()
    return {"SkipLayerNormalization": sln, "with bias": with_bias}
