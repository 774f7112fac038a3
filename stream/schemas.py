"""JSON Schemas of every record on the wire, and the rule for the ``schema`` version field.

Compatibility rule (every record carries ``schema``, an integer, ``records.SCHEMA_VERSION``):

1. Additive changes keep the version: a NEW field with a default may be added to any record.
   Readers ignore fields they do not know (``extra="ignore"``), so old readers read new
   records and new readers read old ones (the default fills the gap).
2. Anything else is breaking and bumps ``SCHEMA_VERSION``: removing, renaming or retyping a
   field, making a field required, changing a unit or a meaning (ms -> s, log return -> simple
   return), changing a key or a topic's record type.
3. A reader refuses a record whose ``schema`` is NEWER than the version it knows (it cannot
   know what changed); the stream dead-letters it with the reason, nothing is guessed.
   Records of the current or an older version are read.
4. The published schemas carry the version in their ``$id`` (``chaincast/Prediction/v1``);
   ``chaincast schema --out DIR`` writes one file per record, ``Prediction.v1.json``.
"""

from __future__ import annotations

import inspect
from typing import Any

from chaincast.stream import records
from chaincast.stream.records import SCHEMA_VERSION, Record


def record_types() -> dict[str, type[Record]]:
    """Every concrete record class defined in ``stream.records``, by name."""
    return {name: cls for name, cls in inspect.getmembers(records, inspect.isclass)
            if issubclass(cls, Record) and cls is not Record and cls.__module__ == records.__name__}


def json_schema(cls: type[Record]) -> dict[str, Any]:
    """The JSON Schema of ``cls`` as it travels (aliases, wei amounts as decimal strings).

    >>> s = json_schema(records.Trade)
    >>> s["$id"], s["properties"]["schema"]["default"], "trade_id" in s["required"]
    ('chaincast/Trade/v1', 1, True)
    """
    schema = cls.model_json_schema(by_alias=True, mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"chaincast/{cls.__name__}/v{SCHEMA_VERSION}", **schema}


def all_schemas() -> dict[str, dict[str, Any]]:
    return {name: json_schema(cls) for name, cls in sorted(record_types().items())}
