"""Bring your own model: contract checks refuse broken graphs with the reason; the gate serves only a winner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from chaincast.consumers.model_import import ImportRefused, check_contract, judge
from chaincast.consumers.registry import Registry
from chaincast.deploy.cli import main
from chaincast.models.features import FEATURES
from chaincast.models.history import CLOSE, HIGH, LOW, OPEN, TS, VOLUME
from tests.consumers.synth import ar_bars

WINDOW, HORIZON = 32, 1
F = len(FEATURES)


def graph(window: int = WINDOW, coef: float = -0.5, nan: bool = False, band: float = 1.5e-3) -> bytes:
    """y_hat = coef * the last bar's return; an 80% band of +-band around it (a hand-built AR(1) forecaster)."""
    c = lambda name, v: helper.make_tensor(name, TensorProto.FLOAT, [], [v])  # noqa: E731
    i = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["last"]),  # (B, 1, 1): x[:, -1:, 0:1]
        helper.make_node("Flatten", ["last"], ["r"], axis=1),  # (B, 1)
        helper.make_node("Mul", ["r", "coef"], ["yhat"]),
        helper.make_node("Sub", ["yhat", "band"], ["q10"]),
        helper.make_node("Add", ["yhat", "band"], ["q90"]),
        helper.make_node("Concat", ["yhat", "q10", "yhat", "q90"], ["y0"], axis=1),  # (B, 4)
        helper.make_node("Mul" if nan else "Identity", ["y0", "nan"] if nan else ["y0"], ["y"]),
    ]
    inits = [i("starts", [-1, 0]), i("ends", [2**62, 1]), i("axes", [1, 2]), c("coef", coef), c("band", band),
             c("nan", float("nan"))]
    g = helper.make_graph(nodes, "ar1",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", window, F])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def card(**over: object) -> dict:
    return {"family": "ar1-by-hand", "window": WINDOW, "horizon": HORIZON, "features": list(FEATURES),
            "target": "log_return", **over}


def ar_market() -> dict[str, np.ndarray]:
    return {"BTCUSDT": ar_bars(1500, phi=-0.5, seed=1), "ETHUSDT": ar_bars(1500, phi=-0.5, seed=2)}


@pytest.mark.parametrize(("onnx_bytes", "the_card", "reason"), [
    (b"\x08\x01garbage", card(), "onnxruntime refused"),
    (graph(window=WINDOW + 1), card(), "input shape"),
    (graph(nan=True), card(), "non-finite"),
    (graph(), card(features=["ret"]), "card features"),
    (graph(), card(target="volatility"), "is not the served .log_return."),
    (graph(), card(horizon=5), "window/horizon 32/5"),
    (graph(), card(sha256="0" * 64), "sha256"),
    (graph(), {"window": WINDOW}, "lacks horizon, features, target"),
])
def test_contract_refusals_say_why(onnx_bytes: bytes, the_card: dict, reason: str) -> None:
    with pytest.raises(ImportRefused, match=reason):
        check_contract(onnx_bytes, the_card, WINDOW, HORIZON)


def test_the_gate_serves_a_model_that_beats_persistence_and_refuses_one_that_does_not() -> None:
    bars = ar_market()
    good = check_contract(graph(coef=-0.5), card(), WINDOW, HORIZON)
    verdict = judge(good, bars, val_bars=240, margin=0.0, alpha=0.1, champion=None)
    assert verdict.decision.promote, verdict.decision
    assert verdict.scores["challenger"].skill > 0.05  # the AR(1) structure is real
    assert verdict.card["imported"] and verdict.card["metrics"]["holdout"]["rows"] > 0

    wrong_sign = check_contract(graph(coef=+0.5), card(), WINDOW, HORIZON)
    bad = judge(wrong_sign, bars, val_bars=240, margin=0.0, alpha=0.1, champion=None)
    assert not bad.decision.promote and bad.decision.reason == "worse_than_reference"


def write_csv(path: Path, bars: np.ndarray) -> Path:
    rows = ["timestamp,open,high,low,close,volume"] + [
        f"{int(b[TS])},{b[OPEN]:.8f},{b[HIGH]:.8f},{b[LOW]:.8f},{b[CLOSE]:.8f},{b[VOLUME]:.6f}" for b in bars]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_cli_imports_a_winner_and_refuses_a_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAINCAST_HOME", str(tmp_path / "home"))
    files = [write_csv(tmp_path / f"{s}-1m-synthetic.csv", b) for s, b in ar_market().items()]
    data = [a for f in files for a in ("--data", str(f))]
    (tmp_path / "card.json").write_text(json.dumps(card()))
    (tmp_path / "broken.onnx").write_bytes(graph()[:200])
    (tmp_path / "good.onnx").write_bytes(graph())

    with pytest.raises(SystemExit) as exit_:
        main(["models", "import", str(tmp_path / "broken.onnx"), "--card", str(tmp_path / "card.json"), *data])
    assert exit_.value.code == 1
    assert "refused: onnxruntime refused broken.onnx" in capsys.readouterr().err
    assert Registry(tmp_path / "home" / "registry").list() == []  # nothing written

    with pytest.raises(SystemExit) as exit_:
        main(["models", "import", str(tmp_path / "good.onnx"), "--card", str(tmp_path / "card.json"), *data])
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out
    registry = Registry(tmp_path / "home" / "registry")
    champion = registry.champion("forecaster")
    assert champion is not None and champion.card["imported"] and champion.card["family"] == "ar1-by-hand"
    assert f"forecaster -> {champion.version} (imported) is the champion" in out
