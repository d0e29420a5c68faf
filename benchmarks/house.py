"""Size measures of the package's code: what a maintainer has to hold in mind at once.

    python benchmarks/house.py [--write] [--top N]

Counts, over ``edgeda/`` (parsed with ``ast``, nothing imported or run):

* functions and methods longer than 80 lines (decorators to last line), with the longest named;
* classes with more than 12 methods of their own;
* imports inside a function or method (``import``/``from`` below a ``def``), per folder, and how
  many of them import edgeda's own modules (the ones that can hide a loop between layers);
* outside ``edgeda/tasks/``: attributes named ``dense`` (the task flag, plus the few other things of
  that name that ``tests/test_task_rules.py`` lists) and comparisons with a task's name
  (``== "segmentation"``, ``in ("depth", ...)``): decisions made about a task instead of by it.

Prints the counts and the worst offenders; ``--write`` also stores them in
``benchmarks/results/house.json`` with the commit measured, so a change can be compared with the
numbers before it (``git stash`` / another worktree for the "before").
"""
from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgeda"
RESULTS = ROOT / "benchmarks" / "results" / "house.json"
LONG_FUNCTION = 80  # lines
MANY_METHODS = 12


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _length(node: ast.AST) -> int:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return node.end_lineno - first + 1


def _own(node: ast.AST) -> bool:
    """An import of edgeda's own modules (relative, or absolute under ``edgeda``)."""
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "edgeda"
    return any(a.name.split(".")[0] == "edgeda" for a in node.names)


def _inner_imports(fn: ast.AST) -> tuple[int, int]:
    """Imports in this function's own body (not in functions nested in it: those count themselves):
    (all, of edgeda's own modules)."""
    count, own, stack = 0, 0, list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            count += 1
            own += _own(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
    return count, own


TASK_NAMES = {"classification", "segmentation", "depth", "detection"}


def _names_a_task(node: ast.AST) -> bool:
    """A string constant that is a task's name, or a tuple/list/set holding one."""
    if isinstance(node, ast.Constant):
        return node.value in TASK_NAMES
    return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(_names_a_task(e) for e in node.elts)


def _task_decisions(tree: ast.AST) -> tuple[list[int], list[int]]:
    """Line numbers of ``.dense`` attributes and of comparisons with a task name."""
    dense, compares = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "dense":
            dense.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(_names_a_task(n) for n in (node.left, *node.comparators)):
            compares.append(node.lineno)
    return dense, compares


def measure(package: Path = PACKAGE) -> dict:
    long_functions, big_classes, imports_by_folder, own_imports = [], [], Counter(), 0
    dense_attrs, name_compares = [], []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        if not rel.startswith("edgeda/tasks/"):
            dense, compares = _task_decisions(tree)
            dense_attrs += [f"{rel}:{n}" for n in dense]
            name_compares += [f"{rel}:{n}" for n in compares]
        for fn in _functions(tree):
            if _length(fn) > LONG_FUNCTION:
                long_functions.append({"where": f"{rel}:{fn.lineno}", "name": fn.name, "lines": _length(fn)})
            n, own = _inner_imports(fn)
            own_imports += own
            if n:
                imports_by_folder[str(Path(rel).parent.as_posix())] += n
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            methods = [b for b in cls.body if isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef))]
            if len(methods) > MANY_METHODS:
                big_classes.append({"where": f"{rel}:{cls.lineno}", "name": cls.name, "methods": len(methods)})
    long_functions.sort(key=lambda r: -r["lines"])
    big_classes.sort(key=lambda r: -r["methods"])
    return {"functions_over_80_lines": len(long_functions), "classes_over_12_methods": len(big_classes),
            "function_level_imports": sum(imports_by_folder.values()),
            "function_level_imports_of_edgeda": own_imports,
            "function_level_imports_by_folder": dict(sorted(imports_by_folder.items())),
            "dense_attributes_outside_tasks": len(dense_attrs),
            "task_name_compares_outside_tasks": len(name_compares),
            "long_functions": long_functions, "big_classes": big_classes,
            "dense_attributes_where": dense_attrs, "task_name_compares_where": name_compares}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "edgeda"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"store the counts in {RESULTS.relative_to(ROOT)}")
    ap.add_argument("--top", type=int, default=10, help="offenders listed per measure")
    args = ap.parse_args(argv)
    m = measure()
    print(f"functions over {LONG_FUNCTION} lines: {m['functions_over_80_lines']}")
    for r in m["long_functions"][:args.top]:
        print(f"  {r['lines']:4d}  {r['name']}  {r['where']}")
    print(f"classes over {MANY_METHODS} methods: {m['classes_over_12_methods']}")
    for r in m["big_classes"][:args.top]:
        print(f"  {r['methods']:4d}  {r['name']}  {r['where']}")
    print(f"function-level imports: {m['function_level_imports']} "
          f"({m['function_level_imports_of_edgeda']} of edgeda's own modules)")
    for folder, n in sorted(m["function_level_imports_by_folder"].items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {n:4d}  {folder}")
    print(f"outside edgeda/tasks: attributes named dense {m['dense_attributes_outside_tasks']}, "
          f"task-name comparisons {m['task_name_compares_outside_tasks']}")
    for where in m["task_name_compares_where"][:args.top]:
        print(f"  compare  {where}")
    if args.write:
        RESULTS.write_text(json.dumps({"commit": _commit(), **m}, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
