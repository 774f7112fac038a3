"""The one settings object. Built once at the edge (the CLI), passed down.

Every field names its environment variable; nothing else in chaincast reads
``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chaincast.models.targets import ForecastSpec, parse_forecasts

from chaincast.stream.topics import DEFAULTS

# An absolute per-user directory, so that every shell and every working directory finds the
# same registry and the same `chaincast up` connection file.
DEFAULT_HOME = Path(platformdirs.user_data_dir("chaincast", appauthor=False))


# The connection settings `chaincast up` hands to other shells through `$CHAINCAST_HOME/env`.
STACK_KEYS = ("KAFKA_BOOTSTRAP_SERVERS", "CHAINCAST_EMBEDDED_BROKER", "REDIS_URL", "CHAINCAST_REDIS_PREFIX",
              "CHAINCAST_SYMBOLS", "CHAINCAST_EXCHANGE", "CHAINCAST_MODEL_NAME", "CHAINCAST_API_URL")


class Settings(BaseSettings):
    """chaincast configuration; see the README's configuration table."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    # Infrastructure: unset means "start the embedded one".
    kafka_bootstrap_servers: str | None = Field(None, validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    redis_url: str | None = Field(None, validation_alias="REDIS_URL", repr=False)  # may hold a password
    embedded_broker: bool = Field(False, validation_alias="CHAINCAST_EMBEDDED_BROKER")

    symbols: Annotated[list[str], NoDecode] = Field(
        ["BTCUSDT", "ETHUSDT"], validation_alias="CHAINCAST_SYMBOLS"
    )
    exchange: str = Field("binance", validation_alias="CHAINCAST_EXCHANGE")
    home: Path = Field(DEFAULT_HOME, validation_alias="CHAINCAST_HOME")

    # Topics: names default to the registry's (stream.topics, DESIGN.md).
    topic_trades: str = Field(DEFAULTS["topic_trades"], validation_alias="CHAINCAST_TOPIC_TRADES")
    topic_bars: str = Field(DEFAULTS["topic_bars"], validation_alias="CHAINCAST_TOPIC_BARS")
    topic_blocks: str = Field(DEFAULTS["topic_blocks"], validation_alias="CHAINCAST_TOPIC_BLOCKS")
    topic_txs: str = Field(DEFAULTS["topic_txs"], validation_alias="CHAINCAST_TOPIC_TXS")
    topic_predictions: str = Field(DEFAULTS["topic_predictions"], validation_alias="CHAINCAST_TOPIC_PREDICTIONS")
    topic_models: str = Field(DEFAULTS["topic_models"], validation_alias="CHAINCAST_TOPIC_MODELS")
    topic_deadletter: str = Field(DEFAULTS["topic_deadletter"], validation_alias="CHAINCAST_TOPIC_DEADLETTER")
    partitions: int = Field(4, ge=1, validation_alias="CHAINCAST_PARTITIONS")

    # Stream worker.
    app_id: str = Field("chaincast", validation_alias="CHAINCAST_APP_ID")
    window: int = Field(32, ge=2, validation_alias="CHAINCAST_WINDOW")
    horizon: int = Field(1, ge=1, validation_alias="CHAINCAST_HORIZON")
    model_name: str = Field("forecaster", validation_alias="CHAINCAST_MODEL_NAME")
    onnx_threads: int = Field(1, ge=1, validation_alias="CHAINCAST_ONNX_THREADS")
    max_message_bytes: int = Field(1_000_000, ge=1024, validation_alias="CHAINCAST_MAX_MESSAGE_BYTES")

    # Redis layout.
    redis_prefix: str = Field("cc:", validation_alias="CHAINCAST_REDIS_PREFIX")
    history_maxlen: int = Field(10_000, ge=1, validation_alias="CHAINCAST_HISTORY_MAXLEN")

    # Exchange producer.
    # Unset means "start the local replay exchange"; set it to a Binance-format endpoint
    # (e.g. wss://stream.binance.com:9443) to use the real one.
    exchange_url: str | None = Field(None, validation_alias="CHAINCAST_EXCHANGE_URL")
    # REST base for backfill; unset means "derive it from exchange_url".
    exchange_rest_url: str | None = Field(None, validation_alias="CHAINCAST_EXCHANGE_REST_URL")
    exchange_backoff_initial_s: float = Field(0.5, gt=0, validation_alias="CHAINCAST_EXCHANGE_BACKOFF_INITIAL_S")
    exchange_backoff_max_s: float = Field(30.0, gt=0, validation_alias="CHAINCAST_EXCHANGE_BACKOFF_MAX_S")
    # The exchange drops a connection at 24 h; roll over on our own terms before that.
    exchange_max_connection_s: float = Field(
        23.5 * 3600, gt=0, validation_alias="CHAINCAST_EXCHANGE_MAX_CONNECTION_S"
    )
    exchange_batch_max: int = Field(500, ge=1, validation_alias="CHAINCAST_EXCHANGE_BATCH_MAX")
    exchange_linger_ms: int = Field(20, ge=0, validation_alias="CHAINCAST_EXCHANGE_LINGER_MS")
    exchange_backfill_max: int = Field(100_000, ge=0, validation_alias="CHAINCAST_EXCHANGE_BACKFILL_MAX")
    exchange_checkpoint_interval_s: float = Field(
        0.5, ge=0, validation_alias="CHAINCAST_EXCHANGE_CHECKPOINT_INTERVAL_S"
    )
    topic_exchange_klines: str = Field(DEFAULTS["topic_exchange_klines"],
                                       validation_alias="CHAINCAST_TOPIC_EXCHANGE_KLINES")
    topic_gaps: str = Field(DEFAULTS["topic_gaps"], validation_alias="CHAINCAST_TOPIC_GAPS")

    # Chain producer.
    # A node URL often embeds an API key: kept out of repr (and out of logs, via producers.chain_node.redact).
    node_url: str | None = Field(None, validation_alias="CHAINCAST_NODE_URL", repr=False)
    # Polling fallback when the websocket keeps failing; unset = the node URL with ws(s) -> http(s).
    node_http_url: str | None = Field(None, validation_alias="CHAINCAST_NODE_HTTP_URL", repr=False)
    # Blocks behind the head before publishing: 0 = the head (reorgs retracted), N, or "finalized".
    chain_confirmations: Annotated[int, Field(ge=0)] | Literal["finalized"] = Field(
        0, validation_alias="CHAINCAST_CHAIN_CONFIRMATIONS"
    )
    chain_from_block: int | None = Field(None, ge=0, validation_alias="CHAINCAST_CHAIN_FROM_BLOCK")
    chain_txs: bool = Field(False, validation_alias="CHAINCAST_CHAIN_TXS")
    chain_reorg_depth: int = Field(64, ge=2, validation_alias="CHAINCAST_CHAIN_REORG_DEPTH")  # hashes kept
    chain_rps: float = Field(25.0, ge=0, validation_alias="CHAINCAST_CHAIN_RPS")  # 0 = unlimited
    chain_concurrency: int = Field(4, ge=1, validation_alias="CHAINCAST_CHAIN_CONCURRENCY")
    chain_poll_interval: float = Field(2.0, gt=0, validation_alias="CHAINCAST_CHAIN_POLL_INTERVAL")
    chain_request_timeout: float = Field(10.0, gt=0, validation_alias="CHAINCAST_CHAIN_REQUEST_TIMEOUT")
    chain_retries: int = Field(5, ge=1, validation_alias="CHAINCAST_CHAIN_RETRIES")

    # Retraining.
    # A round starts after this many new bars (all symbols together; 0 = off) ...
    retrain_every_bars: int = Field(600, ge=0, validation_alias="CHAINCAST_RETRAIN_EVERY_BARS")
    # ... or after this many seconds with at least one new bar (0 = off).
    retrain_every_s: float = Field(0.0, ge=0, validation_alias="CHAINCAST_RETRAIN_EVERY_S")
    retrain_family: str = Field("linear", validation_alias="CHAINCAST_RETRAIN_FAMILY")
    # The challenger's validation MAE must be below champion MAE * (1 - margin).
    promote_margin: float = Field(0.0, ge=0, lt=1, validation_alias="CHAINCAST_RETRAIN_PROMOTE_MARGIN")
    # One-sided Diebold-Mariano level: the challenger must beat the champion at this significance.
    retrain_alpha: float = Field(0.1, gt=0, le=1, validation_alias="CHAINCAST_RETRAIN_ALPHA")
    history_bars: int = Field(3000, ge=200, validation_alias="CHAINCAST_RETRAIN_HISTORY_BARS")  # per symbol
    retrain_val_bars: int = Field(240, ge=20, validation_alias="CHAINCAST_RETRAIN_VAL_BARS")  # per symbol
    retrain_max_epochs: int = Field(8, ge=1, validation_alias="CHAINCAST_RETRAIN_MAX_EPOCHS")
    # Live scoring: realised predictions per symbol and version in the rolling score; when
    # a full window scores below persistence the retrainer is told to retrain now.
    score_window: int = Field(120, ge=10, validation_alias="CHAINCAST_RETRAIN_SCORE_WINDOW")

    metrics_port: int = Field(9464, ge=0, le=65535, validation_alias="CHAINCAST_METRICS_PORT")
    # 0.0.0.0 in containers, so that Prometheus on another host can scrape.
    metrics_host: str = Field("127.0.0.1", validation_alias="CHAINCAST_METRICS_HOST")
    log_level: str = Field("WARNING", validation_alias="CHAINCAST_LOG_LEVEL")

    # --- users and operators ---
    # The HTTP API (`chaincast api`, served by `up`); a client's base URL (written by `up`).
    api_url: str | None = Field(None, validation_alias="CHAINCAST_API_URL")
    # Requests per token per minute; beyond it the API answers 429.
    api_rate_per_min: float = Field(600.0, gt=0, validation_alias="CHAINCAST_API_RATE_PER_MIN")
    # The most history entries one request returns (a larger ?limit= is refused with 422).
    api_max_limit: int = Field(1000, ge=1, validation_alias="CHAINCAST_API_MAX_LIMIT")
    # Aggregator poller (CoinGecko-style REST). The key is sent as a header, never logged.
    aggregator_url: str = Field("https://api.coingecko.com/api/v3", validation_alias="CHAINCAST_AGGREGATOR_URL")
    aggregator_api_key: str | None = Field(None, validation_alias="CHAINCAST_AGGREGATOR_API_KEY", repr=False)
    aggregator_key_header: str = Field("x-cg-demo-api-key", validation_alias="CHAINCAST_AGGREGATOR_KEY_HEADER")
    # Requests per minute: the public tier allows about 30; stay well under it by default.
    aggregator_rate_per_min: float = Field(10.0, gt=0, validation_alias="CHAINCAST_AGGREGATOR_RATE_PER_MIN")
    aggregator_interval_s: float = Field(60.0, gt=0, validation_alias="CHAINCAST_AGGREGATOR_INTERVAL_S")
    # SYMBOL=coin-id pairs; the quote currency is the symbol's suffix (USDT is quoted in usd).
    aggregator_ids: Annotated[dict[str, str], NoDecode] = Field(
        {"BTCUSDT": "bitcoin", "ETHUSDT": "ethereum"}, validation_alias="CHAINCAST_AGGREGATOR_IDS"
    )

    @field_validator("aggregator_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            pairs = [p for p in value.replace(" ", ",").split(",") if p]
            if not all(p.count("=") == 1 for p in pairs):
                raise ValueError("expected SYMBOL=coin-id pairs, e.g. BTCUSDT=bitcoin,ETHUSDT=ethereum")
            return {k.upper(): v for k, v in (p.split("=") for p in pairs)}
        return value

    # --- fees ---
    # Fee forecasts (issue 16): a topic of their own, not `predictions` (whose records and keys are per market).
    topic_fee_predictions: str = Field(DEFAULTS["topic_fee_predictions"],
                                       validation_alias="CHAINCAST_TOPIC_FEE_PREDICTIONS")
    fee_horizons: Annotated[list[int], NoDecode] = Field([1, 5, 25], validation_alias="CHAINCAST_FEE_HORIZONS")
    fee_window: int = Field(32, ge=2, le=512, validation_alias="CHAINCAST_FEE_WINDOW")  # blocks the models see
    fee_model_prefix: str = Field("fees", validation_alias="CHAINCAST_FEE_MODEL_PREFIX")  # fees.base_fee.h5, ...
    fee_score_window: int = Field(500, ge=10, validation_alias="CHAINCAST_FEE_SCORE_WINDOW")  # forecasts scored
    # The fee retrainer: a round after this many new blocks (0 = off), on this many recent blocks.
    fee_retrain_every_blocks: int = Field(600, ge=0, validation_alias="CHAINCAST_FEE_RETRAIN_EVERY_BLOCKS")
    fee_history_blocks: int = Field(20_000, ge=500, validation_alias="CHAINCAST_FEE_HISTORY_BLOCKS")
    fee_retrain_family: str = Field("linear", validation_alias="CHAINCAST_FEE_RETRAIN_FAMILY")
    fee_chain_id: int = Field(1, ge=1, validation_alias="CHAINCAST_FEE_CHAIN_ID")  # the chain the page and `up` show

    # --- forecast ---
    # The served forecasters, target:horizon, comma-separated (e.g. log_return:1,volatility:5). The first
    # is the default forecaster (model CHAINCAST_MODEL_NAME, Redis cc:pred:{SYMBOL}); each other one gets
    # its own model name ({name}-{target}-{horizon}), Redis hash and history. Unset: log_return:CHAINCAST_HORIZON.
    forecasts: str | None = Field(None, validation_alias="CHAINCAST_FORECASTS")

    @field_validator("forecasts")
    @classmethod
    def _check_forecasts(cls, value: str | None) -> str | None:
        if value is not None:
            parse_forecasts(value)  # a bad entry is a ValueError: one line naming CHAINCAST_FORECASTS
        return value

    @property
    def forecast_specs(self) -> tuple[ForecastSpec, ...]:
        """The served forecasters, the default one first."""
        return parse_forecasts(self.forecasts or f"log_return:{self.horizon}")

    # --- transactions (the value model, issue 17) ---
    tx_model_name: str = Field("tx_value", validation_alias="CHAINCAST_TX_MODEL_NAME")
    # A transaction above this calibrated quantile of its forecast is an alert.
    tx_alert_level: float = Field(0.99, gt=0.5, lt=1, validation_alias="CHAINCAST_TX_ALERT_LEVEL")
    tx_skill_window: int = Field(500, ge=10, validation_alias="CHAINCAST_TX_SKILL_WINDOW")  # forecasts scored
    topic_alerts: str = Field(DEFAULTS["topic_alerts"], validation_alias="CHAINCAST_TOPIC_ALERTS")
    tx_window: int = Field(32, ge=2, le=1024, validation_alias="CHAINCAST_TX_WINDOW")  # transactions per window
    # The tx retrainer runs a round every this many new transactions (0 = off) ...
    tx_retrain_every: int = Field(5000, ge=0, validation_alias="CHAINCAST_TX_RETRAIN_EVERY")
    # ... on at most this many of the newest.
    tx_retrain_history: int = Field(50_000, ge=500, validation_alias="CHAINCAST_TX_RETRAIN_HISTORY")
    tx_retrain_epochs: int = Field(4, ge=1, validation_alias="CHAINCAST_TX_RETRAIN_EPOCHS")
    # --- kafka: security, replication, delivery (the clients are built by stream.kafka_options) ---
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias="CHAINCAST_KAFKA_SECURITY_PROTOCOL")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", validation_alias="CHAINCAST_KAFKA_SASL_MECHANISM")
    kafka_sasl_username: str | None = Field(None, validation_alias="CHAINCAST_KAFKA_SASL_USERNAME")
    # SecretStr: shown as ********** in repr, str() and any log line that formats the settings.
    kafka_sasl_password: SecretStr | None = Field(None, validation_alias="CHAINCAST_KAFKA_SASL_PASSWORD",
                                                  repr=False)
    kafka_ssl_cafile: Path | None = Field(None, validation_alias="CHAINCAST_KAFKA_SSL_CAFILE")
    kafka_ssl_certfile: Path | None = Field(None, validation_alias="CHAINCAST_KAFKA_SSL_CERTFILE")
    kafka_ssl_keyfile: Path | None = Field(None, validation_alias="CHAINCAST_KAFKA_SSL_KEYFILE")
    kafka_ssl_key_password: SecretStr | None = Field(None, validation_alias="CHAINCAST_KAFKA_SSL_KEY_PASSWORD",
                                                     repr=False)
    # Unset: 3 when the cluster has three or more brokers, else 1 (resolved at start, kafka_options.resolve).
    replication_factor: int | None = Field(None, ge=1, validation_alias="CHAINCAST_REPLICATION_FACTOR")
    # Unset: replication_factor - 1 (at least 1): acks=all then survives one broker down, and refuses
    # writes that only one broker holds.
    min_insync_replicas: int | None = Field(None, ge=1, validation_alias="CHAINCAST_MIN_INSYNC_REPLICAS")
    # Consumer fetch wait. Unset: Kafka's 500 ms (a broker answers as soon as data arrives), and on the
    # embedded broker the value stream.kafka_options.EMBEDDED_FETCH_WAIT_MS (Tansu answers only when
    # the wait expires, and its fetch scans the partition, so too short a wait starves).
    kafka_fetch_max_wait_ms: int | None = Field(None, ge=1, validation_alias="CHAINCAST_KAFKA_FETCH_MAX_WAIT_MS")
    # exactly_once (Kafka transactions) fails the kill test on Apache Kafka with faust-streaming 0.15.3:
    # after a restart one partition's transaction never commits again (README, "exactly_once, evaluated").
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", validation_alias="CHAINCAST_PROCESSING_GUARANTEE")
    # Producer linger on Kafka (every chaincast producer, the worker's too). Unset: 5 ms, which batches
    # a busy feed's sends; 0 sends each record at once (lowest latency, more requests). The embedded
    # broker always sends one record per request (stream.kafka_options.producer).
    kafka_linger_ms: int | None = Field(None, ge=0, le=1000, validation_alias="CHAINCAST_KAFKA_LINGER_MS")

    # --- delivery ---
    # Bounds on well-formed records that would wedge a market (stream.bounds owns the checks).
    # A trade dated later than now + this is refused; older trades stay valid (a backfill).
    max_clock_skew_s: float = Field(300.0, gt=0, validation_alias="CHAINCAST_MAX_CLOCK_SKEW_S")
    # 0 exempts event time from the wall clock: replays and backtests of data dated ahead of it.
    clock_check: bool = Field(True, validation_alias="CHAINCAST_CLOCK_CHECK")
    # A trade id this far from the last one (either way) is a venue reset, not a gap or duplicates.
    max_id_jump: int = Field(100_000_000, ge=1, validation_alias="CHAINCAST_MAX_ID_JUMP")
    # A worker retries Redis this long, then exits before acknowledging the batch (redone on restart).
    redis_retry_budget_s: float = Field(120.0, gt=0, validation_alias="CHAINCAST_REDIS_RETRY_BUDGET_S")
    # HMAC-SHA256 key of model updates; set, a worker serves only updates signed with it.
    model_signing_key: str | None = Field(None, validation_alias="CHAINCAST_MODEL_SIGNING_KEY", repr=False)
    # Largest model file a worker reads (the size is checked before reading).
    model_max_bytes: int = Field(256_000_000, ge=1024, validation_alias="CHAINCAST_MODEL_MAX_BYTES")
    # The liveness probe fails when the worker's event loop has not ticked for this long.
    heartbeat_timeout_s: float = Field(30.0, gt=0, validation_alias="CHAINCAST_HEARTBEAT_TIMEOUT_S")

    # --- registry faults ---
    # A retrainer whose registry write failed (a full disk) retries the write after this, doubling
    # per failure up to 16x; the old champion serves meanwhile.
    registry_retry_s: float = Field(60.0, gt=0, validation_alias="CHAINCAST_REGISTRY_RETRY_S")

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [s for s in value.replace(" ", ",").split(",") if s]
        if isinstance(value, (list, tuple)):
            symbols = [str(s).upper() for s in value]
            if not symbols:
                raise ValueError("at least one symbol is required")
            return symbols
        return value

    @classmethod
    def from_environment(cls, **overrides: Any) -> Settings:
        """The environment first, then the stack file ``chaincast up`` wrote for what is still
        unset, then the explicit overrides (CLI options) above both."""
        settings = cls(**overrides)
        if settings.stack_env_file.is_file():
            settings = cls(_env_file=settings.stack_env_file, **overrides)
        return settings

    @property
    def stack_env_file(self) -> Path:
        """``export`` lines for the stack ``chaincast up`` runs, so a second shell just works."""
        return self.home / "env"

    def stack_env(self) -> dict[str, str]:
        """What a second shell needs to reach this stack (the content of ``stack_env_file``)."""
        env = self.env()
        return {k: env[k] for k in STACK_KEYS if k in env}

    @field_validator("fee_horizons", mode="before")
    @classmethod
    def _split_horizons(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [int(h) for h in value.replace(" ", ",").split(",") if h]
        if isinstance(value, (list, tuple)):
            if not value or any(int(h) < 1 or int(h) > 1000 for h in value):
                raise ValueError("fee horizons are 1..1000 blocks, at least one")
            return sorted({int(h) for h in value})
        return value
    @model_validator(mode="after")
    def _check_kafka_security(self) -> "Settings":
        if self.kafka_security_protocol.startswith("SASL") and not (
                self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"{self.kafka_security_protocol} needs CHAINCAST_KAFKA_SASL_USERNAME and "
                             "CHAINCAST_KAFKA_SASL_PASSWORD")
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"CHAINCAST_{name.upper()}: no such file: {path}")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("CHAINCAST_KAFKA_SSL_CERTFILE and CHAINCAST_KAFKA_SSL_KEYFILE go together")
        if self.replication_factor and self.min_insync_replicas and self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"CHAINCAST_MIN_INSYNC_REPLICAS={self.min_insync_replicas} is above "
                             f"CHAINCAST_REPLICATION_FACTOR={self.replication_factor}")
        return self

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"

    def env(self) -> dict[str, str]:
        """The environment that makes a child process build these same settings."""
        out: dict[str, str] = {}
        for name, field in type(self).model_fields.items():
            alias = field.validation_alias
            key = alias if isinstance(alias, str) else None
            value = getattr(self, name)
            if key is None or value is None:
                continue
            if isinstance(value, SecretStr):  # a child's environment, never its argv or a log
                value = value.get_secret_value()
            elif isinstance(value, list):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, dict):
                value = ",".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, bool):
                value = "1" if value else "0"
            out[key] = str(value)
        return out


class SettingsError(ValueError):
    """A setting with a bad value; the message is one line naming its environment variable."""


def load_settings(**overrides: object) -> Settings:
    """The Settings from the environment, with ``overrides`` (by env name; None = not given) on top.

    Every entry point builds its settings here, so a bad value is always the same one-line
    ``SettingsError`` (the CLI prints it and exits 2), never a traceback. What the environment
    leaves unset comes from ``$CHAINCAST_HOME/env`` when ``chaincast up`` wrote one (a second
    shell reaches the running stack with nothing exported).

    >>> load_settings(CHAINCAST_PARTITIONS="0")
    Traceback (most recent call last):
    ...
    chaincast.stream.settings.SettingsError: CHAINCAST_PARTITIONS: Input should be greater than or equal to 1
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings.from_environment(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        raise SettingsError(f"{where}: {err['msg']}") from None
