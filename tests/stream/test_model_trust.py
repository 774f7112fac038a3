"""Model updates are trusted only from the registry, signed when a key is set, and size-checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chaincast.consumers.promotion import model_update
from chaincast.consumers.registry import Registry
from chaincast.models.build import build_model
from chaincast.models.history import load_bars
from chaincast.stream.model_trust import signed
from chaincast.models.targets import ForecastSpec
from chaincast.stream.model_slot import ModelSlot, ModelSlots
from chaincast.stream.records import ModelUpdate
from tests.conftest import PROJECT_DATA

WINDOW = 8
KEY = "test-signing-key"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelUpdate]:
    root = tmp_path_factory.mktemp("registry")
    bars = load_bars(next(PROJECT_DATA.glob("BTCUSDT-1m-*.csv.gz")))[:1440]
    entry = build_model([bars], "persistence", WINDOW, 1, Registry(root), name="m")
    return root, model_update("m", entry)


async def offer(root: Path, update: ModelUpdate, key: str | None = KEY, max_bytes: int = 10_000_000
                ) -> tuple[bool, list[str]]:
    slot = ModelSlot("m", window=WINDOW, registry_dir=root, signing_key=key, max_bytes=max_bytes)
    reasons: list[str] = []

    async def refused(_update: ModelUpdate, reason: str) -> None:
        reasons.append(reason)

    return await slot.offer(update, refused), reasons


async def test_a_signed_update_from_the_registry_serves(registry):
    root, update = registry
    assert await offer(root, signed(update, KEY)) == (True, [])
    assert await offer(root, update, key=None) == (True, [])  # no key configured: no signature needed


@pytest.mark.parametrize(("change", "reason"), [
    ({"signature": ""}, "untrusted: the update is not signed"),
    ({"signature": "0" * 64}, "untrusted: bad signature"),
])
async def test_unsigned_or_mis_signed_updates_are_refused(registry, change, reason):
    root, update = registry
    ok, reasons = await offer(root, signed(update, KEY).model_copy(update=change))
    assert not ok and reasons == [f"model_refused: {reason}"]


async def test_a_signature_does_not_survive_a_changed_field(registry):
    root, update = registry
    forged = signed(update, KEY).model_copy(update={"version": "f" * 12})
    ok, reasons = await offer(root, forged)
    assert not ok and reasons == ["model_refused: untrusted: bad signature"]


async def test_uris_outside_the_registry_are_refused_before_reading(registry, tmp_path):
    root, update = registry
    outside = tmp_path / "model.onnx"
    outside.write_bytes(Path(update.uri.removeprefix("file://")).read_bytes())
    link = root / "link.onnx"
    link.unlink(missing_ok=True)
    os.symlink(outside, link)
    for uri in ("file:///dev/zero", outside.as_uri(), link.as_uri(), (root / ".." / "x.onnx").as_uri()):
        ok, reasons = await offer(root, update.model_copy(update={"uri": uri}), key=None)
        assert not ok and reasons[0].startswith("model_refused: untrusted:") and "outside the registry" in reasons[0]


async def test_an_oversized_file_is_refused_before_reading(registry):
    root, update = registry
    ok, reasons = await offer(root, update, key=None, max_bytes=1024)
    assert not ok and reasons[0].startswith("model_refused: too large:")


async def test_a_slot_refuses_a_model_of_another_target_or_horizon(registry):
    root, update = registry  # a log_return model, horizon 1
    for spec, ok in ((ForecastSpec("log_return", 1), True), (ForecastSpec("volatility", 1), False),
                     (ForecastSpec("log_return", 5), False)):
        slot = ModelSlot("m", window=WINDOW, registry_dir=root, spec=spec)
        reasons: list[str] = []

        async def refused(_update: ModelUpdate, reason: str) -> None:
            reasons.append(reason)

        assert await slot.offer(update, refused) is ok
        if not ok:
            assert reasons == [f"model_refused: model forecasts log_return:1, the slot m serves {spec.label}"]


async def test_slots_serve_whatever_has_a_model_and_are_ready_with_the_default(registry):
    root, update = registry
    default = ModelSlot("m", window=WINDOW, registry_dir=root, spec=ForecastSpec("log_return", 1))
    extra = ModelSlot("m-volatility-5", window=WINDOW, registry_dir=root, spec=ForecastSpec("volatility", 5))
    slots = ModelSlots([default, extra])
    assert slots.serving() == [] and not slots.ready.is_set()
    assert await default.offer(update)
    assert slots.ready.is_set() and [m.version for m in slots.serving()] == [update.version]
    assert slots.get("m-volatility-5") is extra and slots.get("other") is None
