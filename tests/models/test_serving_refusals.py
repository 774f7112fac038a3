"""Forecaster.load refuses what must not be served, with a one-line reason."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from chaincast.consumers.registry import Registry
from chaincast.models.export import export_onnx
from chaincast.models.families import make_net
from chaincast.models.features import FEATURES
from chaincast.models.serving import Forecaster, ModelRejected

import tests.models.model_fixtures  # noqa: F401 (sets torch to one thread)

WINDOW = 8


class NaNNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1, :4] * torch.log(x[:, -1, :4] * 0 - 1)  # log(-1) = NaN, shape (B, 4)


def _card(family: str = "linear", window: int = WINDOW) -> dict:
    return {"family": family, "window": window, "horizon": 1, "target": "log_return", "features": list(FEATURES)}


def _store(tmp_path: Path, module: nn.Module, window: int = WINDOW, card: dict | None = None):
    data = export_onnx(module, window=window)
    return Registry(tmp_path).put(data, card or _card())


def _reject(path: Path, **kw) -> str:
    with pytest.raises(ModelRejected) as info:
        Forecaster.load(path, **kw)
    reason = str(info.value)
    assert reason and "\n" not in reason
    return reason


@pytest.fixture(scope="module")
def linear() -> nn.Module:
    torch.manual_seed(0)
    return make_net("linear", WINDOW)[0].eval()


def test_loads_a_good_model(tmp_path: Path, linear: nn.Module) -> None:
    entry = _store(tmp_path, linear)
    model = Forecaster.load(entry.onnx_path, expected_sha256=entry.sha256)
    assert model.predict(np.zeros((3, WINDOW, len(FEATURES)), np.float32)).shape == (3, 4)
    with pytest.raises(ValueError):
        model.predict(np.zeros((1, WINDOW + 1, len(FEATURES)), np.float32))


def test_refuses_wrong_sha(tmp_path: Path, linear: nn.Module) -> None:
    entry = _store(tmp_path, linear)
    assert "expected" in _reject(entry.onnx_path, expected_sha256="0" * 64)
    data = bytearray(entry.onnx_path.read_bytes())
    data[-1] ^= 1  # one flipped bit on disk
    entry.onnx_path.chmod(0o644)
    entry.onnx_path.write_bytes(bytes(data))
    assert "card says" in _reject(entry.onnx_path)


def test_refuses_nan_model(tmp_path: Path) -> None:
    entry = _store(tmp_path, NaNNet())
    assert "non-finite" in _reject(entry.onnx_path)


def test_refuses_wrong_input_shape(tmp_path: Path, linear: nn.Module) -> None:
    entry = _store(tmp_path, linear, card=_card(window=WINDOW * 2))  # card claims another window
    assert "input shape" in _reject(entry.onnx_path)


def test_refuses_other_features_and_missing_card(tmp_path: Path, linear: nn.Module) -> None:
    entry = _store(tmp_path, linear, card={**_card(), "features": list(FEATURES)[::-1]})
    assert "features" in _reject(entry.onnx_path)
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(entry.onnx_path.read_bytes())
    assert "no model card" in _reject(lone)


def test_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    data = b"\x80\x04 a pickle, say"
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    path.with_suffix(".json").write_text(json.dumps({**_card(), "sha256": hashlib.sha256(data).hexdigest()}))
    assert "onnxruntime refused" in _reject(path)


def test_refuses_a_card_with_a_bad_window(tmp_path: Path, linear: nn.Module) -> None:
    entry = _store(tmp_path, linear, card={**_card(), "window": "8"})
    assert "window" in _reject(entry.onnx_path)
