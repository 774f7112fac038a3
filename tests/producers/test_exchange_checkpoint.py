"""The producer's durable cursor: atomic, and a damaged file means "start fresh", loudly."""

from __future__ import annotations

from pathlib import Path

from chaincast.producers.checkpoint import Checkpoint, Position


def test_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    cp = Checkpoint.for_endpoint(tmp_path, "binance", "ws://127.0.0.1:9")
    assert cp.load() == {}
    cp.save({"BTCUSDT": Position(10, 1000)})
    cp.save({"BTCUSDT": Position(11, 1001), "ETHUSDT": Position(3, 5)})
    assert cp.load() == {"BTCUSDT": Position(11, 1001), "ETHUSDT": Position(3, 5)}
    assert [p.name for p in cp.path.parent.iterdir()] == [cp.path.name]  # no temp files left behind


def test_unreadable_checkpoint_starts_fresh(tmp_path: Path, caplog) -> None:
    cp = Checkpoint.for_endpoint(tmp_path, "binance", "ws://127.0.0.1:9")
    cp.path.parent.mkdir(parents=True)
    cp.path.write_text('{"BTCUSDT": {"trade_id": 1')
    assert cp.load() == {}
    assert "ignoring unreadable checkpoint" in caplog.text
