"""One contract test over every family: train a few steps, export, parity, registry, Forecaster.

Parity is checked against the trained model as it runs in training (torch, or
LightGBM for the gradient-boosting family), within the export's limit (1e-4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from chaincast.consumers.registry import Registry
from chaincast.models.build import export_checked
from chaincast.models.evaluate import predict
from chaincast.models.export import PARITY_LIMIT
from chaincast.models.families import FAMILIES
from chaincast.models.features import FEATURES, window_tensor
from chaincast.models.history import BUY_VOLUME, VOLUME
from chaincast.models.transformer import TransformerBody, TransformerConfig
from chaincast.models.serving import Forecaster
from chaincast.models.train import FitOptions, train
from tests.models.model_fixtures import btc_2023, btc_slice  # noqa: F401 (pytest fixtures)

WINDOW = 16
TINY = {"lightgbm": {"n_estimators": 20}}  # a few trees: the contract, not the skill


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("target", ["log_return", "volatility"])
def test_family_contract(family: str, target: str, btc_slice: np.ndarray, tmp_path: Path) -> None:
    result = train(
        [btc_slice], family, window=WINDOW, horizon=3, seed=0, target=target,
        options=FitOptions(max_epochs=2, max_steps_per_epoch=5, overrides=TINY.get(family, {})),
    )
    card = result.card
    assert card["features"] == list(FEATURES) and card["target"] == target
    for split in ("val", "test"):
        m = card["metrics"][split]
        assert all(np.isfinite(v) for v in m.values())
        assert m["mae_persistence"] > 0
    if family == "persistence":
        assert card["metrics"]["test"]["skill_vs_persistence"] == 0.0
    pred = result.test_pred
    assert pred.shape == (len(result.test), 4)
    assert np.all(pred[:, 1] <= pred[:, 2] + 1e-9) and np.all(pred[:, 2] <= pred[:, 3] + 1e-9)  # ordered band

    onnx_bytes, card = export_checked(result)
    assert card["parity_max_abs_diff"] <= PARITY_LIMIT

    entry = Registry(tmp_path / "registry").put(onnx_bytes, card)
    model = Forecaster.load(entry.onnx_path, expected_sha256=entry.sha256)
    assert (model.family, model.window, model.horizon, model.version) == (family, WINDOW, 3, entry.version)

    x = window_tensor(btc_slice, WINDOW)  # the serving path: same feature code, last bars
    assert x is not None and x.shape == (1, WINDOW, len(FEATURES))
    batch = np.concatenate([x, result.test.x[:7]])  # dynamic batch: 8 here, 2 in the smoke test
    expected = predict(result.module, batch)
    np.testing.assert_allclose(model.predict(batch), expected, rtol=0, atol=PARITY_LIMIT)
    np.testing.assert_allclose(model.predict(x), expected[:1], rtol=0, atol=PARITY_LIMIT)  # batch 1 too
    if family == "persistence" and target == "log_return":
        y_hat, q10, q50, q90 = model.predict(x)[0]
        assert y_hat == 0.0 and q10 < 0 < q90  # the fallback: no move, a volatility band


def test_training_is_seeded(btc_slice: np.ndarray) -> None:
    opts = FitOptions(max_epochs=2, max_steps_per_epoch=5)
    a, b, c = (train([btc_slice], "gru", window=WINDOW, seed=s, options=opts) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.test_pred, b.test_pred)
    assert not np.array_equal(a.test_pred, c.test_pred)


def test_transformer_every_bar_reaches_the_output() -> None:
    """The gradient of the forecast w.r.t. every bar of the window is non-zero (no dead positions)."""
    torch.manual_seed(0)
    cfg = TransformerConfig(window=32, n_features=len(FEATURES), n_layers=2, band=8)
    body = TransformerBody(cfg)
    z = torch.randn(3, 32, len(FEATURES), requires_grad=True)
    body(z).sum().backward()
    per_bar = z.grad.abs().sum(dim=(0, 2))  # (T,)
    assert bool((per_bar > 0).all()), f"dead positions: {torch.flatnonzero(per_bar == 0).tolist()}"


@pytest.mark.parametrize("family", ["linear", "gru", "lstm", "transformer"])
def test_a_feature_constant_in_training_is_ignored_when_it_varies_live(family: str, btc_slice: np.ndarray,
                                                                       tmp_path: Path) -> None:
    """The bundled exports carry no taker buy volume, so the buy ratio is 0.5 throughout training;
    live trades carry their side, so it varies. Scaled by its ~0 training spread, any live value was
    millions of deviations out: every forecast absurd and refused by the worker. The model must
    ignore the feature it never saw vary, in torch and in the exported graph."""
    assert np.isnan(btc_slice[:, BUY_VOLUME]).all()  # what the model is trained on: no buy volume
    result = train([btc_slice], family, window=WINDOW, horizon=1, seed=0,
                   options=FitOptions(max_epochs=1, max_steps_per_epoch=5))
    onnx_bytes, card = export_checked(result)
    entry = Registry(tmp_path / "registry").put(onnx_bytes, card)
    model = Forecaster.load(entry.onnx_path, expected_sha256=entry.sha256)
    live = btc_slice.copy()
    live[:, BUY_VOLUME] = 0.7 * live[:, VOLUME]  # the side of every trade known: a 0.7 buy ratio
    x_export, x_live = window_tensor(btc_slice, WINDOW), window_tensor(live, WINDOW)
    assert x_export is not None and x_live is not None and not np.allclose(x_export, x_live)
    for forecast in (lambda x: predict(result.module, x), model.predict):
        served, trained = forecast(x_live), forecast(x_export)
        assert np.isfinite(served).all() and np.abs(served).max() < 0.1, served  # a 1-minute log return
        np.testing.assert_allclose(served, trained, rtol=0, atol=PARITY_LIMIT)
