"""The package's shape, checked on the source with `ast` (nothing of spct is imported): the layers of docs/design.md
("Layers"), no import circle, no private name used across modules, small files and functions.

What counts as an import of module M by module A (all of them, wherever they sit in A):
- `import M`, `from M import x` and `from P import m` where P.m is a module (then the import is of P.m), at module
  level, inside functions or under `if TYPE_CHECKING`;
- an attribute read through an imported module, `alias.name` (so `pa._native` is a use of a private name of pa);
- a string constant that is exactly a module's dotted name (the facade's lazy table, the CLI's trainer table).

Layers, bottom to top (`LAYERS`; a module belongs to the longest entry its dotted name starts with):
    0  spct._C                         the native module (csrc/)
    1  spct._native, spct._atomic      bottom utilities: loading _C; atomic file writes
    2  spct.items                      the item type and its JSONL read/write (writes through _atomic)
    3  spct.ops.ref, spct.ops.triton   references and Triton kernels (siblings: neither imports the other)
    4  spct.ops                        one module per op, dispatch
    5  spct.engine                     runners, KV, generation
    6  spct.grm                        the reward models and judging
    7  spct.train, spct.eval           training and evaluation (siblings: neither imports the other)
    8  spct                            the facade (__init__: public names, the lazy table of engine and grm)
    9  spct.integrations, spct.serve   adapters for other libraries, the reward server (siblings)
   10  spct.ray                        Ray workers and the reward server's Ray Serve replicas (they run spct.serve)
   11  spct.cli                        the command line (`spct serve` runs spct.serve)
   12  spct.__main__                   `python -m spct`, which runs the CLI
A module may import its own unit (an entry of LAYERS) and any unit of a lower layer; nothing else.
docs/design.md puts grm/, train/ and eval/ on one row. The row is read as grm below the two others: training trains a
GRM and evaluation evaluates one, so train -> grm and eval -> grm point down; grm imports neither, and train and
eval are siblings that do not import each other (shared helpers live below them, e.g. in spct.items).
ONLY_FROM narrows two bottom modules further: `_native` and `_C` are imported inside spct.ops only (the engine asks
an op, never the native module).

Private names: no module uses a name with a leading underscore defined in another module. Private modules are the
exception inside their own package: spct._native, spct._atomic and spct._C may be imported anywhere in spct (within
the layer rules), spct.ops._views only inside spct.ops, and so on.

Writes: only spct._atomic imports tempfile or renames files (os.replace, os.rename, shutil.move).

Limits: no file under python/ over MAX_FILE_LINES lines; no function over MAX_FUNCTION_LINES lines (from its `def`
to its last line) unless listed in LONG_FUNCTIONS with the reason.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PYTHON = Path(__file__).resolve().parents[1] / "python"

LAYERS = {unit: layer for layer, units in enumerate([
    ("spct._C",),
    ("spct._native", "spct._atomic"),
    ("spct.items",),
    ("spct.ops.ref", "spct.ops.triton"),
    ("spct.ops",),
    ("spct.engine",),
    ("spct.grm",),
    ("spct.train", "spct.eval"),
    ("spct",),
    ("spct.integrations", "spct.serve"),
    ("spct.ray",),
    ("spct.cli",),
    ("spct.__main__",),
]) for unit in units}
ONLY_FROM = {"spct._native": ("spct.ops",), "spct._C": ("spct._native", "spct.ops")}
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
LONG_FUNCTIONS: dict[str, str] = {}  # "module.function": why it reads best as one piece (none so far)


@dataclass(frozen=True)
class Use:
    """Module `source` uses `target` (a module) at `line`; `name`: the name it takes from it, if not the module."""

    source: str
    target: str
    name: str | None
    line: int

    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PYTHON).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def sources() -> dict[str, tuple[Path, ast.Module]]:
    """Every module under python/ -> (its file, its parsed source)."""
    out = {}
    for path in sorted(PYTHON.rglob("*.py")):
        out[_module_name(path)] = (path, ast.parse(path.read_text(), filename=str(path)))
    return out


def _modules() -> set[str]:
    return set(sources()) | {"spct._C"}


def _package(module: str) -> str:
    path = sources()[module][0]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package(module).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _import_uses(module: str, node: ast.AST, aliases: dict[str, str]) -> list[Use]:
    """The uses one import statement makes; records the names it binds to modules in `aliases`."""
    known, uses = _modules(), []
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name.split(".")[0] == "spct":
                uses.append(Use(module, a.name, None, node.lineno))
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom):
        base = _resolve(module, node)
        if base.split(".")[0] != "spct":
            return uses
        for a in node.names:
            sub = f"{base}.{a.name}"
            if sub in known:
                uses.append(Use(module, sub, None, node.lineno))
                aliases[a.asname or a.name] = sub
            else:
                uses.append(Use(module, base, a.name, node.lineno))
    return uses


def _attribute_uses(module: str, node: ast.Attribute, aliases: dict[str, str]) -> Use | None:
    """`alias.x.y`: the first name past the modules of the chain, as a use of the last module."""
    chain = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    target, known = aliases[node.id], _modules()
    for attr in reversed(chain):
        if f"{target}.{attr}" not in known:
            return Use(module, target, attr, node.lineno)
        target = f"{target}.{attr}"
    return Use(module, target, None, node.lineno)


@cache
def uses() -> tuple[Use, ...]:
    """Every use of a spct module by a module under python/ (see the module docstring)."""
    known, out = _modules(), []
    for module, (_, tree) in sources().items():
        aliases: dict[str, str] = {}
        nodes = sorted((n for n in ast.walk(tree) if hasattr(n, "lineno")), key=lambda n: (n.lineno, n.col_offset))
        for node in nodes:  # imports first by line, so aliases are bound before the attributes that read them
            out += _import_uses(module, node, aliases)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
                out.append(Use(module, node.value, None, node.lineno))
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in inner:  # whole chains only
                use = _attribute_uses(module, node, aliases)
                if use is not None:
                    out.append(use)
    return tuple(u for u in out if u.target != u.source)


def unit(module: str) -> str:
    """The LAYERS entry a module belongs to (the facade `spct` only by its exact name)."""
    for key in sorted(LAYERS, key=len, reverse=True):
        if module == key or (key != "spct" and module.startswith(key + ".")):
            return key
    raise KeyError(module)


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in _modules() if m.split(".")[0] == "spct" and _unit_or_none(m) is None)
    assert not unplaced, f"modules without a layer (add them to LAYERS in tests/test_layers.py): {unplaced}"


def _unit_or_none(module: str) -> str | None:
    try:
        return unit(module)
    except KeyError:
        return None


def test_imports_point_down():
    bad = []
    for u in uses():
        src, dst = _unit_or_none(u.source), _unit_or_none(u.target)
        if src is None or dst is None or src == dst:
            continue
        if LAYERS[dst] >= LAYERS[src]:
            bad.append(f"{u.where()} ({src}, layer {LAYERS[src]}) imports {u.target} ({dst}, layer {LAYERS[dst]})")
        allowed = ONLY_FROM.get(u.target)
        if allowed and not any(u.source == a or u.source.startswith(a + ".") for a in allowed):
            bad.append(f"{u.where()} imports {u.target}, which only {', '.join(allowed)} may import")
    assert not bad, "imports that do not point down:\n" + "\n".join(sorted(set(bad)))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in _modules()}
    for u in uses():
        graph[u.source].add(u.target)
    cycles = _cycles(graph)
    assert not cycles, f"import cycles: {cycles}"


def _private_module_allowed(user: str, module: str) -> bool:
    """A private module (a dotted part with a leading underscore) is open to the package that holds it."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            if not (user == owner or user.startswith(owner + ".")):
                return False
    return True


def test_no_private_names_across_modules():
    bad = []
    for u in uses():
        if u.name is not None and u.name.startswith("_") and not u.name.startswith("__"):
            bad.append(f"{u.where()} uses {u.name} of {u.target}")
        elif not _private_module_allowed(u.source, u.target):
            bad.append(f"{u.where()} imports {u.target}, private to its package")
    assert not bad, "private names used across modules:\n" + "\n".join(sorted(set(bad)))


RENAMERS = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("shutil", "move")}


def test_only_atomic_makes_temporary_files_or_renames():
    """Every file the package writes goes through spct._atomic (one fsync and cleanup rule): nothing else imports
    tempfile or renames."""
    bad = []
    for module, (_, tree) in sources().items():
        if module == "spct._atomic":
            continue
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level else []
            if "tempfile" in names:
                bad.append(f"{module}:{node.lineno} imports tempfile")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    (node.value.id, node.attr) in RENAMERS:
                bad.append(f"{module}:{node.lineno} calls {node.value.id}.{node.attr}")
    assert not bad, "temporary files or renames outside spct._atomic:\n" + "\n".join(bad)


def test_no_file_is_too_long():
    long = {str(p.relative_to(PYTHON)): n for p, _ in sources().values()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_is_too_long():
    long = {}
    for module, (_, tree) in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                name = f"{module}.{node.name}"
                if n > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long[f"{name} (line {node.lineno})"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (shorten them or list them in LONG_FUNCTIONS): {long}"


def test_the_checks_see_what_they_should():
    """The checker itself: a few uses that must be found, so the tests above cannot pass by seeing nothing."""
    found = {(u.source, u.target, u.name) for u in uses()}
    assert ("spct.ops.vote", "spct.ops.ref.vote", None) in found  # from spct.ops.ref import vote
    assert ("spct.ops.ref.sample", "spct.ops.ref.philox", "uniform") in found  # a name from a module
    assert any(s == "spct" and t == "spct.engine" for s, t, _ in found)  # the facade's lazy table
    assert unit("spct.ops.triton.vote") == "spct.ops.triton" and unit("spct.ops.vote") == "spct.ops"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not _private_module_allowed("spct.engine.llama", "spct.ops._views")
    assert _private_module_allowed("spct.ops.vote", "spct.ops._views")
