"""Registry: content addressing, write-once files, listing order, champion pointer, the write backoff."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from chaincast.consumers.registry import MAX_BACKOFF_FACTOR, ORPHAN_GRACE_S, Registry, WriteBackoff
from tests.conftest import fill


def test_put_is_content_addressed_and_write_once(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    data = b"not really onnx, the registry does not care"
    entry = reg.put(data, {"family": "linear", "window": 32})
    sha = hashlib.sha256(data).hexdigest()
    assert entry.version == sha[:12] and entry.sha256 == sha
    assert entry.onnx_path == tmp_path / f"{sha[:12]}.onnx" and entry.onnx_path.read_bytes() == data
    card = json.loads(entry.card_path.read_text())
    assert card["sha256"] == sha and card["version"] == entry.version and card["family"] == "linear"

    again = reg.put(data, {"family": "something else"})  # same bytes: the first card stays
    assert again.card["family"] == "linear"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([entry.onnx_path.name, entry.card_path.name])


def test_list_oldest_first_and_get(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    a = reg.put(b"a", {"family": "gru", "created_at": 2})
    b = reg.put(b"b", {"family": "gru", "created_at": 1})
    assert [e.version for e in reg.list()] == [b.version, a.version]
    assert reg.get(a.version) == a
    with pytest.raises(KeyError):
        reg.get("0" * 12)
    with pytest.raises(KeyError):
        reg.get("../../etc/passwd")


def test_half_written_model_is_invisible(tmp_path: Path) -> None:
    """A model without its card (a crash between the two writes) is not listed; a retry completes it."""
    reg = Registry(tmp_path)
    data = b"model"
    version = hashlib.sha256(data).hexdigest()[:12]
    (tmp_path / f"{version}.onnx").write_bytes(data)
    assert reg.list() == []
    assert reg.put(data, {"family": "lstm"}).version == version
    assert not list(tmp_path.glob(".*.tmp"))


def test_refuses_other_content_under_an_existing_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    data = b"model"
    version = hashlib.sha256(data).hexdigest()[:12]
    (tmp_path / f"{version}.onnx").write_bytes(b"tampered")
    with pytest.raises(ValueError):
        reg.put(data, {})
    assert (tmp_path / f"{version}.onnx").read_bytes() == b"tampered"  # never overwritten


def test_champion_pointer(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    assert reg.champion("forecaster") is None
    a, b = reg.put(b"a", {}), reg.put(b"b", {})
    reg.set_champion("forecaster", a.version)
    reg.set_champion("forecaster", b.version)
    assert reg.champion("forecaster") == b
    reg.set_champion("forecaster", a.version)  # rollback is one call
    assert reg.champion("forecaster") == a
    with pytest.raises(KeyError):
        reg.set_champion("forecaster", "f" * 12)
    with pytest.raises(ValueError):
        reg.set_champion("../x", a.version)


def test_a_full_disk_leaves_nothing_half_written(tmp_path: Path, small_fs) -> None:
    """The model fits, its card does not: the model is taken back, nothing is listed, no temp file stays."""
    root = small_fs(tmp_path / "registry", 64 * 1024)
    reg = Registry(root)
    champion = reg.put(b"champion", {"family": "linear"})
    reg.set_champion("forecaster", champion.version)
    filler = fill(root)
    data = os.urandom(4096)
    filler.write_bytes(filler.read_bytes()[:-4096])  # room for the model's page, none for its card
    with pytest.raises(OSError) as err:
        reg.put(data, {"family": "gru"})
    assert err.value.errno in (errno.ENOSPC, errno.EDQUOT)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["champions", "filler", champion.onnx_path.name, champion.card_path.name])
    assert [e.version for e in reg.list()] == [champion.version]
    assert reg.champion("forecaster") == champion
    filler.unlink()
    assert reg.put(data, {"family": "gru"}).onnx_path.read_bytes() == data  # room again: the same put succeeds


def test_sweep_removes_what_a_killed_writer_left_once_it_is_old(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    kept = reg.put(b"complete", {})
    reg.set_champion("forecaster", kept.version)
    orphan = tmp_path / f"{hashlib.sha256(b'orphan').hexdigest()[:12]}.onnx"  # killed before its card
    orphan.write_bytes(b"orphan")
    stale_tmp = tmp_path / f".{orphan.stem}.json.abc123.tmp"
    stale_tmp.write_text("{}")
    pointer_tmp = tmp_path / "champions" / ".forecaster.json.x.tmp"
    pointer_tmp.write_text("{}")
    young = tmp_path / ".fedcba987654.onnx.y.tmp"  # a put in progress right now
    young.write_bytes(b"in flight")
    old = time.time() - 2 * ORPHAN_GRACE_S
    for p in (orphan, stale_tmp, pointer_tmp, kept.onnx_path, kept.card_path):
        os.utime(p, (old, old))
    assert sorted(reg.sweep()) == sorted([orphan, stale_tmp, pointer_tmp])
    assert young.exists() and reg.champion("forecaster") == kept and [e.version for e in reg.list()] == [kept.version]


def test_write_backoff_doubles_up_to_its_cap_and_a_landed_write_resets_it() -> None:
    backoff = WriteBackoff(10.0)
    assert backoff.due()
    delays = []
    for _ in range(7):
        delays.append(backoff.failed())
        assert not backoff.due() and backoff.retry_at - time.monotonic() <= delays[-1]
    factors = [1, 2, 4, 8, 16, 16, 16]
    assert factors[-1] == MAX_BACKOFF_FACTOR
    for delay, factor in zip(delays, factors):
        assert 0.8 * 10.0 * factor <= delay <= 10.0 * factor  # jitter takes up to a fifth off, never adds
    backoff.landed()
    assert backoff.due() and backoff.failures == 0
    assert 8.0 <= backoff.failed() <= 10.0  # a new streak starts from the base again
