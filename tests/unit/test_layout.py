"""The folder list is the architecture: these rules keep it true as code lands.

- the receiver's package never imports the Celery side (workers/ depends on
  webhook_ingest, never the other way);
- no import cycle between modules at import time;
- Redis is talked to only by state/, handoff/, operations/ and the providers'
  key caches, through the one client the process builds (services.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "webhook_ingest"

# Where a Redis command may be sent from (beside the composition root).
REDIS_ROOMS = ("state/", "handoff/", "operations/")
KEY_CACHES = ("providers/poll_targets.py", "verification/ed25519_jwks.py")
# check-config's preflight pings Redis with the processes' own factory, once, even
# when the providers cannot be built (so without Services).
CLIENT_FACTORY_CALLERS = ("services.py", "operations/preflight.py")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


KNOWN = set(modules())


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def imported(tree: ast.AST, *, top_level_only: bool) -> set[str]:
    """Module names imported; with top_level_only, those run at import time
    (not inside functions, not under `if TYPE_CHECKING`)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if top_level_only and isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            ):
                continue
            if (
                top_level_only
                and isinstance(child, ast.If)
                and "TYPE_CHECKING" in ast.unparse(child.test)
            ):
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # `from package import submodule` is an arrow to the submodule (its
                # package is the parent being initialised, not an import back)
                submodules = {f"{child.module}.{alias.name}" for alias in child.names}
                known_submodules = submodules & KNOWN
                names.update(known_submodules or {child.module})
            visit(child)

    visit(tree)
    return names


def test_nothing_in_webhook_ingest_imports_the_worker_side():
    offenders = {
        relative(path): sorted(
            n
            for n in imported(ast.parse(path.read_text()), top_level_only=False)
            if n == "workers" or n.startswith("workers.")
        )
        for path in modules().values()
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_no_module_imports_itself_back_at_import_time():
    known = modules()
    graph = {
        name: {n for n in imported(ast.parse(path.read_text()), top_level_only=True) if n in known}
        - {name}
        for name, path in known.items()
    }
    cycles = strongly_connected(graph)
    assert [sorted(cycle) for cycle in cycles if len(cycle) > 1] == []


def redis_calls(tree: ast.AST) -> list[str]:
    """Calls of a method on something named `redis` / `_redis` (a client), and
    pipelines or scripts made from anything."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        target = node.func.value
        named = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if named in ("redis", "_redis") or node.func.attr in ("pipeline", "register_script"):
            found.append(f"{ast.unparse(node.func)} (line {node.lineno})")
    return found


def test_redis_is_called_only_from_state_handoff_operations_and_the_key_caches():
    offenders = {}
    for path in modules().values():
        name = relative(path)
        if name.startswith(REDIS_ROOMS) or name in KEY_CACHES:
            continue
        calls = redis_calls(ast.parse(path.read_text()))
        if calls:
            offenders[name] = calls
    assert offenders == {}


def test_every_redis_client_comes_from_the_one_factory_called_in_one_place():
    offenders = {}
    for path in modules().values():
        name = relative(path)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            call = ast.unparse(node.func)
            own_pool = call.endswith(("Redis.from_url", "Redis", "ConnectionPool", "from_url"))
            factory = call.endswith("redis_client.connect")
            if (own_pool and name != "redis_client.py") or (
                factory and name not in CLIENT_FACTORY_CALLERS
            ):
                offenders.setdefault(name, []).append(f"{call} (line {node.lineno})")
    assert offenders == {}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the import cycles, each as the set of its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in graph:
        if node not in index:
            connect(node)
    return components
