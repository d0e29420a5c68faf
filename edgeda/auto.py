"""``edgeda train --method auto``: train a short list of candidates on the same data, score every one
with every validator and ship the one the chosen validator ranks best (see :mod:`edgeda.trust` for
the reliability checks and the warning).

Classification: source-only and :data:`AUTO_METHODS` from scratch, plus the source-only model adapted
source-free with :data:`AUTO_ADAPT` on the same target images; ranked by :data:`DEFAULT_SELECTOR`.
Dense tasks: source-only once, then ``source_only@init`` (source-only training continued for as long
from that bundle), each of :data:`DENSE_AUTO_METHODS` with ``--init`` from it for the same
iterations, and the source-only bundle adapted source-free with :data:`DENSE_AUTO_ADAPT` on the
target images; ranked by :data:`DEFAULT_DENSE_SELECTOR`, with a warning when no candidate beats
continued source-only training by that score. Detection follows the dense recipe with its task's lists
(:attr:`edgeda.tasks.Task.auto_methods`: ``mean_teacher`` and ``dann``, no source-free candidate), ranked by
its task's :attr:`~edgeda.tasks.Task.auto_selector` (``source_val``, each candidate's source validation mAP;
the box validators, ``majority`` -- average precision against the boxes each other candidate is sure of --
and ``agreement``, are scored beside it).

A run interrupted part-way loses nothing it finished: run again with the same settings and ``--out``, each
candidate already made with the same settings (the same number of source and target images, the same starting
bundle) is reused, one that was
training continues from its last checkpoint, and the rest are made (``candidates/NAME.auto.json`` records
each candidate's settings and bundle).
"""
from __future__ import annotations

import json
from pathlib import Path

from .adapt import ADAPT_METHODS
from .adapt.runner import adapt
from .bundle import load_bundle, update_bundle
from .config import make_config
from .data import save_images
from .errors import EdgedaError
from .methods import METHODS
from .tasks import task_of
from .training.domains import load_domains
from .training.model_eval import DETECTION_VALIDATOR_IMAGES, evaluate_model, evaluation_context
from .training.selection import selector_names
from .training.trainer import train
from .training.validators import score_candidates
from .trust import disagreement, transfer_warning
from .utils import atomic_write_json, sha256_file

AUTO_METHODS = ("dann", "mmd")  # trained like source-only, on the same data
AUTO_ADAPT = ("shot", "tent")  # source-free, run on the source-only bundle with the same target images
DEFAULT_SELECTOR = "info_max"  # the shift suite's most reliable (benchmarks/shifts.py recommended_validator)
# dense candidates, each trained with --init from the source-only bundle; names not registered are skipped
DENSE_AUTO_METHODS = ("dacs", "cbst", "dann")
# dense source-free candidates (``source_only+NAME``): balanced TENT, the on-device segmentation default (~20-40 s on
# the CPU profile; below the shipped model in 1 of 27 runs on the dense shift targets, benchmarks/adapt.py)
DENSE_AUTO_ADAPT = ("tent",)
DENSE_REFERENCE = "source_only@init"  # continued source-only training: the baseline every dense candidate must beat
# From the dense shift suite (benchmarks/dense_shifts.py, 9 targets: 6 synscenes looks and cameras, 3 digit-scene
# backgrounds): its rule (lowest mean regret among the validators whose pick is below continued source-only
# training on at most 1 target in 8), applied to the candidates auto trains (its "as shipped" line), picks
# ``majority``, the candidates' pixel-wise vote (0 of 9 below). Over all the suite's candidates no validator meets
# the rule (majority and source_val 2 of 9 below). ``agreement``, the default before the source-free candidate, picked it on 3
# targets where it was below continued source-only training (agreement with the source-only model rewards a
# model that kept its predictions, and TENT's target statistics change many of them).
DEFAULT_DENSE_SELECTOR = "majority"
# a default validator that cannot rank a run's candidates gives way to the next one (``majority`` votes over at least
# two others; a detector's box validators need a candidate sure of some box; ``source_val`` scores any labeled
# source); a validator the user names never does
SELECTOR_FALLBACK = {"majority": "agreement", "agreement": "source_val"}


def _adapt_candidates(source_bundle: Path, domains, methods, cand_dir: Path, out: Path, cfg, iters, log) -> dict:
    """``{"source_only+NAME": bundle}``: the source-only bundle adapted source-free by each of ``methods``
    on the target images (none without a target)."""
    methods = available_methods(methods, domains.task, log, registry=ADAPT_METHODS)
    if domains.target is None or not methods:
        return {}
    images = out / "target_images"
    save_images(domains.target, images)
    bundles = {}
    for a in methods:
        name = f"source_only+{a}"
        settings = {"source_manifest_sha256": sha256_file(Path(source_bundle) / "manifest.json"), "method": a,
                    "iters": iters, "device": cfg.device, "seed": cfg.seed, "target_images": len(domains.target)}
        bundles[name] = _once(cand_dir / f"{name}.auto.json", settings, name, log, lambda: adapt(
            source_bundle, images, cand_dir / f"{name}.edgeda", method=a, iters=iters, device=cfg.device,
            seed=cfg.seed, threads=None).bundle, what=f"adapting source-only with {a} (source-free)")
    return bundles


def _once(marker: Path, settings: dict, name: str, log, make, what: str, resume=None) -> Path:
    """The bundle of candidate ``name``: made by ``make()`` (``resume()`` where an earlier ``--method auto`` run with
    the same ``settings`` started it and was interrupted: a training run continues from its last checkpoint), or
    reused where such a run finished it. ``marker`` records the settings and, once made, the bundle."""
    want = json.loads(json.dumps(settings))
    try:
        rec = json.loads(marker.read_text()) if marker.is_file() else {}
    except (OSError, ValueError):
        rec = {}
    same = rec.get("settings") == want
    if same and rec.get("bundle") and (Path(rec["bundle"]) / "manifest.json").is_file():
        log(f"auto: {name} was made with these settings by an earlier run; reusing {rec['bundle']}")
        return Path(rec["bundle"])
    if same and resume is not None:
        log(f"auto: continuing {name} from where an earlier run stopped ...")
        make = resume
    else:
        log(f"auto: {what} ...")
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"settings": want, "bundle": None})
    bundle = Path(make())
    atomic_write_json(marker, {"settings": want, "bundle": str(bundle)})
    return bundle


def _first(*lists):
    """The first of ``lists`` that is not None (the caller's, the task's, auto's default)."""
    return next(x for x in lists if x is not None)


def available_methods(names, task: str, log=print, registry=METHODS) -> list[str]:
    """``names`` that are registered methods adapting ``task`` (training methods, or with
    ``registry=ADAPT_METHODS`` on-device ones); each one left out is noted."""
    out = []
    for n in names:
        if n not in registry:
            log and log(f"auto: skipping {n} (no such method registered)")
        elif task not in registry.get(n).tasks:
            log and log(f"auto: skipping {n} (it does not adapt {task} models)")
        else:
            out.append(n)
    return out


def score_candidates_on(bundles: dict, domains, reference: str, device: str = "cpu", seed: int = 0,
                        target_test: bool = True, hflip: bool = True) -> dict[str, dict]:
    """Every validator's score of each candidate bundle (``{name: path}``) on the same target rows, what a
    shift suite stores: ``{name: {"bundle", "scores", "disagreement_with_<reference>", "target_test"}}``.
    ``agreement`` is measured against ``reference``'s rows and ``majority`` against the other candidates'
    vote (:func:`edgeda.training.validators.score_candidates`); ``hflip``: the runs' ``augment_hflip``
    (whether ``aug_consistency`` checks flips of dense frames). ``target_test`` (the task's headline
    score on the labeled target test split, where there is one) is for reports only."""
    nets = {}
    for name, path in bundles.items():
        b = load_bundle(path)
        nets[name] = (b.module(b.primary), b.task)
    ref_net, spec = nets[reference]
    task = task_of(spec)
    boxes = task.output == "detections"  # detectors are compared by their boxes, not by class rows
    ref = evaluate_model(ref_net, domains.target, spec, device, labels=False, rows=not boxes, seed=seed, detections=boxes,
                         max_images=DETECTION_VALIDATOR_IMAGES if boxes else None) if domains.target is not None else None
    ref_rows = ref.rows if ref is not None else None
    contexts, record = {}, {}
    for name, (net, spec) in nets.items():
        ctx, _, out = evaluation_context(net, domains, spec, device, seed=seed, reference_rows=ref_rows, hflip=hflip,
                                         detections=boxes, reference_detections=ref.detections if ref is not None else None)
        contexts[name] = ctx
        entry = {"bundle": str(bundles[name])}
        if out is not None and out.rows is not None and ref_rows is not None:
            entry[f"disagreement_with_{reference}"] = disagreement(out.rows, ref_rows)
        if target_test and domains.target_test is not None:  # reported only
            test = evaluate_model(net, domains.target_test, spec, device).scores
            entry["target_test"] = test.get(task.headline)
            entry["target_test_scores"] = {k: v for k, v in test.items() if isinstance(v, (int, float))}
        record[name] = entry
    for name, scores in score_candidates(contexts).items():
        record[name]["scores"] = scores
    return record


def train_auto(cfg, *, methods=None, adapt_methods=None, selector: str | None = None,
               adapt_iters: int | None = None, log=print) -> dict:
    """``edgeda train --method auto``: train the candidates on ``cfg``'s data (see the module docstring;
    ``methods`` / ``adapt_methods`` override the task's lists), score every candidate's shipped model
    with every validator, ship the one ``selector`` ranks best (ties: the source-only candidate) to
    ``<out>/model.edgeda`` with every candidate's scores in its manifest (``metrics.auto``), and return
    that record. Target test labels, where present, are reported per candidate, never used."""
    log = log or (lambda s: None)
    base = cfg.to_dict()
    domains = load_domains(make_config(base, {"method": "source_only"}), True)
    task = task_of(domains.task)
    dense = task.auto_from_init  # the dense recipe: candidates fine-tuned from source-only
    default = task.auto_selector or (DEFAULT_DENSE_SELECTOR if dense else DEFAULT_SELECTOR)
    chosen_by_user = bool(selector) or cfg.select not in ("last", "target_val")
    selector = selector or (cfg.select if cfg.select not in ("last", "target_val") else default)
    if selector not in selector_names() or selector in ("last", "target_val"):
        raise EdgedaError(f"--method auto ranks candidates by a label-free validator; {selector!r} is not one")
    out = Path(cfg.out)
    cand_dir = out / "candidates"

    images_seen = {k: len(d) for k, d in (("source", domains.source), ("target", domains.target)) if d is not None}

    def run(name, method, reference_net=None, **extra):
        c = make_config(base, {"method": method, "out": str(cand_dir / name), **extra})
        settings = {"config": c.to_dict(), "images": images_seen}  # same paths with files added or removed: made again
        if extra.get("init"):  # a candidate started from a bundle is another run when that bundle changed
            settings["init_manifest_sha256"] = sha256_file(Path(extra["init"]) / "manifest.json")
        return _once(cand_dir / f"{name}.auto.json", settings, name, log,
                     lambda: train(c, progress=False, log=None, reference=reference_net).bundle, what=f"training {name}",
                     resume=lambda: train(c, resume=True, progress=False, log=None, reference=reference_net).bundle)

    if dense:
        methods = available_methods(_first(methods, task.auto_methods, DENSE_AUTO_METHODS), domains.task, log)
        source_bundle = run("source_only", "source_only")
        bundles = {DENSE_REFERENCE: run(DENSE_REFERENCE, "source_only", init=str(source_bundle))}
        for m in methods:
            bundles[f"{m}@init"] = run(f"{m}@init", m, init=str(source_bundle))
        bundles.update(_adapt_candidates(source_bundle, domains, _first(adapt_methods, task.auto_adapt, DENSE_AUTO_ADAPT),
                                         cand_dir, out, cfg, adapt_iters, log))
        reference = DENSE_REFERENCE
    else:
        methods = available_methods(_first(methods, task.auto_methods, AUTO_METHODS), domains.task, log)
        bundles = {"source_only": run("source_only", "source_only")}
        ref = load_bundle(bundles["source_only"])
        for m in methods:  # the source-only model is each run's agreement reference, as in a plain train
            bundles[m] = run(m, m, reference_net=ref.module(ref.primary))
        bundles.update(_adapt_candidates(bundles["source_only"], domains, _first(adapt_methods, task.auto_adapt, AUTO_ADAPT),
                                         cand_dir, out, cfg, adapt_iters, log))
        reference = "source_only"
    record = score_candidates_on(bundles, domains, reference, "cpu", cfg.seed, hflip=cfg.augment_hflip)
    for entry in record.values():  # one key name whatever the reference is called
        entry["disagreement_with_source_only"] = entry.pop(f"disagreement_with_{reference}", None)
    while not any(selector in r["scores"] for r in record.values()) and not chosen_by_user and selector in SELECTOR_FALLBACK:
        log(f"auto: {selector} cannot rank {len(record)} candidates; ranking by {SELECTOR_FALLBACK[selector]}")
        selector = SELECTOR_FALLBACK[selector]
    if not any(selector in r["scores"] for r in record.values()):
        raise EdgedaError(f"the validator {selector!r} cannot score {domains.task} candidates here "
                          f"(see `edgeda methods --validators`); the candidates are in {cand_dir}")
    chosen = max(record, key=lambda n: (record[n]["scores"].get(selector, float("-inf")), n == reference))
    if chosen != reference and not task.class_logits:
        # the warning's rule is calibrated on class outputs (the shift suites); a detector's box agreement sits far
        # lower for any change of weights, so the rule would fire on every pick: no warning rather than noise
        warning = None
    elif chosen != reference:
        warning = transfer_warning(record[chosen]["scores"], record[reference]["scores"],
                                   record[chosen].get("disagreement_with_source_only"), rule=task.warning_rule)
    elif dense:
        warning = (f"warning: no candidate beats continued source-only training ({reference}) by {selector}; "
                   f"shipping {reference}. Label 5-20 target frames and pass them as --target-val to check with labels.")
    else:
        warning = None
    result = {"task": domains.task, "selector": selector, "chosen": chosen, "reference": reference, "candidates": record,
              "transfer_warning": warning}
    if dense:
        result["source_only_bundle"] = str(source_bundle)
    shipped = update_bundle(bundles[chosen], out / "model.edgeda",
                            manifest_updates={"metrics": {"auto": result, "transfer_warning": warning}})
    result["bundle"] = str(shipped)
    (out / "auto.json").write_text(json.dumps(result, indent=2))
    return result
