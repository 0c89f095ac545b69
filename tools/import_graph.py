"""Import graph of the sopi packages, from the source (ast; no import is executed).

    python -m tools.import_graph            # circles (should be none), then modules by size
    python -m tools.import_graph --json OUT

Edges: every ``import`` / ``from ... import`` in a module, at module level or inside a function
(a lazy import is still a dependency), resolved to the project module it names (``from a.b import
c`` is ``a.b.c`` when that is a module, else ``a.b``). Importing a package runs its
``__init__``, so an edge to a package is an edge to its ``__init__``; the implicit import of the
parents of a module is not counted. Also reports the longest functions.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "calib", "export", "models")


def modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the packages."""
    out = {}
    for pkg in packages:
        for p in sorted((root / pkg).rglob("*.py")):
            rel = p.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imports(mod: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Project modules that ``mod`` imports (anywhere in its body)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                r = _resolve(a.name, mods)
                if r:
                    out.add(r)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod if is_pkg else mod.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}".strip(".")
            for a in node.names:
                r = _resolve(f"{base}.{a.name}", mods) if f"{base}.{a.name}" in mods else _resolve(base, mods)
                if r:
                    out.add(r)
    out.discard(mod)
    return out


def graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    mods = modules(root, packages)
    return {m: imports(m, p, mods) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in g:
        if start in index:
            continue
        work = [(start, iter(sorted(g[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in g:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def function_lengths(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[tuple[int, str]]:
    """(lines, "module:qualname") of every function, longest first."""
    out = []
    for mod, path in modules(root, packages).items():
        tree = ast.parse(path.read_text(), str(path))
        todo = [(tree, "")]
        while todo:
            node, prefix = todo.pop()
            for ch in ast.iter_child_nodes(node):
                if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{ch.name}"
                    if not isinstance(ch, ast.ClassDef):
                        out.append((ch.end_lineno - ch.lineno + 1, f"{mod}:{name}"))
                    todo.append((ch, name + "."))
    return sorted(out, reverse=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.import_graph", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write circles, module sizes and the longest functions here")
    ap.add_argument("--top", type=int, default=15, help="how many modules / functions to list")
    a = ap.parse_args(argv)
    g = graph()
    circ = cycles(g)
    mods = modules()
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in mods.items()), reverse=True)
    funcs = function_lengths()
    print(f"{len(mods)} modules, {sum(len(v) for v in g.values())} import edges, {len(circ)} circles")
    for c in circ:
        print("  circle:", " <-> ".join(c))
    print("\nlargest modules (lines):")
    for n, m in sizes[:a.top]:
        print(f"  {n:5d}  {m}")
    print("\nlongest functions (lines):")
    for n, f in funcs[:a.top]:
        print(f"  {n:5d}  {f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"circles": circ, "modules": sizes, "functions": funcs[:100]}, indent=1))
    return 1 if circ else 0


if __name__ == "__main__":
    sys.exit(main())
