"""The package's shape, checked by reading the source (``ast``), not by convention.

- One owner per concept: Redis keys are formatted only in ``stream/redis_layout.py``,
  topic default names written only in ``stream/topics.py`` (source and tests alike).
- No import circle between chaincast modules, and no module imports "up" the layers
  (models <- stream <- producers/consumers <- deploy).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaincast.stream.topics import TOPICS

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("models", "stream", "producers", "consumers", "deploy")
SOURCES = sorted(p for layer in LAYERS for p in (REPO / layer).rglob("*.py"))
TESTS = sorted(p for p in (REPO / "tests").rglob("*.py") if p != Path(__file__).resolve())  # not this checker
REDIS_OWNER = REPO / "stream" / "redis_layout.py"
TOPIC_OWNER = REPO / "stream" / "topics.py"

# A key's kind followed by its colon, then a placeholder, a symbol or the end of the literal.
REDIS_KEY = re.compile(r"(?<![\w.])(pred|preds|model|score|retrain|txpred|txpreds|txalerts|txscore):(?=\{|[A-Z0-9]|$)")
TOPIC_NAMES = {t.default for t in TOPICS}
# Literals that spell a topic's default name but mean something else (reason beside each).
NOT_TOPICS = {
    ("deploy/grafana/build.py", "predictions"): "a panel's legend",
    ("tests/deploy/test_cli_errors.py", "predictions"): "the `chaincast predictions` command",
}


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the Constant nodes that are docstrings (prose may describe the layout)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def literals(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal; an f-string's constant parts joined around ``{}``."""
    tree = ast.parse(path.read_text(), str(path))
    skip = docstrings(tree)
    inside_fstring = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                inside_fstring.add(id(value))
                parts.append(value.value if isinstance(value, ast.Constant) else "{}")
            yield node.lineno, "".join(parts)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                and id(node) not in inside_fstring):
            yield node.lineno, node.value


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_redis_keys_are_formatted_only_by_the_layout_module() -> None:
    offenders = [f"{rel(p)}:{line}: {text!r}" for p in SOURCES + TESTS if p != REDIS_OWNER
                 for line, text in literals(p) if REDIS_KEY.search(text)]
    assert not offenders, "Redis keys formatted outside stream/redis_layout.py:\n" + "\n".join(offenders)


def test_the_key_pattern_catches_what_it_must() -> None:
    """The check above can fail: these are the spellings it exists to catch."""
    assert all(REDIS_KEY.search(t) for t in ["{}pred:{}", "{}preds:BTCUSDT", "cc:model:{}", "{}score:", "x:retrain:{}"])
    assert not any(REDIS_KEY.search(t) for t in ["refused model: {}", "the model: bad", "cc.pred:x"])


def test_topic_names_are_written_only_in_the_registry() -> None:
    offenders = []
    for p in SOURCES + TESTS:
        if p == TOPIC_OWNER:
            continue
        for line, text in literals(p):
            name = text.split("{}")[0].rstrip(".")
            if name in TOPIC_NAMES and (rel(p), name) not in NOT_TOPICS:
                offenders.append(f"{rel(p)}:{line}: {text!r}")
    assert not offenders, "topic names written outside stream/topics.py:\n" + "\n".join(offenders)


# --- imports ---------------------------------------------------------------------------------

def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["chaincast", *parts])


MODULES = {module_name(p): p for p in SOURCES}


def type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the statements under ``if TYPE_CHECKING:`` (never run, so no runtime edge)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def resolve(name: str) -> str | None:
    """The chaincast module ``name`` loads (a submodule, else its package), or None if not ours."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Every chaincast module ``module`` imports at run time (top level and inside functions)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    skip = type_checking_blocks(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        found |= {m for n in names if n.startswith("chaincast.") and (m := resolve(n)) and m != module}
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_read() -> None:
    assert len(GRAPH) > 60
    assert "chaincast.stream.context" in GRAPH["chaincast.stream.app"]
    assert "chaincast.deploy.cli_args" in GRAPH["chaincast.deploy.cli"]


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle() -> None:
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("layer", LAYERS)
def test_no_module_imports_up_the_layers(layer: str) -> None:
    allowed = {"models": {"models"}, "stream": {"models", "stream"},
               "producers": {"models", "stream", "producers"}, "consumers": {"models", "stream", "consumers"},
               "deploy": set(LAYERS)}[layer]
    upward = [f"{m} -> {d}" for m, deps in GRAPH.items() if m.split(".")[1] == layer
              for d in deps if d.split(".")[1] not in allowed]
    assert not upward, upward


def test_agents_import_the_context_not_the_app() -> None:
    for name in ("bars", "predict", "score"):
        path = MODULES[f"chaincast.stream.agents.{name}"]
        assert "chaincast.stream.app" not in path.read_text(), name
