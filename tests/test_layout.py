"""The layout contract (SPEC §3): the core never imports the built-in model's project, no import cycles at any
level (function-level imports included), the command line's parser apart from the commands, small files."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "dynrefer"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path) -> set[str]:
    """Every module ``path`` imports, at any level of the file (absolute names; ``from X import name`` also
    counts ``X.name``, in case it is a submodule)."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def _graph(root: Path, package: str) -> dict[str, set[str]]:
    files = {_module_name(p, root): p for p in (root / package).rglob("*.py")}
    return {m: {i for i in _imports(p, root) if i in files and i != m} for m, p in files.items()}


def test_the_core_never_imports_the_builtin_project():
    for path in CORE.rglob("*.py"):
        bad = [i for i in _imports(path, ROOT) if i.split(".")[0] == "dynrefer_builtin"]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_import_cycles_at_any_level():
    for root, package in ((ROOT, "dynrefer"), (ROOT / "projects" / "builtin", "dynrefer_builtin")):
        graph = _graph(root, package)
        state: dict[str, int] = {}

        def visit(node, stack):
            state[node] = 1
            for nxt in sorted(graph[node]):
                if state.get(nxt) == 1:
                    raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
                if nxt not in state:
                    visit(nxt, stack + [nxt])
            state[node] = 2

        for node in sorted(graph):
            if node not in state:
                visit(node, [node])


#: the model is a pure nn.Module: no view selection, inference loop, training loop or command line
FORBIDDEN_IN_MODEL = ("dynrefer.inference", "dynrefer.commands", "dynrefer.view_selection", "dynrefer.train",
                      "dynrefer.cli")


def test_the_model_is_not_the_inference_or_the_commands():
    graph = _graph(ROOT, "dynrefer")
    for module, deps in graph.items():
        if module.startswith("dynrefer.model"):
            assert not [d for d in deps if d.startswith(FORBIDDEN_IN_MODEL)], module


def test_small_files_and_a_short_cli():
    assert len((CORE / "cli.py").read_text().splitlines()) <= 150
    for path in list(CORE.rglob("*.py")) + list((ROOT / "projects").rglob("*.py")):
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.relative_to(ROOT)}: {lines} lines"


def test_every_command_module_registers_a_parser():
    from dynrefer.cli import build_parser
    from dynrefer.commands import COMMANDS, LIGHTNING_COMMANDS

    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert {c.replace("_", "-") for c in COMMANDS} | set(LIGHTNING_COMMANDS) | {"synth"} == set(choices)
