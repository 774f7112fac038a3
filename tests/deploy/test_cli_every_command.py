"""Every command: a bad argument and a bad setting are ONE line on stderr and exit code 2; --version; help."""

from __future__ import annotations

import pytest

from chaincast.deploy.cli import app, main

# One bad argument per command (the table must name every command: a new one without a row fails).
BAD_ARGS: dict[str, list[str]] = {
    "up": ["up", "--speed", "fast"],
    "worker": ["worker", "--nope"],
    "replay": ["replay", "--data", "/no/such/file.csv"],
    "predictions": ["predictions", "a", "b"],
    "tail": ["tail", "--limit", "0"],
    "train": ["train", "--data", "/no/such/file.csv", "--model", "nope"],
    "backtest": ["backtest", "--data", "/no/such/file.csv", "--folds", "0"],
    "produce exchange": ["produce", "exchange", "--symbols", ""],
    "produce chain": ["produce", "chain", "--confirmations", "foo"],
    "produce aggregator": ["produce", "aggregator", "--ids", "BTCUSDT:bitcoin"],
    "exchange serve": ["exchange", "serve", "--data", "/no/such/file.csv"],
    "models list": ["models", "list", "extra"],
    "models promote": ["models", "promote"],
    "models import": ["models", "import", "/no/such/model.onnx", "--card", "/no/such/card.json"],
    "retrain": ["retrain", "--nope"],
    "api": ["api", "--port", "70000"],
    "page": ["page", "--port", "-1"],
    "bench": ["bench", "--nope"],
    "schema": ["schema", "NoSuchRecord"],
    "bootstrap": ["bootstrap", "--wait", "0"],
    "chain serve": ["chain", "serve", "--port", "70000"],
    "retrain-fees": ["retrain-fees", "--nope"],
    "retrain-txs": ["retrain-txs", "--nope"],
    "token create": ["token", "create", "bad name!"],
    "token list": ["token", "list", "extra"],
    "token revoke": ["token", "revoke", "no-such-token"],
}
# Otherwise valid arguments for commands that require some (so the bad setting is what fails).
REQUIRED: dict[str, list[str]] = {"train": ["--data", __file__], "exchange serve": ["--data", __file__],
                                  "token create": ["someone"], "token revoke": ["someone"], "models promote": ["v1"],
                                  "models import": [__file__, "--card", __file__]}
# Commands that read no settings at all (pure computations on files).
NO_SETTINGS = {"backtest", "schema", "chain serve"}


@pytest.fixture(autouse=True)
def _no_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAINCAST_METRICS_PORT", "0")  # `produce` serves metrics before parsing its subcommand


def commands() -> list[str]:
    import typer.main

    def walk(cmd, prefix: str) -> list[str]:  # noqa: ANN001 - click objects
        subs = getattr(cmd, "commands", None)
        if not subs:
            return [prefix]
        return [n for name, sub in subs.items() for n in walk(sub, f"{prefix} {name}".strip())]

    return walk(typer.main.get_command(app), "")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr (stdout stays in capsys for the caller)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capsys.readouterr()
    run.out = captured.out  # type: ignore[attr-defined]
    return exit_.value.code, captured.err


def test_the_table_names_every_command() -> None:
    assert sorted(commands()) == sorted(BAD_ARGS)


@pytest.mark.parametrize("name", sorted(BAD_ARGS))
def test_bad_argument_is_one_line_and_exit_2(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(BAD_ARGS[name], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: "), err


@pytest.mark.parametrize("name", sorted(set(BAD_ARGS) - NO_SETTINGS))
def test_bad_setting_is_one_line_and_exit_2(name: str, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAINCAST_PARTITIONS", "many")
    argv = name.split() + REQUIRED.get(name, [])
    code, err = run(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "CHAINCAST_PARTITIONS" in err and "integer" in err, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    code, _ = run(["--version"], capsys)
    assert code == 0
    assert run.out == f"chaincast {version('chaincast')}\n"  # type: ignore[attr-defined]


def test_help_keeps_env_brackets(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, _ = run(["produce", "exchange", "--help"], capsys)
    assert code == 0
    assert "[env CHAINCAST_EXCHANGE_URL]" in run.out  # type: ignore[attr-defined]
