"""``edgeda train --method auto``: train source-only and a short list of methods on the same data,
adapt the source-only model source-free on the same target images, score every candidate with every
validator and ship the one the chosen validator ranks best (see :mod:`edgeda.trust` for the
validators' reliability checks and the warning)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..trust import disagreement, score_model, transfer_warning

AUTO_METHODS = ("dann", "mmd")  # trained like source-only, on the same data
AUTO_ADAPT = ("shot", "tent")  # source-free, run on the source-only bundle with the same target images
DEFAULT_SELECTOR = "info_max"  # the shift suite's most reliable (benchmarks/shifts.py recommended_validator)


def _write_target_images(domain, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(domain.images):
        a = np.asarray(img)
        Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a).save(folder / f"{i:05d}.png")
    return folder


def train_auto(cfg, *, methods=AUTO_METHODS, adapt_methods=AUTO_ADAPT, selector: str | None = None,
               adapt_iters: int | None = None, log=print) -> dict:
    """``edgeda train --method auto``: train source-only and each of ``methods`` on ``cfg``'s data,
    adapt the source-only bundle source-free with each of ``adapt_methods`` on the same target
    images, score every candidate's shipped model with every validator (``agreement`` against the
    source-only model), ship the one ``selector`` ranks best (ties: source-only) to
    ``<out>/model.edgeda`` with every candidate's scores in its manifest (``metrics.auto``), and
    return that record. Target test labels, where present, are reported per candidate, never used."""
    from ..bundle import load_bundle, update_bundle
    from ..config import make_config
    from ..data.domain import Domain
    from ..errors import EdgedaError
    from .evaluate import evaluate_model
    from .selection import selector_names
    from .trainer import load_domains, train

    log = log or (lambda s: None)
    selector = selector or (cfg.select if cfg.select not in ("last", "target_val") else DEFAULT_SELECTOR)
    if selector not in selector_names() or selector == "last":
        raise EdgedaError(f"--method auto ranks candidates by a validator; {selector!r} is not one")
    out = Path(cfg.out)
    base = cfg.to_dict()
    cand_dir = out / "candidates"

    def run(method):
        log(f"auto: training {method} ...")
        c = make_config(base, {"method": method, "out": str(cand_dir / method)})
        return train(c, progress=False, log=None, reference=ref_net if method != "source_only" else None).bundle

    ref_net = None
    bundles = {"source_only": run("source_only")}
    ref_bundle = load_bundle(bundles["source_only"])
    spec = ref_bundle.task
    ref_net = ref_bundle.module(ref_bundle.primary)
    domains = load_domains(make_config(base, {"method": "source_only"}), True)
    for m in methods:
        bundles[m] = run(m)
    if domains.target is not None and isinstance(domains.target, Domain) and adapt_methods:
        from ..adapt.runner import adapt

        images = _write_target_images(domains.target, out / "target_images")
        for a in adapt_methods:
            name = f"source_only+{a}"
            log(f"auto: adapting source-only with {a} (source-free) ...")
            r = adapt(bundles["source_only"], images, cand_dir / f"{name}.edgeda", method=a, iters=adapt_iters,
                      device=cfg.device, seed=cfg.seed, threads=None)
            bundles[name] = r.bundle
    ref_scores, ref_rows = score_model(ref_net, domains, spec, "cpu", cfg.seed)
    record = {}
    for name, path in bundles.items():
        b = load_bundle(path)
        net = b.module(b.primary)
        scores, rows = score_model(net, domains, spec, "cpu", cfg.seed, reference_rows=ref_rows)
        entry = {"bundle": str(path), "scores": scores}
        if rows is not None and ref_rows is not None:
            entry["disagreement_with_source_only"] = disagreement(rows, ref_rows)
        if domains.target_test is not None:  # reported only
            test = evaluate_model(net, domains.target_test, spec, "cpu").scores
            entry["target_test"] = test.get("accuracy", test.get("miou"))
        record[name] = entry
    chosen = max(record, key=lambda n: (record[n]["scores"].get(selector, float("-inf")), n == "source_only"))
    warning = None
    if chosen != "source_only":
        warning = transfer_warning(record[chosen]["scores"], record["source_only"]["scores"],
                                   record[chosen].get("disagreement_with_source_only"))
    result = {"selector": selector, "chosen": chosen, "candidates": record, "transfer_warning": warning}
    shipped = update_bundle(bundles[chosen], out / "model.edgeda",
                            manifest_updates={"metrics": {"auto": result, "transfer_warning": warning}})
    result["bundle"] = str(shipped)
    (out / "auto.json").write_text(json.dumps(result, indent=2))
    return result
