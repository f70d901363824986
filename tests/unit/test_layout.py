"""The package layout the domains copy: no import cycle, no reaching into another
domain's models, shared plumbing that names no domain. Read from the source, so these
tests need no server."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
DOMAINS = sorted(p.name for p in SERVICE.iterdir() if (p / "__init__.py").exists())
PLUMBING = sorted(p.stem for p in SERVICE.glob("*.py") if p.name != "__init__.py")


def _unit(module: str) -> str | None:
    """`service.webhooks.relay` -> `webhooks`, `service.metrics` -> `metrics`."""
    parts = module.split(".")
    if parts[0] != "service" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    """Every `service...` module the file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("service.")}


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in SERVICE.rglob("*.py"):
        if path == SERVICE / "__init__.py":
            continue  # the app factory wires every domain in
        relative = path.relative_to(SERVICE).with_suffix("")
        source = relative.parts[0]
        for module in _imports(path):
            target = _unit(module)
            if target is not None and target != source and target in DOMAINS + PLUMBING:
                edges.setdefault(source, set()).add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_domains_and_plumbing():
    assert _cycles(_edges()) == []


def test_shared_plumbing_imports_no_domain():
    edges = _edges()

    assert {unit: sorted(edges.get(unit, set()) & set(DOMAINS)) for unit in PLUMBING
            if edges.get(unit, set()) & set(DOMAINS)} == {}


def test_no_domain_reaches_into_another_domains_models():
    reaching = []
    for path in SERVICE.rglob("*.py"):
        source = path.relative_to(SERVICE).parts[0]
        for module in _imports(path):
            parts = module.split(".")
            if len(parts) >= 3 and parts[1] in DOMAINS and parts[1] != source \
                    and parts[2] == "models" and path != SERVICE / "__init__.py":
                reaching.append(f"{path.relative_to(SERVICE)} -> {module}")

    assert reaching == []


def test_the_celery_app_names_no_domain():
    text = (SERVICE / "celery_app.py").read_text()

    assert [domain for domain in DOMAINS if f'"{domain}' in text or f"'{domain}" in text] == []


def test_every_domain_is_wired_in_by_one_init_app_call():
    factory = (SERVICE / "__init__.py").read_text()

    assert DOMAINS
    for domain in DOMAINS:
        assert factory.count(f"    {domain}.init_app(app)\n") == 1, domain
