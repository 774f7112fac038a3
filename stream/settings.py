"""The one settings object. Built once at the edge (the CLI), passed down.

Every field names its environment variable; nothing else in chaincast reads
``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """chaincast configuration; see the README's configuration table."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    # Infrastructure: unset means "start the embedded one".
    kafka_bootstrap_servers: str | None = Field(None, validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    embedded_broker: bool = Field(False, validation_alias="CHAINCAST_EMBEDDED_BROKER")

    symbols: Annotated[list[str], NoDecode] = Field(
        ["BTCUSDT", "ETHUSDT"], validation_alias="CHAINCAST_SYMBOLS"
    )
    exchange: str = Field("binance", validation_alias="CHAINCAST_EXCHANGE")
    home: Path = Field(Path(".chaincast"), validation_alias="CHAINCAST_HOME")

    # Topics (DESIGN.md defaults).
    topic_trades: str = Field("ticks.trades", validation_alias="CHAINCAST_TOPIC_TRADES")
    topic_bars: str = Field("bars.1m", validation_alias="CHAINCAST_TOPIC_BARS")
    topic_blocks: str = Field("chain.blocks", validation_alias="CHAINCAST_TOPIC_BLOCKS")
    topic_txs: str = Field("chain.txs", validation_alias="CHAINCAST_TOPIC_TXS")
    topic_predictions: str = Field("predictions", validation_alias="CHAINCAST_TOPIC_PREDICTIONS")
    topic_models: str = Field("models.updates", validation_alias="CHAINCAST_TOPIC_MODELS")
    topic_deadletter: str = Field("deadletter", validation_alias="CHAINCAST_TOPIC_DEADLETTER")
    partitions: int = Field(4, ge=1, validation_alias="CHAINCAST_PARTITIONS")

    # Stream worker.
    app_id: str = Field("chaincast", validation_alias="CHAINCAST_APP_ID")
    window: int = Field(32, ge=2, validation_alias="CHAINCAST_WINDOW")
    horizon: int = Field(1, ge=1, validation_alias="CHAINCAST_HORIZON")
    model_name: str = Field("forecaster", validation_alias="CHAINCAST_MODEL_NAME")
    onnx_threads: int = Field(1, ge=1, validation_alias="CHAINCAST_ONNX_THREADS")
    max_message_bytes: int = Field(1_000_000, ge=1024, validation_alias="CHAINCAST_MAX_MESSAGE_BYTES")
    late_grace_ms: int = Field(0, ge=0, validation_alias="CHAINCAST_LATE_GRACE_MS")

    # Redis layout.
    redis_prefix: str = Field("cc:", validation_alias="CHAINCAST_REDIS_PREFIX")
    history_maxlen: int = Field(10_000, ge=1, validation_alias="CHAINCAST_HISTORY_MAXLEN")

    metrics_port: int = Field(9464, ge=0, le=65535, validation_alias="CHAINCAST_METRICS_PORT")
    log_level: str = Field("WARNING", validation_alias="CHAINCAST_LOG_LEVEL")

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

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"

    def producer_config(self) -> dict[str, Any]:
        """aiokafka producer options: acks=all always; idempotence only on real Kafka.

        Tansu (the embedded broker) refuses the idempotent producer, and its
        ListOffsets(LATEST) is wrong for multi-record batches, so there each
        record goes in a batch of its own (``max_batch_size`` too small for two).
        """
        if self.embedded_broker:
            return {"acks": "all", "enable_idempotence": False, "max_batch_size": 1, "linger_ms": 0}
        return {"acks": "all", "enable_idempotence": True, "linger_ms": 5}

    def env(self) -> dict[str, str]:
        """The environment that makes a child process build these same settings."""
        out: dict[str, str] = {}
        for name, field in type(self).model_fields.items():
            alias = field.validation_alias
            key = alias if isinstance(alias, str) else None
            value = getattr(self, name)
            if key is None or value is None:
                continue
            if isinstance(value, list):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "1" if value else "0"
            out[key] = str(value)
        return out
