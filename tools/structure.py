"""The package's structure, read from its source: layers, imports, and sizes.

    python tools/structure.py            # layers, import edges between units, violations
    python tools/structure.py --sizes    # also the longest modules and functions

The layers follow the data flow (docs/architecture.md). A module may import modules of its
own unit and of units in lower layers, nothing else: no upward import, no import between
two units of the same layer, no cycle. Imports inside functions count like any other
(an import moved into a function to break a cycle is still the cycle). Across units only
public names pass: no ``dplowrank.unit._module`` path and no ``_name`` (kernel modules,
``dplowrank._x``, are the shared base and may be imported by path, their names public).
``tests/test_architecture.py`` asserts all of it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dplowrank"

#: Units (a subpackage, or a top-level module) by layer, lowest first. Units of one layer
#: may not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_kernel",),  # dplowrank._validation, _tensor, _memory, _files, _progress, _threads, _parallel, _secure, _chacha, _chacha_triton, _boxmuller, _boxmuller_triton, _random, _distributed
    ("privacy",),  # events, GDP/zCDP/RDP curves, the calibration search, noise calibration
    ("mechanisms", "accounting"),  # the noise; composition and budgets
    ("gram", "linalg"),  # the private statistic and its checks; the eigensolvers
    ("diagnostics",),  # free post-processing of a released spectrum
    ("release",),  # the value object, its file, the pipeline
    ("analysis", "compress", "pca"),  # non-private tools on the true matrix; model compression; the PCA estimator
    ("distributed",),  # torch.distributed: data-parallel releases and statistics, row-sharded releases
    ("demo", "__init__"),  # demo helpers (MiniLM, offline text); the flat API
    ("cli", "audit", "datasets"),  # the command line; deprecated module shims
    ("__main__",),  # python -m dplowrank
)

#: Deprecation shims: the only imports allowed against the layers, each (importer, imported).
#: A shim keeps an old import path working (with a DeprecationWarning) after its code moved up.
SHIMS = frozenset({
    ("dplowrank.diagnostics", "dplowrank.analysis"),  # diagnostics.check_bounds etc. (PEP 562 __getattr__)
    ("dplowrank.compress.minilm", "dplowrank.demo.minilm"),  # the module moved to demo/
})
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the package."""

    source: str  # importing module, dotted (dplowrank.x.y)
    target: str  # imported module, dotted
    names: tuple[str, ...]  # names taken from it ("" for ``import module``)
    line: int


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The unit a dotted module belongs to: its subpackage, or the top-level module's name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    head = parts[1]
    if head.startswith("_") and head != "__main__":
        return "_kernel"
    return head


def _is_package(module: str) -> bool:
    return (ROOT / Path(*module.split(".")) / "__init__.py").exists()


def _resolve(source: str, level: int, module: str | None) -> str:
    """The absolute dotted name of a (possibly relative) import in ``source``."""
    if level == 0:
        return module or ""
    base = source.split(".")
    if not _is_package(source):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports(root: Path = PACKAGE) -> list[Import]:
    """Every import of a ``dplowrank`` module by a module under ``root``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(source, node.level, node.module)
                if not target.startswith("dplowrank"):
                    continue
                names = tuple(a.name for a in node.names)
                # ``from . import module`` imports submodules, not names
                subs = [n for n in names if _is_package(target) and (
                    (ROOT / Path(*target.split(".")) / f"{n}.py").exists() or _is_package(f"{target}.{n}"))]
                for n in subs:
                    out.append(Import(source, f"{target}.{n}", ("",), node.lineno))
                rest = tuple(n for n in names if n not in subs)
                if rest:
                    out.append(Import(source, target, rest, node.lineno))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("dplowrank"):
                        out.append(Import(source, a.name, ("",), node.lineno))
    return out


def violations(edges: list[Import]) -> list[str]:
    """Upward or sideways imports, private paths or names across units, and cycles."""
    bad = []
    for e in edges:
        src, dst = unit_of(e.source), unit_of(e.target)
        if src == dst or (e.source, e.target) in SHIMS:
            continue
        where = f"{e.source}:{e.line} imports {e.target}"
        if src not in LAYER_OF or dst not in LAYER_OF:
            bad.append(f"{where}: unit {src if src not in LAYER_OF else dst!r} has no layer")
            continue
        if LAYER_OF[dst] >= LAYER_OF[src]:
            kind = "sideways" if LAYER_OF[dst] == LAYER_OF[src] else "upward"
            bad.append(f"{where}: {kind} import ({src} in layer {LAYER_OF[src]}, {dst} in layer {LAYER_OF[dst]})")
        if dst != "_kernel" and any(p.startswith("_") for p in e.target.split(".")[2:]):
            bad.append(f"{where}: reaches into a private module of {dst}")
        private = [n for n in e.names if n.startswith("_")]
        if private:
            bad.append(f"{where}: takes private names {', '.join(private)}")
    bad += [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return bad


def cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components (of more than one module, or a self-import) of the module graph."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if (e.source, e.target) in SHIMS:
            continue  # a shim's import runs on attribute access (or is the whole module)
        target = e.target
        if not (ROOT / Path(*target.split("."))).with_suffix(".py").exists() and not _is_package(target):
            target = target.rsplit(".", 1)[0]
        graph.setdefault(e.source, set()).add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def private_test_imports(root: Path = ROOT / "tests") -> list[str]:
    """Imports in the tests of a private module's name that a public namespace also offers."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("dplowrank"):
                continue
            parts = node.module.split(".")
            private_at = next((i for i, p in enumerate(parts) if p.startswith("_")), None)
            if private_at is None:
                continue
            public = ".".join(parts[:private_at])
            try:
                namespace = importlib.import_module(public)
            except ImportError:
                continue
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                continue  # the test itself fails on it
            for alias in node.names:
                obj = getattr(module, alias.name, None)
                exported = getattr(namespace, "__all__", ())
                if alias.name in exported and getattr(namespace, alias.name, None) is obj:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name} from {node.module}; "
                               f"use {public}.{alias.name}")
    return bad


def sizes(root: Path = PACKAGE, most: int = 8) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """The longest modules (lines) and functions (lines, docstring included)."""
    mods, funcs = [], []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        mods.append((len(text.splitlines()), rel))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                doc = (len(body) and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None),
                                                                                  ast.Constant)
                       and isinstance(body[0].value.value, str))
                start = body[1].lineno if doc and len(body) > 1 else node.lineno
                funcs.append((node.end_lineno - node.lineno + 1, node.end_lineno - start + 1,
                              f"{rel}:{node.lineno} {node.name}"))
    mods.sort(reverse=True)
    funcs.sort(reverse=True)
    return mods[:most], funcs[:most]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", action="store_true", help="also list the longest modules and functions")
    args = parser.parse_args(argv)
    edges = imports()
    print("layers (lowest first):")
    for i, units in enumerate(LAYERS):
        print(f"  {i}: {', '.join(units)}")
    between: dict[tuple[str, str], int] = {}
    for e in edges:
        a, b = unit_of(e.source), unit_of(e.target)
        if a != b:
            between[a, b] = between.get((a, b), 0) + 1
    print("\nimports between units (importer -> imported: statements):")
    for (a, b), n in sorted(between.items(), key=lambda kv: (LAYER_OF.get(kv[0][0], 99), kv[0])):
        print(f"  {a} -> {b}: {n}")
    bad = violations(edges)
    print(f"\nviolations: {len(bad)}")
    for line in bad:
        print("  " + line)
    tests = private_test_imports()
    print(f"test imports of a private path where a public name will do: {len(tests)}")
    for line in tests:
        print("  " + line)
    if args.sizes:
        mods, funcs = sizes()
        print("\nlongest modules (lines):")
        for n, name in mods:
            print(f"  {n:5d}  {name}")
        print("longest functions (lines with docstring / body without it):")
        for n, body, name in funcs:
            print(f"  {n:5d} / {body:4d}  {name}")
    return 1 if bad or tests else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
