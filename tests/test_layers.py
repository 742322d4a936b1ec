"""Imports point one way: stages -> base, app -> stages (an AST read of every module, no imports run).

Layers (issue 16; DESIGN.md: stages meet only at files, shared helpers live in `ehrfm/`):
- the app layer is every module that imports two or more of the stage packages `tokenization`,
  `sweeps`, `analysis` (a module-name string such as "sweeps.cli" handed to importlib counts as an
  import), and every module that imports such a module; it lives in `ehrfm/app/` (plus
  `ehrfm/__main__.py`, the shim that `python -m ehrfm` needs);
- no module of a stage package, and no module a stage reaches (the base), is in the app layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ehrfm", "tokenization", "sweeps", "analysis")
STAGES = ("tokenization", "sweeps", "analysis")
APP_OUTSIDE_APP_DIR = {"ehrfm.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its body (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        # `from a.b import c` may import module a.b.c or name c of a.b: take the longest known module
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                add(f"{base}.{alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            add(node.value)  # dispatch by module name ("sweeps.cli")
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            prefix = str(node.values[0].value)  # f"ehrfm.clinical.{name}": any module under the prefix
            if prefix.endswith(".") and prefix[:-1] in known:
                found.update(m for m in known if m.startswith(prefix) and m != name)
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def reachable(graph: dict[str, set[str]], starts) -> set[str]:
    seen, todo = set(), list(starts)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    return seen


def app_layer(graph: dict[str, set[str]]) -> set[str]:
    def stage_of(m: str) -> str | None:
        top = m.split(".")[0]
        return top if top in STAGES else None

    app = {m for m, deps in graph.items() if len({stage_of(d) for d in deps} - {None}) >= 2}
    changed = True
    while changed:  # and whatever imports an app module
        new = {m for m, deps in graph.items() if deps & app} - app
        app |= new
        changed = bool(new)
    return app


def test_graph_sees_imports_strings_and_prefixes():
    g = graph()
    assert "sweeps.cli" in g["ehrfm.app.cli"] and "analysis.cli" in g["ehrfm.app.cli"]  # by module-name string
    assert "ehrfm.clinical.labels" in g["ehrfm.clinical"]  # by f-string prefix
    assert "ehrfm.train" in g["sweeps.run_one"] or "ehrfm.train" in reachable(g, ["sweeps.run_one"])


def test_app_layer_lives_in_ehrfm_app():
    g = graph()
    app = app_layer(g)
    assert {"ehrfm.app.cli", "ehrfm.app.demo"} <= app
    outside = sorted(m for m in app if not m.startswith("ehrfm.app") and m not in APP_OUTSIDE_APP_DIR)
    assert not outside, f"modules in the app layer outside ehrfm/app/: {outside}"


def test_stages_and_the_base_they_reach_never_import_the_app():
    g = graph()
    app = app_layer(g)
    stage_modules = [m for m in g if m.split(".")[0] in STAGES]
    reached = reachable(g, stage_modules)
    leaks = sorted(reached & app)
    assert not leaks, f"stage code reaches the app layer: {leaks}"
    base_reaching_app = sorted(m for m in g if m.startswith("ehrfm.") and not m.startswith("ehrfm.app")
                               and m not in APP_OUTSIDE_APP_DIR and g[m] & app)
    assert not base_reaching_app, base_reaching_app


def test_no_stage_imports_another_stages_modules():
    """DESIGN.md: no stage imports another stage's internals (shared helpers live in `ehrfm/`).

    A module of a stage package may import another stage only through that package itself (its
    `__init__.py`, the public API), never one of its modules: sweeps.plan imported
    analysis.table.BUDGET_SAME_DECADES and analysis.recommend.trust (now in ehrfm.law_checks)."""
    g = graph()
    crossings = sorted(f"{m} -> {d}" for m, deps in g.items() if m.split(".")[0] in STAGES for d in deps
                       if d.split(".")[0] in STAGES and d.split(".")[0] != m.split(".")[0] and "." in d)
    assert not crossings, f"stage modules importing another stage's non-public modules: {crossings}"
