"""The layout's rules (docs/architecture.md), checked on every `make test`.

* the import-linter contracts of pyproject.toml: the layers, no Spark job importing another, no
  cycle between sibling packages;
* no import cycle between any two modules (lazy imports inside functions count: a cycle there
  still means neither module can be understood without the other);
* no lake path spelt outside the lake catalog (``cluster/core/catalog.py``).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("cluster", "ray_apps", "spark_jobs", "protos")


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (make install)"
    done = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def module_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges.get(nxt, ()))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_module_cycles_are_found():
    graph = grimp.ImportGraph()
    for name in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(name)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    assert module_cycles(graph) == []
    graph.add_import(importer="a.z", imported="a.x")
    assert module_cycles(graph) == [["a.x", "a.y", "a.z"]]


def test_no_module_imports_itself_back():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert module_cycles(graph) == []


# ---------------------------------------------------------------------------------------------
# The lake catalog (cluster/core/catalog.py) is the only module that spells a lake path
# ---------------------------------------------------------------------------------------------

#: Methods of :class:`cluster.core.storage.lake.Lake` that take lake path parts.
LAKE_METHODS = frozenset({"uri", "exists", "list_dir", "read_bytes", "write_bytes", "read_json", "write_json",
                          "read_parquet", "delete", "stage_input"})
#: The modules allowed to spell lake paths: the catalog, and the lake that resolves them.
LAKE_PATH_OWNERS = ("cluster/core/catalog.py", "cluster/core/storage/lake.py")
_POINTER_FILES = ("latest.json", "_meta.json")


def _is_text_literal(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _is_zone_member(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Zone"


def _is_lake(node: ast.expr) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name in ("lake", "_lake") or name.endswith("_lake")


def lake_path_literals(source: str, filename: str = "<string>") -> list[int]:
    """Lines (sorted, each once) of calls that pass a string literal (or f-string) as a lake path.

    A call is one when a positional argument is a string literal or f-string and either

    * another positional argument is a ``Zone`` member (``lake.read_json(Zone.FEATURES, "rfm", ...)``,
      or any helper taking the same parts);
    * it calls a lake method on something named ``lake`` (``lake.read_parquet(base, "users")``);
    * it calls a lake method with a pointer file name (``t.read_json(lake, "latest.json")``).

    Other calls with literals (``os.path.exists("x")``, ``d.get("k")``) are not lake paths.
    """
    lines = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        literals = [a for a in node.args if _is_text_literal(a)]
        if not literals:
            continue
        func = node.func
        lake_method = isinstance(func, ast.Attribute) and func.attr in LAKE_METHODS
        pointer = any(isinstance(a, ast.Constant) and a.value.endswith(_POINTER_FILES) for a in literals)
        if (any(_is_zone_member(a) for a in node.args)
                or (lake_method and (_is_lake(func.value) or pointer))):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_lake_path_checker_flags_literal_paths_only():
    planted = (
        'lake.read_json(Zone.FEATURES, "rfm", "latest.json")\n'
        'self._lake.list_dir(Zone.RAW, f"users/dt={day}")\n'
        'read_table(lake, Zone.FEATURES, "rfm")\n'
        'lake.read_parquet(meta["path"], "users")\n'
        'catalog.RFM.read_json(lake, "latest.json")\n'
    )
    assert lake_path_literals(planted) == [1, 2, 3, 4, 5]
    clean = (
        "catalog.RFM.latest(lake)\n"
        'catalog.CLEAN.read_parquet(lake, run_id, "users")\n'
        "lake.read_json(*catalog.REGISTRY.parts(name, catalog.MODEL_CURRENT))\n"
        'os.path.exists("x")\n'
        'settings.get("lake", "x")\n'
        'Path("a").read_text("utf-8")\n'
        'log.info("wrote %s", "latest.json")\n'
    )
    assert lake_path_literals(clean) == []


def test_no_lake_path_is_spelt_outside_the_catalog():
    offenders = []
    for package in ("cluster", "ray_apps", "spark_jobs"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in LAKE_PATH_OWNERS:
                continue
            offenders += [f"{rel}:{line}" for line in lake_path_literals(path.read_text("utf-8"), rel)]
    assert not offenders, (
        "lake paths spelt outside cluster/core/catalog.py (use a catalog Table: "
        "RFM.latest(lake), RFM.run_uri(lake, run_id), REGISTRY.parts(...)):\n  " + "\n  ".join(offenders))
