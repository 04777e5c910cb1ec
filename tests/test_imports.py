"""The package's imports run one way: no cycle among fastelectra modules, and no module takes a
private (underscore) name from another package.

Read from the source with `ast`, so nothing is imported: module-level and function-level
imports both count (a lazy import still makes the two modules depend on each other); those
under ``if TYPE_CHECKING:`` do not, as they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fastelectra

PACKAGE = Path(fastelectra.__file__).parent


def module_names() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement except those in an ``if TYPE_CHECKING:`` block."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the fastelectra modules it imports; and private names taken across packages."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    private: list[str] = []
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name in modules}
                continue
            if node.level:  # relative: from the importer's package upwards
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source.partition(".")[0] != "fastelectra":
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    imported.add(submodule)
                    continue
                imported.add(source)
                source_package = source if modules[source][1] else source.rpartition(".")[0]
                is_private = alias.name.startswith("_") and not alias.name.endswith("__")
                if is_private and source_package != package:
                    private.append(f"{name}: from {source} import {alias.name}")
        imported.discard(name)
        graph[name] = imported
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_graph_holds_lazy_imports():
    graph, _ = import_graph()
    # convert.build imports convert.precision inside `build()` only.
    assert "fastelectra.convert.precision" in graph["fastelectra.convert.build"]


def test_no_import_cycle():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_no_private_name_imported_across_packages():
    _, private = import_graph()
    assert private == []


# The runtime (and every fastelectra module it imports, lazily or not) must load and run a
# bundle without the heavy extras: not the bench's OpenVINO peers (openvino, nncf), not
# conversion (TensorFlow, tf2onnx, onnx), not the tests' torch. (`embed`'s optional tqdm bar
# and Ray / Triton scale-out are imported only when asked for, and stay allowed.)
RUNTIME_ROOTS = ("fastelectra.runtime", "fastelectra.bundle")
NEVER_IN_RUNTIME = {
    "openvino",
    "nncf",
    "tensorflow",
    "tf_keras",
    "tensorflow_hub",
    "tf2onnx",
    "onnx",
    "torch",
    "sentence_transformers",
}


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-fastelectra, non-stdlib packages `path` imports."""
    import sys

    names: set[str] = set()
    for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.partition(".")[0] for a in node.names}
        elif not node.level and node.module:
            names.add(node.module.partition(".")[0])
    return {n for n in names if n != "fastelectra" and n not in sys.stdlib_module_names}


def runtime_closure() -> set[str]:
    """The runtime's modules and every fastelectra module they import, transitively."""
    graph, _ = import_graph()
    found = {m for m in graph if m in RUNTIME_ROOTS or m.startswith("fastelectra.runtime.")}
    frontier = set(found)
    while frontier:
        frontier = set().union(*(graph[m] for m in frontier)) - found
        found |= frontier
    return found


def test_the_runtime_never_imports_openvino_or_other_heavy_extras():
    modules = module_names()
    closure = runtime_closure()
    assert {"fastelectra.runtime.encoder", "fastelectra.bundle", "fastelectra.errors"} <= closure
    heavy = {m: third_party_imports(modules[m][0]) & NEVER_IN_RUNTIME for m in closure}
    assert {m: names for m, names in heavy.items() if names} == {}


def test_the_closure_check_sees_an_optional_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n\ndef f():\n    import openvino.runtime\n    from nncf import Dataset\n"
    )
    assert third_party_imports(module) == {"openvino", "nncf"}
    # The bench's OpenVINO peer does import them: it is outside the runtime's closure.
    assert "fastelectra.bench.openvino_peer" not in runtime_closure()
    peer = module_names()["fastelectra.bench.openvino_peer"][0]
    assert {"openvino", "nncf"} <= third_party_imports(peer)


# The layers, lowest first: a module may import its own layer's modules and lower layers' only.
# Data flows SavedModel -> bundle -> runtime; calibration turns text into feeds and ranges for
# the quantisers in convert; export, serve and bench use the runtime (and convert); scale-out
# deploys serve's app and export's files; the command line and the package root sit on top.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "version"),
    ("precisions", "cpu", "process_memory", "destinations", "workdirs"),
    ("bundle",),
    ("runtime",),
    ("calibration",),
    ("convert",),
    ("export", "serve", "bench"),
    ("scale",),
    ("cli", "demo", ""),  # "": the package root, `fastelectra/__init__.py`
)


def layer_of(module: str) -> int:
    """The layer of `fastelectra.<unit>[.…]`, by its first name under the package."""
    unit = module.split(".")[1] if "." in module else ""
    for level, units in enumerate(LAYERS):
        if unit in units:
            return level
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{importer} -> {imported}"
        for importer, imports in graph.items()
        for imported in imports
        if layer_of(imported) > layer_of(importer)
    )


def test_imports_run_down_the_layers():
    graph, _ = import_graph()
    assert upward_imports(graph) == []


def test_the_layer_check_sees_an_upward_import():
    graph = {
        "fastelectra.runtime.cli": {"fastelectra.scale.cli", "fastelectra.bundle"},
        "fastelectra.calibration.ranges": {"fastelectra.convert.int8"},
        "fastelectra.convert.static_int8": {"fastelectra.calibration.ranges"},
    }
    assert upward_imports(graph) == [
        "fastelectra.calibration.ranges -> fastelectra.convert.int8",
        "fastelectra.runtime.cli -> fastelectra.scale.cli",
    ]
