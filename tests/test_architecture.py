"""The import graph of the project's own modules (issue 22): no cycles, and imports run one way.

Read with `ast`, so nothing is imported and the test takes milliseconds. Every import counts, the
ones inside functions too: a cycle hidden behind a lazy import is still two modules that cannot be
understood (or moved) one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Top-level modules and packages that ship (pyproject's py-modules and packages).
SOURCES = ("cli.py", "droplet3d", "recon", "runs")
# Who may import whom, top to bottom: the CLI, what spans both stages, then each stage on its own.
LAYERS = {"cli": 3, "runs": 2, "droplet3d": 1, "recon": 1}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for source in SOURCES:
        path = ROOT / source
        files = [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
        for file in files:
            out[module_name(file)] = file
    return out


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` (module `name`) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            # The longest project module the dotted name starts with (a name may be a function).
            parts = target.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in known:
                    if candidate != name:
                        found.add(candidate)
                    break
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_the_graph_sees_the_project():
    graph = import_graph()
    assert {"cli", "runs.batch", "recon.api", "droplet3d.generate"} <= set(graph)
    assert "recon.api" in graph["cli"]  # lazy imports inside functions count


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_run_one_way():
    """cli -> runs -> the stages; recon and droplet3d never import each other (nor anything above)."""
    upward = sorted(
        (name, target)
        for name, targets in import_graph().items()
        for target in targets
        if LAYERS[target.split(".")[0]] > LAYERS[name.split(".")[0]]
        or {name.split(".")[0], target.split(".")[0]} == {"recon", "droplet3d"}
    )
    assert upward == []


MAX_MODULE_LINES = 600  # issue 22: a module longer than this does more than one job
MAX_CLI_LINES = 400  # the CLI only declares commands


def test_no_module_grows_into_a_room_everything_passes_through():
    lengths = {
        name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in project_modules().items()
    }
    assert lengths["cli"] < MAX_CLI_LINES
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


# --------------------------------------------------------------------------- options come from runs.options
def option_fields() -> dict[str, dict[str, object]]:
    """command -> parameter name -> its `runs.options` field, for every command built from groups."""
    import dataclasses

    from runs import options

    groups = [g for g in vars(options).values() if dataclasses.is_dataclass(g) and isinstance(g, type)]
    by_name: dict[str, list[object]] = {}
    for group in groups:
        for f in dataclasses.fields(group):
            by_name.setdefault(f.name, []).append(f)
    return by_name


def click_commands() -> dict[str, object]:
    import typer.main

    from cli import app

    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_every_flag_has_the_default_and_bounds_of_its_settings_field():
    from runs.options import is_required

    fields_by_name = option_fields()
    checked = 0
    for name, command in click_commands().items():
        if name == "info":  # a diagnostic with its own two flags
            continue
        for param in command.params:
            candidates = fields_by_name.get(param.name, [])
            # A name can have a variant per command (batch's optional --ckpt, run's --fit-seed): the
            # flag must match one field exactly in flags, default and bounds.
            matches = [
                f for f in candidates
                if (param.required if is_required(f) else param.default == f.default)
                and getattr(param, "min", None) == f.metadata["low"]
                and getattr(param, "max", None) == f.metadata["high"]
                and param.help == f.metadata["help"]
            ]  # fmt: skip
            assert matches, f"{name} {param.opts}: no runs.options field gives its default and bounds"
            checked += 1
    assert checked > 100


def _required_args(command: object, out: object) -> list[str]:
    """Values for a command's required parameters (placeholders: parsing stops at the bad value), and
    `out` as its --out."""
    args: list[str] = []
    for param in command.params:  # type: ignore[attr-defined]
        if param.required or "--out" in param.opts:
            flag = [] if param.param_type_name == "argument" else [param.opts[0]]
            args += flag + [str(out) if "--out" in param.opts else "placeholder"]
    return args


def test_a_value_just_outside_a_bound_is_refused_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    refused = 0
    for name, command in click_commands().items():
        for param in command.params:
            low, high = getattr(param, "min", None), getattr(param, "max", None)
            for bad in [v for v in (low, high) if v is not None]:
                step = 1 if isinstance(bad, int) else 1e-6 * max(1.0, abs(bad))
                value = bad - step if bad == low else bad + step
                out = tmp_path / f"{name}-{param.name}"
                args = [name, *_required_args(command, out), param.opts[0], str(value)]
                result = runner.invoke(app, args)
                assert result.exit_code == 2, (args, result.output)
                assert param.opts[0] in result.output, (args, result.output)
                assert not out.exists()
                refused += 1
    assert refused > 30
