"""ONNX graph rewrites that put edgeda's TensorRT plugins into an exported model.

Each rewrite takes an ``onnx.ModelProto`` and returns a new one (the argument is not changed)
whose plugin nodes have ``op_type`` = plugin name, attributes ``plugin_version`` and
``plugin_namespace`` (how TensorRT's ONNX parser finds an IPluginV3 creator), the plugin's
fields as scalar attributes, and the domain ``ai.onnx.contrib`` so ONNX Runtime can run the same
graph with the CPU ops of :mod:`edgeda.export.plugins_ort`.

* :func:`add_preprocess_prologue` -- a uint8 NHWC ``frame`` input + ``Cast`` (float16 for
  TensorRT, float32 for ONNX Runtime) + ``EdgedaPreprocess`` in front of the float NCHW image
  input. TensorRT plugins cannot take kUINT8 tensors (see ``kernels/README.md``); the cast is
  exact for 0..255.
* :func:`fuse_confidence_epilogue` -- ``EdgedaConfidence`` on the logits, replacing
  ``ArgMax`` / ``ReduceMax(Softmax)`` over the class axis and adding class/confidence/entropy outputs.
* :func:`fuse_instnorm_act` -- ``InstanceNormalization -> Relu | LeakyRelu`` into ``EdgedaInstanceNormAct``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeda.errors import EdgedaError
from edgeda.export.plugins_ort import OP_CONFIDENCE, OP_INSTNORM_ACT, OP_PREPROCESS

PLUGIN_DOMAIN = "ai.onnx.contrib"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
MAX_IR_VERSION = 10  # ONNX Runtime 1.31 refuses IR > 13; TensorRT 10.3's parser knows up to 10


def _plugin_node(op_type: str, inputs, outputs, name: str, **fields) -> onnx.NodeProto:
    return helper.make_node(op_type, inputs, outputs, name=name, domain=PLUGIN_DOMAIN,
                            plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE,
                            **fields)


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after the producers of its inputs (stable otherwise)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progressed = False
        for node in list(pending):
            if all(t in ready for t in node.input):
                ordered.append(node)
                ready.update(node.output)
                pending.remove(node)
                progressed = True
        if not progressed:
            raise EdgedaError("The rewritten graph has a cycle or a dangling input.")
    del graph.node[:]
    graph.node.extend(ordered)


def _finish(model: onnx.ModelProto) -> onnx.ModelProto:
    _toposort(model.graph)
    if not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    model.ir_version = min(model.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _consumers(graph: onnx.GraphProto, name: str):
    return [n for n in graph.node if name in n.input]


def _unique(graph: onnx.GraphProto, base: str) -> str:
    taken = {t for n in graph.node for t in list(n.input) + list(n.output)}
    taken |= {v.name for v in list(graph.input) + list(graph.output) + list(graph.initializer)}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def add_preprocess_prologue(model: onnx.ModelProto, mean: Sequence[float], std: Sequence[float],
                            scale: float = 1.0 / 255.0, input_name: str | None = None,
                            frame_name: str = "frame",
                            frame_dtype: str = "float16") -> onnx.ModelProto:
    """Feed the image input from a uint8 ``(N, frame_height, frame_width, C)`` frame.

    The model input ``(N, C, H, W)`` (float32 or float16, static C/H/W) becomes the output of
    ``EdgedaPreprocess(Cast(frame, frame_dtype), mean, std)``, which computes
    ``(bilinear(frame) * scale - mean_c) / std_c``; frame height and width stay dynamic.
    ``frame_dtype="float16"`` halves the cast's traffic on TensorRT; ONNX Runtime's Python
    custom ops cannot take float16, so graphs to run there use ``"float32"``.
    """
    cast_to = {"float16": TensorProto.FLOAT16, "float32": TensorProto.FLOAT}.get(frame_dtype)
    if cast_to is None:
        raise EdgedaError(f"frame_dtype must be 'float16' or 'float32', got {frame_dtype!r}.")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    target = next((i for i in inputs if input_name in (None, i.name)), None)
    if target is None:
        raise EdgedaError(f"The model has no image input named {input_name!r}.")
    dims, elem = _dims(target), target.type.tensor_type.elem_type
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]) \
            or elem not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise EdgedaError(f"Input {target.name!r} must be float (N, C, H, W) with static C, H, W.")
    c, h, w = dims[1:]
    if len(mean) != c or len(std) != c:
        raise EdgedaError(f"mean and std need {c} values, one per channel.")
    frame_name = _unique(g, frame_name)
    cast, mean_name, std_name = (_unique(g, f"{frame_name}_{frame_dtype}"), _unique(g, "edgeda_mean"),
                                 _unique(g, "edgeda_std"))
    g.initializer.extend([numpy_helper.from_array(np.asarray(mean, np.float32), mean_name),
                          numpy_helper.from_array(np.asarray(std, np.float32), std_name)])
    nodes = [helper.make_node("Cast", [frame_name], [cast], name=f"{frame_name}_cast", to=cast_to),
             _plugin_node(OP_PREPROCESS, [cast, mean_name, std_name], [target.name],
                          name=f"{frame_name}_preprocess", out_height=h, out_width=w,
                          scale=float(scale), fp16_output=int(elem == TensorProto.FLOAT16))]
    for i, node in enumerate(nodes):
        g.node.insert(i, node)
    frame = helper.make_tensor_value_info(frame_name, TensorProto.UINT8,
                                          [dims[0] or "N", "frame_height", "frame_width", c])
    position = list(g.input).index(target)
    g.input.remove(target)
    g.input.insert(position, frame)
    return _finish(model)


def _axis_is_one(node: onnx.NodeProto, rank: int | None, default: int) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), default)
    return axis == 1 or (rank is not None and axis == 1 - rank)


def _reduce_axes(node: onnx.NodeProto, graph: onnx.GraphProto):
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1:  # opset 18: axes is an input
        init = next((i for i in graph.initializer if i.name == node.input[1]), None)
        axes = None if init is None else numpy_helper.to_array(init).reshape(-1).tolist()
    return axes


def fuse_confidence_epilogue(model: onnx.ModelProto, logits: str | None = None,
                             prefix: str = "") -> onnx.ModelProto:
    """Add ``EdgedaConfidence`` on the logits and outputs ``{prefix}class`` (int32),
    ``{prefix}confidence`` = max softmax probability and ``{prefix}entropy``.

    ``ArgMax(x or Softmax(x), axis=1)`` becomes ``Cast(class, int64)`` (+ ``Unsqueeze`` for
    keepdims=1) and ``ReduceMax(Softmax(x), axes=[1])`` becomes the confidence output; a Softmax
    left without consumers is dropped. ``logits`` defaults to the input of the first Softmax or
    ArgMax over axis 1, else to the first graph output.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)
             + list(inferred.graph.input)}
    g = model.graph

    def rank(name):
        return len(_dims(infos[name])) if name in infos else None

    if logits is None:
        heads = [n for n in g.node if n.op_type in ("Softmax", "ArgMax")
                 and _axis_is_one(n, rank(n.input[0]), -1 if n.op_type == "Softmax" else 0)]
        logits = heads[0].input[0] if heads else g.output[0].name
    if logits not in infos or rank(logits) is None or rank(logits) < 2:
        raise EdgedaError(f"Logits {logits!r} need a known rank >= 2 (N, C, ...).")
    elem = infos[logits].type.tensor_type.elem_type
    out_dims = [d for i, d in enumerate(_dims(infos[logits])) if i != 1]
    names = [_unique(g, prefix + n) for n in ("class", "confidence", "entropy")]
    new_nodes = [_plugin_node(OP_CONFIDENCE, [logits], names, name=_unique(g, "edgeda_confidence"))]
    softmaxes = {n.output[0] for n in g.node if n.op_type == "Softmax" and n.input[0] == logits
                 and _axis_is_one(n, rank(logits), -1)}
    removed = []
    for node in list(g.node):
        keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        if node.op_type == "ArgMax" and (node.input[0] == logits or node.input[0] in softmaxes) \
                and _axis_is_one(node, rank(logits), 0) \
                and not any(a.name == "select_last_index" and a.i for a in node.attribute):
            src = names[0]
        elif node.op_type == "ReduceMax" and node.input[0] in softmaxes \
                and _reduce_axes(node, g) in ([1], [1 - rank(logits)]):
            src = names[1]
        else:
            continue
        out = node.output[0]
        mid = _unique(g, out + "_squeezed") if keep else out
        if node.op_type == "ArgMax":
            new_nodes.append(helper.make_node("Cast", [src], [mid], to=TensorProto.INT64))
        else:
            new_nodes.append(helper.make_node("Identity", [src], [mid]))
        if keep:
            axes = _unique(g, out + "_axes")
            g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), axes))
            new_nodes.append(helper.make_node("Unsqueeze", [mid, axes], [out]))
        removed.append(node)
    for node in removed:
        g.node.remove(node)
    outputs = {o.name for o in g.output}
    for node in [n for n in g.node if n.op_type == "Softmax" and n.output[0] in softmaxes]:
        if node.output[0] not in outputs and not _consumers(g, node.output[0]):
            g.node.remove(node)
    g.node.extend(new_nodes)
    g.output.extend([helper.make_tensor_value_info(names[0], TensorProto.INT32, out_dims),
                     helper.make_tensor_value_info(names[1], elem, out_dims),
                     helper.make_tensor_value_info(names[2], elem, out_dims)])
    return _finish(model)


def fuse_instnorm_act(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace ``InstanceNormalization -> Relu | LeakyRelu`` (the norm output used only by the
    activation) with ``EdgedaInstanceNormAct``; returns the new model and the number fused."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    outputs = {o.name for o in g.output}
    fused = 0
    for norm in list(g.node):
        if norm.op_type != "InstanceNormalization" or norm.output[0] in outputs:
            continue
        users = _consumers(g, norm.output[0])
        if len(users) != 1 or users[0].op_type not in ("Relu", "LeakyRelu"):
            continue
        act = users[0]
        eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        alpha = next((a.f for a in act.attribute if a.name == "alpha"), 0.01)
        node = _plugin_node(OP_INSTNORM_ACT, list(norm.input), [act.output[0]],
                            name=_unique(g, (norm.name or "instnorm") + "_act"),
                            epsilon=float(eps), activation=1 if act.op_type == "Relu" else 2,
                            alpha=float(alpha))
        position = list(g.node).index(norm)
        g.node.remove(norm)
        g.node.remove(act)
        g.node.insert(position, node)
        fused += 1
    return _finish(model), fused


def apply_plugins(model: onnx.ModelProto, *, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, confidence: bool = True,
                  instnorm: bool = True, frame_dtype: str = "float16") -> onnx.ModelProto:
    """All rewrites used by ``edgeda export --trt --plugins``: the pre-processing prologue
    when ``mean``/``std`` are given, the confidence epilogue and the instance-norm fusion."""
    if instnorm:
        model, _ = fuse_instnorm_act(model)
    if confidence:
        model = fuse_confidence_epilogue(model)
    if mean is not None and std is not None:
        model = add_preprocess_prologue(model, mean, std, frame_dtype=frame_dtype)
    return model
