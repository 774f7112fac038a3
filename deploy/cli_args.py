"""What every ``chaincast`` command shares: settings, argument parsing, and the one-line error.

The root CLI (``deploy.cli``) and each sub-app (``exchange_cli``, ``chain_cli``,
``models_cli``, ``models_registry_cli``, ``page``, ``bench``) import this module
downward; none of them imports the root app. ``run_app`` is every entry point's
``main``: a bad argument or setting is ONE line on stderr and exit code 2.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from chaincast.models.logs import setup_logging
from chaincast.stream.settings import Settings, SettingsError
from chaincast.stream.settings import load_settings as _load

USAGE_ERROR = 2  # click's (and the shell's) code for a usage error


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus CLI overrides (by env name); a bad value is a usage error."""
    try:
        settings = _load(**overrides)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from None
    setup_logging(settings.log_level)
    return settings


def parse_speed(value: str) -> float | None:
    """`max` or a positive number (market seconds per wall second)."""
    if value.lower() == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        raise typer.BadParameter(f"--speed must be a positive number or 'max', not {value!r}") from None
    if not math.isfinite(speed) or speed <= 0:
        raise typer.BadParameter(f"--speed must be a positive number or 'max', not {value!r}")
    return speed


def check_files(paths: list[Path]) -> list[Path]:
    for p in paths:
        if not p.is_file():
            raise typer.BadParameter(f"no such file: {p}")
    return paths


def console() -> Console:
    """The console for the CLI's tables on stdout; piped output keeps whole rows (no 80-column wrap)."""
    width = None if sys.stdout.isatty() else max(shutil.get_terminal_size((200, 24)).columns, 200)
    return Console(width=width, highlight=False, soft_wrap=False)


def plain_table(*columns: str) -> Table:
    """A borderless table whose rows read like the plain lines they replace (one space between cells)."""
    table = Table(*columns, box=None, show_header=True, header_style="bold", pad_edge=False, padding=(0, 1, 0, 0))
    return table


DataOpt = Annotated[Optional[list[Path]], typer.Option("--data", help="History file(s); repeat the option.")]
SymbolsOpt = Annotated[Optional[str], typer.Option(help="Comma-separated symbols (env CHAINCAST_SYMBOLS).")]


def one_line(exc: typer.TyperException) -> str:
    """A usage error as one line: ``Error: <message>`` (whitespace and line breaks folded)."""
    return "Error: " + " ".join(exc.format_message().split())


def run_app(app: typer.Typer, args: list[str] | None = None, prog_name: str = "chaincast") -> None:
    """Run ``app`` as a program: exit with its code; a usage error is one line on stderr and exit 2."""
    try:
        code = app(args=args, prog_name=prog_name, standalone_mode=False)
    except typer.Abort:  # Ctrl-C at a prompt
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    except typer.TyperException as exc:  # typer's (vendored click's) usage errors and their kin
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `chaincast`: the help, as before
            exc.show()
        else:
            print(one_line(exc), file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", USAGE_ERROR))
    sys.exit(code if isinstance(code, int) else 0)
