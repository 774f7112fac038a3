"""``chaincast schema``: the JSON Schemas of every record (the rule for ``schema``: stream/schemas.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def schema(
    out: Annotated[Optional[Path], typer.Option(help="Write NAME.vN.json per record into this directory.")] = None,
    record: Annotated[Optional[str], typer.Argument(help="One record (e.g. Prediction); all when omitted.")] = None,
) -> None:
    """Print (or write) the JSON Schema of every record chaincast sends."""
    from chaincast.stream.records import SCHEMA_VERSION
    from chaincast.stream.schemas import all_schemas

    schemas = all_schemas()
    if record is not None:
        if record not in schemas:
            raise typer.BadParameter(f"unknown record {record!r}; one of {', '.join(schemas)}")
        schemas = {record: schemas[record]}
    if out is None:
        typer.echo(json.dumps(schemas if record is None else schemas[record], indent=2))
        return
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is not a directory", param_hint="--out")
    out.mkdir(parents=True, exist_ok=True)
    for name, body in schemas.items():
        (out / f"{name}.v{SCHEMA_VERSION}.json").write_text(json.dumps(body, indent=2) + "\n")
    typer.echo(f"wrote {len(schemas)} schemas (version {SCHEMA_VERSION}) to {out}")
