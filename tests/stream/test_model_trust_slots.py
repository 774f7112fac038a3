"""Every model slot a worker serves from (market, fee, transaction value) trusts only the registry.

The slots are built from the settings the way the worker builds them; each is offered a
genuine signed update, then the forgeries ``stream.model_trust`` refuses: unsigned,
mis-signed, a uri outside the registry (even correctly signed), an oversized file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaincast.consumers.promotion import model_update
from chaincast.consumers.registry import Registry
from chaincast.models.blocks import load_blocks
from chaincast.models.build import build_model
from chaincast.models.fee_build import build_fee_model
from chaincast.models.fee_models import FeeFit
from chaincast.models.history import load_bars
from chaincast.stream.agents.txs import tx_slot
from chaincast.stream.fee_models import fee_slots
from chaincast.stream.model_slot import ModelSlot
from chaincast.stream.model_trust import signed
from chaincast.stream.records import ModelUpdate
from chaincast.stream.settings import Settings
from tests.conftest import PROJECT_DATA, TEST_DATA
from tests.stream.test_txs import build_tx_entry

KEY = "slot-signing-key"
KINDS = ("market", "fee", "tx")


@dataclass
class Case:
    settings: Settings
    update: ModelUpdate  # genuine, unsigned

    def slot(self, kind: str, **env: str) -> ModelSlot:
        settings = self.settings.model_copy(update={k: v for k, v in env.items()})
        if kind == "market":
            return ModelSlot(settings.model_name, window=settings.window, **ModelSlot.trusting(settings))
        if kind == "fee":
            return fee_slots(settings)[self.update.name]
        return tx_slot(settings)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    settings = Settings(CHAINCAST_HOME=str(tmp_path_factory.mktemp("home")), CHAINCAST_MODEL_SIGNING_KEY=KEY,
                        CHAINCAST_FEE_HORIZONS="1", CHAINCAST_FEE_WINDOW="8", CHAINCAST_WINDOW="8")
    registry = Registry(settings.registry_dir)
    bars = load_bars(next(PROJECT_DATA.glob("BTCUSDT-1m-*.csv.gz")))[:1440]
    market = build_model([bars], "persistence", settings.window, 1, registry, name=settings.model_name)
    blocks = load_blocks(TEST_DATA / "chain" / "mainnet_blocks_18640000_18643999.csv.gz").blocks[1000:2000]
    fee = build_fee_model(blocks, "persistence", "base_fee", 1, settings.fee_window, registry, "fees.base_fee.h1",
                          FeeFit(max_epochs=1, max_steps_per_epoch=5))
    tx, _ = build_tx_entry(registry)
    return {"market": Case(settings, model_update(settings.model_name, market)),
            "fee": Case(settings, model_update("fees.base_fee.h1", fee)),
            "tx": Case(settings, model_update(settings.tx_model_name, tx))}


async def offer(slot: ModelSlot, update: ModelUpdate) -> tuple[bool, list[str]]:
    reasons: list[str] = []

    async def refused(_update: ModelUpdate, reason: str) -> None:
        reasons.append(reason)

    return await slot.offer(update, refused), reasons


@pytest.mark.parametrize("kind", KINDS)
async def test_a_signed_update_from_the_registry_serves(cases, kind):
    case = cases[kind]
    slot = case.slot(kind)
    assert await offer(slot, signed(case.update, KEY)) == (True, [])
    assert slot.current is not None and slot.current.version == case.update.version


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("forge", "reason"), [
    (lambda u: u, "untrusted: the update is not signed"),
    (lambda u: signed(u, "another key"), "untrusted: bad signature"),
    (lambda u: signed(u, KEY).model_copy(update={"sha256": "0" * 64}), "untrusted: bad signature"),
])
async def test_unsigned_or_mis_signed_updates_are_refused(cases, kind, forge, reason):
    case = cases[kind]
    slot = case.slot(kind)
    assert await offer(slot, forge(case.update)) == (False, [f"model_refused: {reason}"])
    assert slot.current is None


@pytest.mark.parametrize("kind", KINDS)
async def test_a_uri_outside_the_registry_is_refused_even_when_signed(cases, kind, tmp_path):
    case = cases[kind]
    outside = tmp_path / "copy.onnx"
    shutil.copy(Path(case.update.uri.removeprefix("file://")), outside)
    for uri in ("file:///dev/zero", outside.as_uri()):
        ok, reasons = await offer(case.slot(kind), signed(case.update.model_copy(update={"uri": uri}), KEY))
        assert not ok and reasons[0].startswith("model_refused: untrusted:") and "outside the registry" in reasons[0]


@pytest.mark.parametrize("kind", KINDS)
async def test_an_oversized_file_is_refused_before_reading(cases, kind):
    case = cases[kind]
    size = Path(case.update.uri.removeprefix("file://")).stat().st_size
    assert size > 1024
    ok, reasons = await offer(case.slot(kind, model_max_bytes=1024), signed(case.update, KEY))
    assert not ok and reasons == [f"model_refused: too large: {case.update.version}.onnx has {size} bytes > 1024"]
