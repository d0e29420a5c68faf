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

The detectors (torchvision ``ssdlite320_mobilenet_v3_large`` and ``fcos_resnet50_fpn``, 7 outputs with
the background column, so edgeda's ``ssdlite`` / ``fcos`` with 6 classes) are compared by
``compare_detector`` in ``tests/test_detection_equivalence.py`` (its docstring says exactly what): random
weights, BatchNorm statistics measured on random inputs and then perturbed, loaded with
``load_pretrained``; on one normalised random batch (2x3x320x320 SSDLite, 2x3x256x256 FCOS) the max abs
diff of the class logits, box regression, centerness and anchors, and the detections after decoding and
NMS (torchvision's ``postprocess_detections`` against edgeda's ``postprocess``) matched by class and IoU.
``end_to_end`` then runs each library's own preprocessing on one uint8 image, at the native input size
and at a non-native one (SSDLite 400x240 -> 320x320; FCOS 200x200 -> 256x256 with torchvision's
``min_size=max_size=256``), where the resize differs (PIL's uint8 bilinear against torch's float one).

Needs torchvision and transformers (torchvision needs a torch build it was built against, e.g. the
registry's default CUDA build, which also runs on a CPU); where neither imports it says so and exits 0.

Writes ``benchmarks/results/equivalence.json``: per model the max abs diff of the outputs, the
missing / unexpected key counts of the load, per detector the rows above, and the versions, date and
machine (run on the CPU).

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


def _detectors() -> dict:
    """Detector rows: load counts, head / anchor diffs, matched detections, each library's preprocessing."""
    from test_detection_equivalence import DETECTION, END_TO_END, SETTINGS, compare_detector, end_to_end

    rows = {}
    for name in DETECTION:
        with tempfile.TemporaryDirectory() as tmp:
            rep, row = compare_detector(name, Path(tmp))
            s = SETTINGS[name]
            rows[name] = {"edgeda": f"{s['arch']}, 6 classes", "input": [s["batch"], 3, *s["size"]], "loaded": rep["loaded"],
                          "missing": len(rep["missing"]), "unexpected": len(rep["unexpected"]), **row,
                          "end_to_end": {"native": end_to_end(name, Path(tmp), image=s["size"]),
                                         "non_native": end_to_end(name, Path(tmp), image=END_TO_END[name]["image"])}}
        r = rows[name]
        heads = ", ".join(f"{k} {r[k]['max_abs_diff']:.3g}" for k in ("cls_logits", "bbox_regression", "bbox_ctrness", "anchors") if k in r)
        print(f"{name}: loaded {r['loaded']}, missing {r['missing']}, unexpected {r['unexpected']}; max abs diff {heads}; "
              f"{r['matched']}/{r['detections']} detections matched (public {r['public_detections']}), min IoU {r['min_iou']}, "
              f"max score diff {r['max_score_diff']}")
        for k, e in r["end_to_end"].items():
            print(f"  {k} {e['image']} -> {e['input']}: input max abs diff {e['input_max_abs_diff']:.3g}; {e['matched']}/{e['detections']} "
                  f"matched (public {e['public_detections']}), min IoU {e['min_iou']}, max score diff {e['max_score_diff']}")
    return rows


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
    detectors = _detectors() if versions["torchvision"] else {"skipped": "torchvision is not importable here"}
    result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": f"{_machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(), "torch": torch.__version__, **versions,
              "input": [2, 3, 96, 128], "device": "cpu", "dtype": "float32", "num_classes": 7, "models": rows,
              "detectors": detectors}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
