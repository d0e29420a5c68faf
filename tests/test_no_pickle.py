"""Nothing in the package unpickles: no pickle/dill/joblib loads, weights_only=False, torch.load
without weights_only=True (it reads users' .pth checkpoints: tensors and plain containers only), or
np.load without allow_pickle=False. Bundles and checkpoints are safetensors + JSON only."""
import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgeda"
FORBIDDEN = [
    (re.compile(r"\btorch\.jit\.load\s*\("), "TorchScript archives carry pickles"),
    (re.compile(r"\b(c?pickle|dill|joblib|marshal|shelve)\.loads?\s*\("), "unpickling"),
    (re.compile(r"\bUnpickler\b"), "unpickling"),
    (re.compile(r"weights_only\s*=\s*False"), "weights_only=False unpickles"),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True unpickles"),
    (re.compile(r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve)\b", re.M), "pickle module imported"),
    (re.compile(r"\b(all_gather_object|broadcast_object_list|scatter_object_list|gather_object)\s*\("),
     "torch.distributed object collectives unpickle what other ranks send"),
]


def _sources():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    return files


def test_no_unpickling_calls_in_the_package():
    found = []
    for f in _sources():
        text = f.read_text()
        for pattern, why in FORBIDDEN:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{f.relative_to(PACKAGE.parent)}:{line}: {m.group(0).strip()} ({why})")
    assert not found, "\n".join(found)


def test_every_np_load_refuses_pickles():
    """Each np.load / numpy.load call passes allow_pickle=False explicitly (checked on the syntax tree)."""
    bad, calls = [], 0
    for f in _sources():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "numpy"):
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                v = kw.get("allow_pickle")
                if not (isinstance(v, ast.Constant) and v.value is False):
                    bad.append(f"{f.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert calls >= 1  # the scan does see the loaders
    assert not bad, f"np.load without allow_pickle=False at {', '.join(bad)}"


def test_every_torch_load_is_weights_only():
    """Each torch.load call passes weights_only=True explicitly (checked on the syntax tree), and only
    the pre-trained weights reader calls it."""
    bad, where = [], set()
    for f in _sources():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                where.add(str(f.relative_to(PACKAGE.parent)))
                v = {k.arg: k.value for k in node.keywords}.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(f"{f.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not bad, f"torch.load without weights_only=True at {', '.join(bad)}"
    assert where <= {"edgeda/models/weights.py"}, where


def test_the_scan_catches_what_it_should():
    text = "x = torch.load(p, weights_only=False)\nimport pickle\ny = pickle.loads(b)\nnp.load(f, allow_pickle=True)\n"
    hits = [why for pattern, why in FORBIDDEN if pattern.search(text)]
    assert len(hits) >= 4
