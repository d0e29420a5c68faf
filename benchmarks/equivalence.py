"""Public-model equivalence: edgeda's models against torchvision's and transformers' own code.

Each public model (torchvision ``lraspp_mobilenet_v3_large``, ``deeplabv3_resnet50``,
``deeplabv3_mobilenet_v3_large`` and ``fcn_resnet50`` with the auxiliary head, ``mobilenet_v3_large``;
transformers ``SegformerForSemanticSegmentation`` with the MiT-B0 config) is built with random
weights and random BatchNorm statistics, 7 classes, its state dict saved to a file and loaded into
the edgeda model with :func:`edgeda.models.weights.load_pretrained`; both run in eval mode, fp32,
on one random 2x3x96x128 input. SegFormer is loaded twice: from its module's state dict
(``segformer``; transformers 5 names, ``segformer.stages.*``) and from the file ``save_pretrained``
writes (``segformer_hub``; the Hub names, ``segformer.encoder.block.*``). The comparison is
``compare_with_public`` in ``tests/test_pretrained.py`` (the test asserts a max abs diff <= 1e-4).

Needs torchvision and transformers (torchvision needs a torch build it was built against, e.g. the
registry's default CUDA build, which also runs on a CPU); where neither imports it says so and exits 0.

Writes ``benchmarks/results/equivalence.json``: per model the max abs diff of the outputs, the
missing / unexpected key counts of the load, and the versions, date and machine (run on the CPU).

    python benchmarks/equivalence.py
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

RESULTS = ROOT / "benchmarks" / "results" / "equivalence.json"


def _version(module: str) -> str | None:
    """The module's version, or None where it does not import (any error: torchvision raises a
    RuntimeError, not an ImportError, against a torch build it was not built for)."""
    try:
        return __import__(module).__version__
    except Exception as e:  # noqa: BLE001
        print(f"{module} is not importable here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return None


def _machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    versions = {m: _version(m) for m in ("torchvision", "transformers")}
    if not any(versions.values()):
        print("skipped: neither torchvision nor transformers is importable; nothing to compare")
        return 0
    import torch
    from test_pretrained import PUBLIC, compare_with_public

    rows = {}
    for name in PUBLIC:
        if not versions["transformers" if name.startswith("segformer") else "torchvision"]:
            rows[name] = {"skipped": "its library is not importable here"}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            rep, out, ref = compare_with_public(name, Path(tmp))
        rows[name] = {"max_abs_diff": (out - ref).abs().max().item() if out.shape == ref.shape else None,
                      "output_shape": list(out.shape), "public_output_shape": list(ref.shape),
                      "loaded": rep["loaded"], "missing": len(rep["missing"]), "unexpected": len(rep["unexpected"])}
        print(f"{name}: max abs diff {rows[name]['max_abs_diff']}, missing {rows[name]['missing']}, "
              f"unexpected {rows[name]['unexpected']}")
    result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": f"{_machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(), "torch": torch.__version__, **versions,
              "input": [2, 3, 96, 128], "device": "cpu", "dtype": "float32", "num_classes": 7, "models": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
