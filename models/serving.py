"""Load a verified ONNX forecaster and run it: what the stream's predict agent uses.

``Forecaster.load`` trusts nothing: the file's sha256 must match its card (and
the version the caller expects), the card's feature list must be this code's
``FEATURES``, the graph must take ``x`` (B, window, F) with a dynamic batch and
give ``y`` (B, 4), and a smoke inference must be finite. Anything else raises
``ModelRejected`` with a one-line reason, so the old model keeps serving.
Nothing is unpickled: the card is JSON, the model is ONNX.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from chaincast.models.features import SERVABLE_GROUPS, feature_names

# onnxruntime raises these (all direct Exception subclasses) for bad graphs and bad inputs.
ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NoModel,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
)


def session(onnx_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    """One onnxruntime session from bytes (the bytes that were hashed, not a path re-read later).

    It lives here, not in ``models.export``, so that serving never imports torch.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # warnings from ORT graph rewrites are noise here
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


class ModelRejected(Exception):
    """A model file that must not be served; the message is a one-line reason."""


def card_path_of(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def load_card_json(path: Path) -> Any:
    """The parsed JSON of a model card; a missing or unreadable card is a ``ModelRejected``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelRejected(f"no model card beside the model: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ModelRejected(f"unreadable model card {path}: {exc}") from None


def _read_card(path: Path) -> dict[str, Any]:
    card = load_card_json(path)
    if not isinstance(card, dict):
        raise ModelRejected(f"model card {path} is not a JSON object")
    for key in ("sha256", "family", "window", "horizon", "features"):
        if key not in card:
            raise ModelRejected(f"model card {path} lacks {key!r}")
    for key in ("window", "horizon"):
        if not isinstance(card[key], int) or card[key] < 1:
            raise ModelRejected(f"model card {path}: {key} must be a positive integer, not {card[key]!r}")
    return card


@dataclass
class Forecaster:
    name: str
    version: str
    family: str
    window: int
    horizon: int
    features: tuple[str, ...]
    groups: tuple[str, ...]
    card: dict[str, Any]
    sha256: str
    _session: ort.InferenceSession = field(repr=False)

    @classmethod
    def load(cls, onnx_path: str | Path, expected_sha256: str | None = None, threads: int = 1,
             features: tuple[str, ...] | None = None) -> Forecaster:
        """``features``: what the caller will feed (the fee models' own); ``None`` for a market model,
        whose features follow from the feature groups on its card."""
        onnx_path = Path(onnx_path)
        try:
            data = onnx_path.read_bytes()
        except OSError as exc:
            raise ModelRejected(f"cannot read {onnx_path}: {exc.strerror or exc}") from None
        card = _read_card(card_path_of(onnx_path))
        sha = hashlib.sha256(data).hexdigest()
        if sha != card["sha256"]:
            raise ModelRejected(f"sha256 of {onnx_path.name} is {sha[:12]}, its card says {str(card['sha256'])[:12]}")
        if expected_sha256 is not None and sha != expected_sha256:
            raise ModelRejected(f"sha256 of {onnx_path.name} is {sha[:12]}, expected {expected_sha256[:12]}")
        groups = card.get("feature_groups", ["base"])
        if features is None:
            if not isinstance(groups, list) or not set(groups) <= set(SERVABLE_GROUPS):
                raise ModelRejected(f"feature groups {groups} cannot be served (servable: {list(SERVABLE_GROUPS)})")
            features = feature_names(tuple(groups))
        if not isinstance(card["features"], list) or tuple(card["features"]) != features:
            raise ModelRejected(f"card features {card['features']} differ from this code's {list(features)}")
        try:
            sess = session(data, threads)  # from the hashed bytes: no window to swap the file
        except ORT_ERRORS as exc:
            raise ModelRejected(f"onnxruntime refused {onnx_path.name}: {_first_line(exc)}") from None
        model = cls(
            name=str(card.get("name", card["family"])),
            version=str(card.get("version", sha[:12])),
            family=str(card["family"]),
            window=int(card["window"]),
            horizon=int(card["horizon"]),
            features=features,
            groups=tuple(groups),
            card=card,
            sha256=sha,
            _session=sess,
        )
        model._check_signature()
        model._smoke()
        return model

    def _check_signature(self) -> None:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if [i.name for i in inputs] != ["x"] or [o.name for o in outputs] != ["y"]:
            names = f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}"
            raise ModelRejected(f"graph must map ['x'] -> ['y'], it maps {names}")
        shape = inputs[0].shape
        if len(shape) != 3 or isinstance(shape[0], int) or list(shape[1:]) != [self.window, len(self.features)]:
            want = f"(batch, {self.window}, {len(self.features)})"
            raise ModelRejected(f"input shape {shape} is not {want} with a dynamic batch")

    def _smoke(self) -> None:
        # Random windows near the scale of real features: returns ~1e-3, ratios ~0.5.
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((2, self.window, len(self.features))) * 1e-3).astype(np.float32)
        if "buy_ratio" in self.features:
            x[:, :, self.features.index("buy_ratio")] = 0.5
        try:
            y = self._session.run(["y"], {"x": x})[0]
        except ORT_ERRORS as exc:
            raise ModelRejected(f"smoke inference failed: {_first_line(exc)}") from None
        if y.shape != (2, 4):
            raise ModelRejected(f"smoke inference gave shape {y.shape}, expected (2, 4)")
        if not np.isfinite(y).all():
            raise ModelRejected("smoke inference gave non-finite outputs")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x (B, window, F) float32 -> (B, 4) float32 = [y_hat, q10, q50, q90]."""
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[1:] != (self.window, len(self.features)):
            raise ValueError(f"input shape {x.shape} is not (B, {self.window}, {len(self.features)})")
        return self._session.run(["y"], {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
