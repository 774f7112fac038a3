"""LightGBM quantile forecaster over the flattened recent window, exported to one ONNX graph.

Three boosters with quantile objectives (10/50/90 %) see the last ``lags``
bars of every feature, flattened. For volatility they learn log(y + eps):
quantiles survive a monotone transform, and the log keeps a skewed target
tame. The point forecast is q50 for returns (the MAE optimum) and, for
volatility, q50 scaled so its variance is unbiased on the validation split
(QLIKE's optimum; fitted on validation because in-sample residuals of
boosted trees are optimistic).

The ONNX graph is Slice -> Reshape -> three TreeEnsembleRegressors (from
onnxmltools) -> [Exp] -> Min/Max (ordered band) -> Concat: input ``x``
(B, T, F), output ``y`` (B, 4), like every other family.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chaincast.models.baselines import QUANTILES

EPS = 1e-6
ML_OPSET = 15  # the newest main-domain opset onnxmltools' LightGBM converter emits


@dataclass
class GBMConfig:
    window: int = 32
    n_features: int = 7
    target: str = "log_return"
    lags: int = 16  # bars flattened into the input row
    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_child_samples: int = 200
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    early_stopping: int = 30  # rounds without validation improvement
    seed: int = 0


class GBMForecaster:
    """Numpy in, numpy out; ``to_onnx`` gives the equivalent graph."""

    def __init__(self, cfg: GBMConfig) -> None:
        self.cfg = cfg
        self.lags = min(cfg.lags, cfg.window)
        self.boosters: list[lgb.Booster] = []
        self.scale = 1.0

    def _rows(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(x, dtype=np.float32)[:, -self.lags :, :]).reshape(len(x), -1)

    def _z(self, y: np.ndarray) -> np.ndarray:
        return np.log(y + EPS) if self.cfg.target == "volatility" else y

    def fit(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> GBMForecaster:
        cfg = self.cfg
        rows, rows_val = self._rows(x), self._rows(x_val)
        z, z_val = self._z(y.astype(np.float64)), self._z(y_val.astype(np.float64))
        self.boosters = []
        for q in QUANTILES:
            params = {
                "objective": "quantile", "alpha": q, "learning_rate": cfg.learning_rate,
                "num_leaves": cfg.num_leaves, "min_child_samples": cfg.min_child_samples,
                "subsample": cfg.subsample, "subsample_freq": 1, "colsample_bytree": cfg.colsample_bytree,
                "seed": cfg.seed, "num_threads": 1, "verbose": -1, "deterministic": True,
            }
            train_set = lgb.Dataset(rows, z, free_raw_data=True)
            valid = [lgb.Dataset(rows_val, z_val, reference=train_set)] if len(rows_val) else []
            callbacks = [lgb.early_stopping(cfg.early_stopping, verbose=False)] if valid else []
            self.boosters.append(lgb.train(params, train_set, cfg.n_estimators, valid_sets=valid, callbacks=callbacks))
        if cfg.target == "volatility" and len(x_val):
            med = self.predict(x_val)[:, 2]
            self.scale = float(np.sqrt(np.mean(y_val.astype(np.float64) ** 2 / np.maximum(med, EPS) ** 2)))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x (N, T, F) -> (N, 4) float32 = [y_hat, q10, q50, q90], as the ONNX graph computes it."""
        rows = self._rows(x)
        q = np.column_stack([b.predict(rows, num_iteration=b.best_iteration or None) for b in self.boosters])
        q = q.astype(np.float32)
        if self.cfg.target == "volatility":
            q = np.exp(q) - np.float32(EPS)
        q10, q50, q90 = np.minimum(q[:, 0], q[:, 1]), q[:, 1], np.maximum(q[:, 2], q[:, 1])
        y_hat = q50 * np.float32(self.scale) if self.cfg.target == "volatility" else q50
        return np.column_stack([y_hat, q10, q50, q90]).astype(np.float32)

    def to_onnx(self, window: int) -> bytes:
        """One graph: x (B, window, F) -> y (B, 4)."""
        from onnxmltools import convert_lightgbm  # imported here: export only, never in serving
        from onnxmltools.convert.common.data_types import FloatTensorType

        cfg, d = self.cfg, self.lags * self.cfg.n_features
        nodes: list[onnx.NodeProto] = []
        inits = [
            numpy_helper.from_array(np.array([window - self.lags], np.int64), "start"),
            numpy_helper.from_array(np.array([window], np.int64), "end"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([-1, d], np.int64), "flat_shape"),
            numpy_helper.from_array(np.array(EPS, np.float32), "eps"),
            numpy_helper.from_array(np.array(self.scale, np.float32), "scale"),
        ]
        nodes.append(helper.make_node("Slice", ["x", "start", "end", "axis1"], ["recent"]))
        nodes.append(helper.make_node("Reshape", ["recent", "flat_shape"], ["rows"]))
        for k, booster in enumerate(self.boosters):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sub = convert_lightgbm(booster, initial_types=[("rows", FloatTensorType([None, d]))],
                                       target_opset=ML_OPSET)
            for node in sub.graph.node:
                node.name = f"q{k}_{node.name}"
                node.output[:] = [f"q{k}_{o}" if o != "variable" else f"q{k}_raw" for o in node.output]
                node.input[:] = [i if i == "rows" else f"q{k}_{i}" for i in node.input]
                nodes.append(node)
            for init in sub.graph.initializer:
                init.name = f"q{k}_{init.name}"
                inits.append(init)
            last = f"q{k}_raw"
            if cfg.target == "volatility":
                nodes.append(helper.make_node("Exp", [last], [f"q{k}_exp"]))
                nodes.append(helper.make_node("Sub", [f"q{k}_exp", "eps"], [f"q{k}_val"]))
                last = f"q{k}_val"
            nodes.append(helper.make_node("Identity", [last], [f"q{k}"]))  # (B, 1)
        nodes.append(helper.make_node("Min", ["q0", "q1"], ["lo"]))
        nodes.append(helper.make_node("Max", ["q2", "q1"], ["hi"]))
        point = "q1"
        if cfg.target == "volatility":
            nodes.append(helper.make_node("Mul", ["q1", "scale"], ["point"]))
            point = "point"
        nodes.append(helper.make_node("Concat", [point, "lo", "q1", "hi"], ["y"], axis=1))
        graph = helper.make_graph(
            nodes, "chaincast_lightgbm",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", window, cfg.n_features])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ML_OPSET),
                                                        helper.make_opsetid("ai.onnx.ml", 1)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        buf = io.BytesIO()
        onnx.save_model(model, buf)
        return buf.getvalue()
