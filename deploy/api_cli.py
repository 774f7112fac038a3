"""``chaincast api``: the HTTP API and the live page; ``chaincast token ...``: its bearer tokens."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Optional

import typer

from chaincast.deploy.tokens import SCOPES, TokenError, TokenStore

token_app = typer.Typer(help="API bearer tokens: create (shown once), list, revoke.", no_args_is_help=True,
                        add_completion=False, pretty_exceptions_enable=False)

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | None) -> float | None:
    """``30d``, ``12h``, ``15m``, ``90s`` -> seconds; None stays None (no expiry).

    >>> parse_duration("2h"), parse_duration(None)
    (7200.0, None)
    """
    if text is None:
        return None
    match = DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"expected a duration like 30d, 12h, 15m or 90s, not {text!r}",
                                 param_hint="--expires")
    return float(match.group(1)) * UNIT_S[match.group(2)]


def _settings():  # noqa: ANN202 - Settings, imported late with the loader
    from chaincast.deploy.cli_args import load_settings

    return load_settings()


def _when(ts: float | None) -> str:
    return "never" if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@token_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Who or what the token is for.")],
    scope: Annotated[Optional[list[str]], typer.Option(help=f"Scope(s): {', '.join(SCOPES)}.")] = None,
    expires: Annotated[Optional[str], typer.Option(help="Lifetime: 30d, 12h, 15m, 90s (default: none).")] = None,
) -> None:
    """Create a token and print it ONCE; only its SHA-256 is stored (under CHAINCAST_HOME)."""
    ttl = parse_duration(expires)
    store = TokenStore.in_home(_settings().home)
    try:
        token, info = store.create(name, scope or ["read"], ttl)
    except TokenError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(token)
    typer.echo(f"token {info.id} for {info.name!r} (scopes {','.join(info.scopes)}, expires {_when(info.expires_at)});"
               " it is not shown again", err=True)


@token_app.command("list")
def list_tokens() -> None:
    """Every stored token: id, name, scopes, created, expiry (never the token itself)."""
    store = TokenStore.in_home(_settings().home)
    tokens = store.list()
    if not tokens:
        typer.echo(f"no tokens in {store.path}")
    for t in tokens:
        state = " (expired)" if t.expired() else ""
        typer.echo(f"{t.id}  {t.name:<20} {','.join(t.scopes):<8} created {_when(t.created_at)}  "
                   f"expires {_when(t.expires_at)}{state}")


@token_app.command("revoke")
def revoke(name_or_id: Annotated[str, typer.Argument(help="A token's name (all of that name) or id.")]) -> None:
    """Revoke tokens; the API refuses them from the next request on."""
    try:
        gone = TokenStore.in_home(_settings().home).revoke(name_or_id)
    except TokenError as exc:
        raise typer.BadParameter(str(exc)) from None
    for t in gone:
        typer.echo(f"revoked {t.id} ({t.name})")


def api(
    port: Annotated[int, typer.Option(help="HTTP port (0 = a free one).", min=0, max=65535)] = 9480,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Serve the HTTP API (/v1, OpenAPI at /openapi.json) and the live page (/) until stopped."""
    from chaincast.deploy.api import bind, create_app, serve

    settings = _settings()
    if not settings.redis_url:
        raise typer.BadParameter("set REDIS_URL to the Redis that chaincast writes to")
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise typer.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror}", param_hint="--port") from None
    typer.echo(f"API and live page on http://{host}:{sock.getsockname()[1]}/ (docs at /docs)")
    serve(create_app(settings), sock)
