"""LightGBM fee boosters -> one ONNX graph with the fee models' contract: x (B, T, F) -> y (B, 4).

onnxmltools converts each booster (point, q10, q50, q90) on its own; this module
joins the four graphs under name prefixes and adds what ``FeeModel.predict`` does in
numpy: take the newest ``k`` blocks of the window, flatten them, un-cross the
quantiles, and add the reference feature of the last block.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 15
ML_OPSET = 1


def _booster_graph(booster: Any, columns: int, prefix: str) -> onnx.GraphProto:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = onnxmltools.convert_lightgbm(booster, initial_types=[("flat", FloatTensorType([None, columns]))],
                                         target_opset=OPSET, zipmap=False)
    model = onnx.compose.add_prefix(model, prefix, rename_inputs=False)
    return model.graph


def lightgbm_onnx(boosters: list[Any], window: int, n_features: int, k: int, ref_index: int) -> bytes:
    """One ONNX model from four boosters trained on the flattened newest ``k`` rows."""
    columns = k * n_features
    consts = {
        "start": np.array([window - k], np.int64), "end": np.array([window], np.int64), "axis1": np.array([1], np.int64),
        "flat_shape": np.array([-1, columns], np.int64),
        "ref_start": np.array([window - 1, ref_index], np.int64), "ref_end": np.array([window, ref_index + 1], np.int64),
        "axes12": np.array([1, 2], np.int64), "col_shape": np.array([-1, 1], np.int64),
    }
    nodes = [
        helper.make_node("Slice", ["x", "start", "end", "axis1"], ["newest"]),  # (B, k, F)
        helper.make_node("Reshape", ["newest", "flat_shape"], ["flat"]),  # (B, k*F)
        helper.make_node("Slice", ["x", "ref_start", "ref_end", "axes12"], ["ref3"]),  # (B, 1, 1)
        helper.make_node("Reshape", ["ref3", "col_shape"], ["ref"]),  # (B, 1)
    ]
    initializers = [numpy_helper.from_array(v, k_) for k_, v in consts.items()]
    outs = []
    for i, booster in enumerate(boosters):
        g = _booster_graph(booster, columns, f"b{i}_")
        nodes.extend(g.node)
        initializers.extend(g.initializer)
        raw = g.output[0].name
        nodes.append(helper.make_node("Reshape", [raw, "col_shape"], [f"out{i}"]))  # (B, 1)
        outs.append(f"out{i}")
    point, q10, q50, q90 = outs
    nodes += [
        helper.make_node("Min", [q10, q50], ["q10_ok"]),
        helper.make_node("Max", [q90, q50], ["q90_ok"]),
        helper.make_node("Concat", [point, "q10_ok", q50, "q90_ok"], ["resid"], axis=1),  # (B, 4)
        helper.make_node("Cast", ["resid"], ["resid32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["resid32", "ref"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "lightgbm_fees",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", window, n_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
