"""Knowing whether adaptation helped: bootstrap intervals on a few target labels, and the warning
printed when a shipped model may be a negative transfer.

A user rarely has target labels. Confidence-style validators (``entropy``, ``info_max``, ``bnm``)
reward confident alignment whether or not the classes line up, so on their own they cannot tell a
good run of a method from one that swapped classes. Two checks need no labels: how strongly the
shipped model disagrees with the source-only model on the target images, and whether the
validators agree that it beats source-only. When either fails, the user is told to label a few
target images (5-20 per class) and pass them as ``--target-val``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

# validators that look at more than confidence: their sign vs source-only is what the warning reads
CHECKING_VALIDATORS = ("dev", "reverse", "agreement", "source_val")
CONFIDENCE_VALIDATORS = ("entropy", "info_max", "snd", "bnm")


def bootstrap_interval(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item ``values`` (e.g. 0/1 correctness per
    image): resample the items with replacement ``n_boot`` times (Efron & Tibshirani 1993)."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    a = (1.0 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def accuracy_interval(n_correct: int, n: int, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of an accuracy measured on ``n`` images of which ``n_correct`` are right."""
    return bootstrap_interval(np.r_[np.ones(int(n_correct)), np.zeros(int(n) - int(n_correct))], level, n_boot, seed)


def confusion_interval(confusion, level: float = 0.95) -> dict:
    """``{"accuracy": a, "low": lo, "high": hi, "level": level, "n": n}`` from a confusion matrix."""
    c = np.asarray(confusion)
    n, k = int(c.sum()), int(np.trace(c))
    lo, hi = accuracy_interval(k, n, level)
    return {"accuracy": k / max(n, 1), "low": lo, "high": hi, "level": level, "n": n}


def disagreement(candidate_logits: torch.Tensor, reference_logits: torch.Tensor) -> float:
    """Fraction of target rows where the candidate's class differs from the source-only model's."""
    return float((candidate_logits.argmax(1) != reference_logits.argmax(1)).float().mean())


def transfer_warning(candidate: dict, reference: dict, disagree: float | None, *, max_disagreement: float = 0.35,
                     margin: float = 1e-3) -> str | None:
    """One plain sentence when the shipped model may be worse than source-only, else None.

    ``candidate`` / ``reference``: validator scores (``score/<name>`` or bare names) of the shipped
    model and of the source-only model; ``disagree``: their target disagreement (see :func:`disagreement`).
    Fires when the shipped model changes more than ``max_disagreement`` of the target predictions,
    or when the validators split on whether it beats source-only."""
    def scores(d):
        return {k.removeprefix("score/"): float(v) for k, v in d.items()
                if isinstance(v, (int, float)) and (k.startswith("score/") or "/" not in k)}

    c, r = scores(candidate), scores(reference)
    votes = {}
    for name in (*CHECKING_VALIDATORS, *CONFIDENCE_VALIDATORS):
        if name in c and name in r and name != "agreement":
            if abs(c[name] - r[name]) > margin:
                votes[name] = c[name] > r[name]
    if "agreement" in c:  # agreement of the reference with itself is 1: a low value is a vote against
        votes["agreement"] = c["agreement"] >= 1.0 - max_disagreement
    better = sorted(k for k, v in votes.items() if v)
    worse = sorted(k for k, v in votes.items() if not v)
    reasons = []
    if disagree is not None and disagree > max_disagreement:
        reasons.append(f"it changes {disagree:.0%} of the source-only model's target predictions")
    if better and worse:
        reasons.append(f"the validators disagree on whether it beats source-only ({', '.join(better)} say yes, "
                       f"{', '.join(worse)} say no)")
    if not reasons:
        return None
    return ("warning: the shipped model may be worse than source-only on the target: " + "; ".join(reasons)
            + ". Label 5-20 target images per class and pass them as --target-val to check (and select) with labels.")


# -- --method auto ---------------------------------------------------------------------------------
AUTO_METHODS = ("dann", "mmd")  # trained like source-only, on the same data
AUTO_ADAPT = ("shot", "tent")  # source-free, run on the source-only bundle with the same target images
DEFAULT_SELECTOR = "info_max"  # the shift suite's most reliable (benchmarks/shifts.py recommended_validator)


def score_model(net, domains, spec, device="cpu", seed: int = 0, reference_rows=None):
    """(validator scores, target rows) of a trained network on ``domains`` — what the trainer records
    at an evaluation, computed the same way for every ``--method auto`` candidate."""
    from .tasks import task_of
    from .train.evaluate import evaluate_model
    from .train.selection import EvalContext, score_all

    t = task_of(spec)
    per_image = domains.target is not None and not t.dense
    sv = evaluate_model(net, domains.source_val, spec, device, rows=per_image, features=per_image)
    ctx = EvalContext(t.selection_score(sv.scores))
    if per_image:
        ctx.source_logits, ctx.source_features = sv.rows, sv.features
        ctx.source_labels = torch.as_tensor(np.asarray(domains.source_val.labels), dtype=torch.long)
    rows = None
    if domains.target is not None:
        out = evaluate_model(net, domains.target, spec, device, labels=False, rows=True, features=per_image, seed=seed)
        ctx.target_logits, ctx.target_features, rows = out.rows, out.features, out.rows
        ctx.reference_logits = reference_rows
    return score_all(ctx), rows


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
    from .bundle import load_bundle, update_bundle
    from .config import make_config
    from .data.domain import Domain
    from .errors import EdgedaError
    from .train.evaluate import evaluate_model
    from .train.selection import selector_names
    from .train.trainer import load_domains, train

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
        from .adapt.runner import adapt

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
