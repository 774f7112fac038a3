"""Every message chaincast sends, defined once.

Producers, stream workers and consumers import these classes; no field list is
written twice. Values travel as JSON (UTF-8) with a ``schema`` version field.
Validation is strict where bad input is likely: prices must be finite and
positive, timestamps are integers in milliseconds (blocks: seconds, as on
chain), and amounts in wei stay exact integers, serialised as decimal strings.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator, model_validator

from chaincast.models.timeunits import MINUTE_MS

SCHEMA_VERSION = 1

PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegFinite = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# Wei amounts overflow 64-bit JSON numbers: exact int in Python, decimal string on the wire.
Wei = Annotated[int, Field(ge=0), PlainSerializer(str, return_type=str, when_used="json")]


class Record(BaseModel):
    """Base of every message: frozen, validated, JSON with a ``schema`` field."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")
    schema_version: int = Field(SCHEMA_VERSION, alias="schema", ge=1)

    @field_validator("schema_version")
    @classmethod
    def _not_newer(cls, version: int) -> int:
        """A record from a newer schema is refused, not guessed at (the rule: ``stream/schemas.py``)."""
        if version > SCHEMA_VERSION:
            raise ValueError(f"schema {version} is newer than this reader's {SCHEMA_VERSION}")
        return version

    def dumps(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def loads(cls, raw: bytes | str) -> Self:
        return cls.model_validate_json(raw)


def market_key(exchange: str, symbol: str) -> str:
    """The Kafka key of every per-market topic: ``exchange:SYMBOL``.

    >>> market_key("binance", "btcusdt")
    'binance:BTCUSDT'
    """
    return f"{exchange}:{symbol.upper()}"


def forecaster_key(target: str, horizon: int) -> str:
    """The stable id of a forecaster (target and horizon, across model versions): ``volatility:h5``.

    >>> forecaster_key("volatility", 5), parse_forecaster("volatility:h5"), parse_forecaster("volatility:5")
    ('volatility:h5', ('volatility', 5), ('volatility', 5))
    """
    return f"{target}:h{horizon}"


def parse_forecaster(text: str) -> tuple[str, int]:
    """(target, horizon) of ``log_return:h1`` (or the settings' spelling ``log_return:1``); ValueError if neither."""
    target, sep, horizon = text.strip().partition(":")
    try:
        h = int(horizon.removeprefix("h"))
    except ValueError:
        h = 0
    if not sep or not target or h < 1:
        raise ValueError(f"a forecaster is target:h<horizon>, e.g. log_return:h1, not {text!r}")
    return target, h


class Trade(Record):
    exchange: str
    symbol: str
    trade_id: int = Field(ge=0)
    price: PositiveFinite
    qty: PositiveFinite
    side: Literal["buy", "sell"]  # the taker's side
    ts_event: int = Field(ge=0)  # ms, exchange time
    ts_ingest: int = Field(0, ge=0)  # ms, when chaincast received it


class TradeBatch(Record):
    """Consecutive trades of one symbol in one message (throughput: one
    Kafka record per batch instead of per trade; every trade intact)."""

    exchange: str
    symbol: str
    trades: list[Trade] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_symbol(self) -> Self:
        for t in self.trades:
            if t.symbol != self.symbol or t.exchange != self.exchange:
                raise ValueError(f"batch for {self.exchange}:{self.symbol} holds a trade of {t.exchange}:{t.symbol}")
        return self


class ChainFeatures(Record):
    """On-chain activity aggregated over one bar's minute."""

    blocks: int = Field(ge=0)
    base_fee_gwei: NonNegFinite
    base_fee_change: Finite  # log change of the base fee over the minute
    gas_utilisation: NonNegFinite  # gas_used / gas_limit, mean over the blocks
    tx_count: int = Field(ge=0)
    value_eth: NonNegFinite


class Bar(Record):
    exchange: str
    symbol: str
    ts: int = Field(ge=0)  # bar open time, ms
    interval_ms: int = MINUTE_MS
    open: PositiveFinite
    high: PositiveFinite
    low: PositiveFinite
    close: PositiveFinite
    volume: NonNegFinite
    trades: int = Field(ge=0)
    buy_volume: NonNegFinite = 0.0
    vwap: PositiveFinite
    first_trade_id: int = -1
    last_trade_id: int = -1
    chain: ChainFeatures | None = None

    @property
    def close_ts(self) -> int:
        return self.ts + self.interval_ms


class Block(Record):
    chain_id: int
    number: int = Field(ge=0)
    hash: str
    parent_hash: str
    timestamp: int = Field(ge=0)  # seconds, as on chain
    base_fee: Wei | None = None  # absent before London
    gas_used: int = Field(ge=0)
    gas_limit: int = Field(gt=0)
    tx_count: int = Field(ge=0)
    value_wei_sum: Wei = 0
    priority_fee_median: Wei | None = None
    reorged: bool = False


class Tx(Record):
    chain_id: int
    block: int = Field(ge=0)
    block_hash: str | None = None  # joins to a Block retraction (reorged=true) of that hash
    timestamp: int = Field(ge=0)
    hash: str
    from_: str = Field(alias="from")
    to: str | None  # None for contract creation
    value: Wei
    nonce: int = Field(ge=0)
    type: int = Field(ge=0)
    gas_price: Wei | None = None
    max_fee_per_gas: Wei | None = None
    max_priority_fee_per_gas: Wei | None = None
    # Features of the transaction-value model (models.txs); absent from older producers.
    index: int | None = Field(None, ge=0)  # position in the block
    gas: int | None = Field(None, ge=0)  # gas limit
    input_size: int | None = Field(None, ge=0)  # bytes of call data


class TxForecast(Record):
    """The value forecast of one transaction, made before its value was revealed to the model,
    with the revealed value beside it (log(value_eth + eps) units, models.txs)."""

    chain_id: int
    block: int = Field(ge=0)
    block_hash: str | None = None
    hash: str
    from_: str = Field(alias="from")
    to: str | None
    q10: Finite
    q50: Finite
    q90: Finite
    threshold: Finite  # the calibrated upper bound at the alert level
    y: Finite  # the revealed log value
    value_eth: NonNegFinite
    model_name: str
    model_version: str
    created_at: int  # ms, wall clock


class TxAlert(Record):
    """A transaction whose value lies above its calibrated bound (the "whale alert");
    sent again with ``retracted=true`` when a reorg orphans its block."""

    source: str = "txs"
    forecast: TxForecast
    level: float = Field(gt=0, lt=1)
    excess: Finite  # y - threshold, log units
    retracted: bool = False


class Prediction(Record):
    exchange: str
    symbol: str
    bar_ts: int  # open time of the last bar the forecast saw, ms
    horizon: int = Field(ge=1)  # bars ahead
    target: str = "log_return"
    y_hat: Finite  # predicted log return of the close over the horizon
    q10: Finite
    q50: Finite
    q90: Finite
    price: PositiveFinite  # the close the forecast starts from
    # price * exp(y_hat) for a return forecast; None for a volatility forecast, which forecasts no price.
    price_hat: PositiveFinite | None = None
    model_name: str
    model_version: str
    created_at: int  # ms, wall clock
    latency_ms: float  # the bar's arrival at the predict agent -> prediction made

    @property
    def target_ts(self) -> int:
        return self.bar_ts + MINUTE_MS * self.horizon


class ModelUpdate(Record):
    name: str
    version: str
    uri: str
    sha256: str
    family: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: int = 0
    parent: str | None = None
    signature: str = ""  # HMAC-SHA256 by the announcer (stream.model_trust); workers verify it when keyed


class Gap(Record):
    """Trades a producer knows it missed: ids after ``after_id`` up to ``before_id``
    (exclusive) that neither the stream nor a REST backfill delivered."""

    exchange: str
    symbol: str
    after_id: int  # the last trade id published before the hole
    before_id: int  # the first trade id published after it
    missing: int = Field(ge=1)  # ids in the hole not recovered
    backfilled: int = Field(0, ge=0)  # ids in the hole recovered over REST
    ts_after: int = Field(0, ge=0)  # ms, event time of the trade at after_id
    ts_before: int = Field(0, ge=0)  # ms, event time of the trade at before_id
    reason: str = ""


class DeadLetter(Record):
    source: str  # the stage that refused it: "stream.markets", "producer.exchange", ...
    topic: str | None = None
    key: str | None = None
    reason: str
    raw: str  # the input as received (bytes decoded with backslash escapes)
    ts: int  # ms, wall clock

    @staticmethod
    def text(raw: bytes | str | None, limit: int = 64_000) -> str:
        r"""The raw input as text, cut at ``limit`` characters so a letter always fits in a
        Kafka record (an ``oversized`` refusal is larger than the limit by definition).

        >>> DeadLetter.text(b"ab\xff")
        'ab\\xff'
        >>> len(DeadLetter.text(b"x" * 100_000)) < 64_100
        True
        """
        if raw is None:
            return ""
        text = raw.decode("utf-8", errors="backslashreplace") if isinstance(raw, bytes) else raw
        return text if len(text) <= limit else f"{text[:limit]}...[{len(text)} characters, truncated]"


class FeePrediction(Record):
    """A fee forecast made when block ``block`` arrived, on the ``predictions.chain`` topic (key: chain id).

    ``target`` ``base_fee``: ``y_hat`` / quantiles are log(base_fee[block+h] / base_fee[block]) and the
    ``*_gwei`` fields the forecast base fee; ``gas_ratio``: gas_used / gas_limit of block+h (no gwei).
    ``retracted: true`` withdraws the forecast made on an orphaned block (same block and hash).
    """

    chain_id: int
    block: int = Field(ge=0)
    block_hash: str
    timestamp: int = Field(ge=0)  # seconds, of the block the forecast saw
    target: Literal["base_fee", "gas_ratio"]
    horizon: int = Field(ge=1)  # blocks ahead
    y_hat: Finite
    q10: Finite
    q50: Finite
    q90: Finite
    base_fee_gwei: NonNegFinite  # of the block the forecast saw
    forecast_gwei: NonNegFinite | None = None
    forecast_q10_gwei: NonNegFinite | None = None
    forecast_q90_gwei: NonNegFinite | None = None
    reference: Finite  # what the reference (EIP-1559 / persistence) says, in target units
    model_name: str
    model_version: str
    created_at: int  # ms, wall clock
    retracted: bool = False
