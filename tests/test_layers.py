"""The package by layer: each layer imports only the layers under it, and no import circle.

LAYERS below is the one place the order is written. Imports are read statically (ast), every
import statement counts (also those inside functions: a lazy import is still a dependency), and
importing `a.b.c` from outside `a.b` also runs `a/b/__init__.py`, so that counts as an import of
`a.b` too.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "aot_kernels"

# Bottom to top. A module belongs to the layer of its longest matching prefix.
LAYERS = (
    ("ops", ("aot_kernels.ops",)),  # op API, registration, torch composite, validation
    ("gpu", ("aot_kernels.gpu",)),  # Triton kernels, plugged into the op API
    ("reducers", ("aot_kernels.reducers",)),  # AOT, the authors' variant, baselines
    ("eval", ("aot_kernels.eval",)),  # encoders, videos, metrics, compare, FLOPs, bench
    ("integrations", ("aot_kernels.integrations",)),  # transformers, lmms-eval, vLLM
    ("top", ("aot_kernels", "aot_kernels.__main__", "aot_kernels.demo")),  # API, CLI, demo
)
ROOT_MODULES_MAX = 3  # beside __init__.py and __main__.py


def module_files(package_dir: Path, package: str):
    """{module name: path} of every .py file under package_dir."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (package,) + path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules) -> set:
    """The package's modules that importing `name` (at path) may import."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # `from pkg import sub` imports the submodule pkg.sub where there is one; any other
            # name is read from pkg/__init__.py
            subs = {f"{module}.{a.name}" for a in node.names}
            found = {s for s in subs if s in modules or s.endswith("._C")}
            targets.update(found)
            if len(found) < len(subs):
                targets.add(module)
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    edges = set()
    for target in targets:
        if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
            continue
        parts = target.split(".")
        for i in range(2, len(parts) + 1):  # the target and the packages it runs on the way
            prefix = ".".join(parts[:i])
            if prefix in own and prefix != target:
                continue  # a package this module is already inside: already running
            if prefix in modules or prefix.endswith("._C"):
                edges.add(prefix)
    edges.discard(name)
    return edges


def graph(package_dir: Path, package: str = PACKAGE):
    modules = module_files(package_dir, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(name: str) -> int:
    best, level = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    if level is None:
        raise LookupError(f"{name} is in no layer of LAYERS")
    return level


def upward_imports(edges):
    """[(importer, imported)] where the imported module sits in a higher layer."""
    return sorted((a, b) for a, targets in edges.items() for b in targets
                  if layer_of(b) > layer_of(a))


def circles(edges):
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


EDGES = graph(ROOT / PACKAGE)


def test_every_module_is_in_a_layer():
    for name in EDGES:
        layer_of(name)


def test_no_import_from_a_lower_layer_into_a_higher_one():
    assert upward_imports(EDGES) == []


def test_no_import_circle():
    assert circles(EDGES) == []


def test_the_package_root_holds_at_most_three_modules():
    root = sorted(p.name for p in (ROOT / PACKAGE).glob("*.py"))
    others = [n for n in root if n not in ("__init__.py", "__main__.py")]
    assert len(others) <= ROOT_MODULES_MAX, others


def test_the_walk_sees_lazy_imports_and_parent_packages():
    # gpu's launchers use the torch composite: gpu -> ops.composite and, through it, ops.
    assert {"aot_kernels.ops.composite", "aot_kernels.ops"} <= EDGES["aot_kernels.gpu"]
    # __main__ imports its commands inside functions
    assert "aot_kernels.eval.compare" in EDGES["aot_kernels.__main__"]


def write(tree: Path, files: dict):
    for rel, text in files.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path):
    """The old layout's circle (compare -> videos -> demo -> compare) and an op module that
    imports a reducer, rebuilt as a small tree: both are reported."""
    write(tmp_path / PACKAGE, {
        "__init__.py": "",
        "ops/__init__.py": "",
        "ops/api.py": "def f():\n    from ..reducers import aot\n",
        "reducers/__init__.py": "",
        "reducers/aot.py": "from ..ops import api\n",
        "eval/__init__.py": "",
        "eval/compare.py": "from . import videos\n",
        "eval/videos.py": "from ..demo import encode\n",
        "demo.py": "from .eval import compare\n",
    })
    edges = graph(tmp_path / PACKAGE)
    assert ("aot_kernels.ops.api", "aot_kernels.reducers.aot") in upward_imports(edges)
    assert ("aot_kernels.eval.videos", "aot_kernels.demo") in upward_imports(edges)
    found = circles(edges)
    assert ["aot_kernels.demo", "aot_kernels.eval.compare", "aot_kernels.eval.videos"] in found
    assert ["aot_kernels.ops.api", "aot_kernels.reducers.aot"] in found


def test_importing_a_submodule_counts_its_package(tmp_path):
    """b/x.py importing a.y also runs a/__init__.py, which here imports b: a circle, although
    no file imports a.__init__ by name."""
    write(tmp_path / PACKAGE, {
        "__init__.py": "",
        "ops/__init__.py": "from . import api\n",
        "ops/api.py": "from ..gpu import kernels\n",
        "ops/composite.py": "",
        "gpu/__init__.py": "",
        "gpu/kernels.py": "from ..ops.composite import plan\n",
    })
    edges = graph(tmp_path / PACKAGE)
    assert "aot_kernels.ops" in edges["aot_kernels.gpu.kernels"]
    assert ["aot_kernels.gpu.kernels", "aot_kernels.ops", "aot_kernels.ops.api"] in circles(edges)


@pytest.mark.parametrize("name, layer", [("aot_kernels.ops.api", "ops"),
                                         ("aot_kernels.gpu.compile_check", "gpu"),
                                         ("aot_kernels.reducers.aot", "reducers"),
                                         ("aot_kernels.eval.metrics", "eval"),
                                         ("aot_kernels.integrations.vllm.models", "integrations"),
                                         ("aot_kernels.demo", "top"), ("aot_kernels", "top")])
def test_layer_of_takes_the_longest_prefix(name, layer):
    assert LAYERS[layer_of(name)][0] == layer
