"""The package's structure: no import cycles (module-level or inside functions), the package's
layers (a module imports only from its own layer or the layers below, inside functions too), and
the CLI's --select help lists every registered validator."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "edgeda"


def _modules():
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if pkg else parts)] = (f, pkg)
    return mods


def _targets(mod, pkg, node, mods):
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in mods]
    if node.level:
        base = mod.split(".") if pkg else mod.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for m, (f, pkg) in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= {t for t in _targets(m, pkg, node, mods) if t in mods and t != m}
        graph[m] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    # a package importing its own submodules is how registries fill; everything else is acyclic
    graph = import_graph()
    for m, edges in graph.items():
        graph[m] = {e for e in edges if not e.startswith(m + ".")}
    assert cycles(graph) == []


# The layers of the package, lowest first: a top-level module or subpackage of edgeda imports only
# from its own layer and the layers below it (function-level imports included).
LAYERS = [
    {"errors", "registry", "options", "utils", "scores", "tracking", "trust", "_callable", "kernels", "console",
     "distributed"},
    {"config"},
    {"data"},
    {"models"},
    {"tasks"},
    {"bundle"},
    {"methods"},
    {"training"},
    {"bundle_eval", "export", "adapt", "bench"},
    {"auto"},
    {"cli", "__main__"},
]

# The imports that still go up a layer, each for a reason; a new one fails the test, and so does
# one listed here that is gone (take it off the list).
UPWARD = {
    ("edgeda.config", "edgeda.tasks.spec"): "the config checks --task against the task registry's names",
    ("edgeda.tasks.base", "edgeda.training.model_eval"): "a task reads its evaluation batches with the trainer's loaders",
    ("edgeda.tasks.base", "edgeda.training.readers"): "a task builds its training stream from the trainer's readers",
    ("edgeda.tasks.classification", "edgeda.training.streams"): "the in-memory classification stream",
}


def _unit(module: str) -> str:
    """The top-level module or subpackage of edgeda that ``module`` belongs to."""
    return module.split(".")[1] if "." in module else module


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    out = set()
    for m, edges in graph.items():
        for e in edges:
            a, b = _unit(m), _unit(e)
            if a != b and "." in m and "." in e and rank[b] > rank[a]:
                out.add((m, e))
    return out


def test_every_part_of_the_package_has_a_layer():
    named = {n for layer in LAYERS for n in layer}
    assert {_unit(m) for m in import_graph() if "." in m} <= named


def test_imports_go_down_the_layers():
    assert upward_imports(import_graph()) == set(UPWARD)


def test_the_layer_check_finds_a_planted_upward_import():
    assert upward_imports({"edgeda.data.x": {"edgeda.training.y"}, "edgeda.training.y": {"edgeda.data.x"}}) == {
        ("edgeda.data.x", "edgeda.training.y")}


def test_no_folder_level_cycles_beyond_the_listed_imports():
    folders: dict[str, set[str]] = {}
    for m, edges in import_graph().items():
        if "." not in m:
            continue
        a = _unit(m)
        folders.setdefault(a, set()).update(_unit(e) for e in edges if "." in e and _unit(e) != a and (m, e) not in UPWARD)
    assert cycles(folders) == []


def test_select_help_lists_every_validator():
    from click.testing import CliRunner

    from edgeda.cli import main
    from edgeda.training.selection import VALIDATORS

    out = CliRunner().invoke(main, ["train", "--help"], terminal_width=400).output
    line = " ".join(out.split())
    for name in ["last", *VALIDATORS, "target_val"]:
        assert name in line.split("--select", 1)[1].split("--seed")[0], name
