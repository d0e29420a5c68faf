"""COCO box mAP through pycocotools, over a whole split and across ranks; export parity of detections.

:class:`DetectionMeter` keeps every image's detections and truths (unlike the confusion and depth
meters it cannot reduce them to running sums: average precision ranks every detection of the split
by score), so it holds a few numbers per box. ``merge`` joins two meters; ``all_reduce`` gathers
every rank's records under ``torch.distributed`` (as padded float64 tensors, no pickles), after which
every rank computes the same scores.

:func:`coco_scores` runs ``pycocotools.cocoeval.COCOeval`` (iouType ``bbox``, its default parameters:
IoU thresholds 0.50:0.05:0.95, 101 recall points, at most 100 detections per image) and returns
``map`` (AP averaged over those thresholds and over the classes present in the truth), ``map50``,
``map75``, ``per_class_ap`` / ``per_class_ap50`` by class name (None for a class with no truth box),
``n_images``, ``n_truth`` and ``n_detections``. A truth's area (for COCO's small/medium/large ranges)
is its box's. Crowd regions (``iscrowd``) are passed as pycocotools crowd annotations: a detection on
one is neither a hit nor a false positive. Category ids are ``k + 1`` inside pycocotools (its matching
treats id 0 as "unmatched").

    >>> m = DetectionMeter(classes); m.update(model.postprocess(out), targets); scores = m.compute()
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from ..data.detection import box_iou

MATCH_IOU = 0.99  # export parity: an exported box matches the eager one at IoU >= this, same class


def _np(v, dtype, shape_tail=()) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    a = np.asarray(v if v is not None else np.zeros((0, *shape_tail)), dtype)
    return a.reshape((-1, *shape_tail)) if shape_tail else a.reshape(-1)


def as_detections(d: dict) -> dict:
    """A per-image record as numpy: ``boxes`` float64 (n, 4), ``scores`` (n,), ``labels`` int64 (n,)
    (missing scores: 1, for truths)."""
    boxes = _np(d.get("boxes"), np.float64, (4,))
    scores = d.get("scores")
    return {"boxes": boxes, "labels": _np(d.get("labels"), np.int64),
            "scores": np.ones(len(boxes)) if scores is None else _np(scores, np.float64)}


class DetectionMeter:
    """Per-image detections and truths of an evaluated split (see the module doc).

    ``update(preds, targets)``: ``preds`` one dict per image (``boxes`` (n, 4), ``scores`` (n,),
    ``labels`` (n,), tensors or arrays; a model's ``postprocess``), ``targets`` one dict per image
    (``boxes``, ``labels``, optional ``crowd`` / ``crowd_labels``), in the same pixel frame.
    """

    def __init__(self, num_classes: int, classes: list[str] | None = None):
        self.num_classes = int(num_classes)
        self.classes = list(classes) if classes else [str(i) for i in range(self.num_classes)]
        self.preds: list[dict] = []
        self.truths: list[dict] = []

    def __len__(self) -> int:
        return len(self.truths)

    def update(self, preds, targets) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} prediction records for {len(targets)} images")
        for p, t in zip(preds, targets):
            self.preds.append(as_detections(p))
            truth = as_detections(t)
            truth["crowd"] = _np(t.get("crowd"), np.float64, (4,))
            truth["crowd_labels"] = _np(t.get("crowd_labels"), np.int64)
            self.truths.append(truth)

    def merge(self, other: "DetectionMeter") -> "DetectionMeter":
        self.preds.extend(other.preds)
        self.truths.extend(other.truths)
        return self

    # rows of the gathered tensor: kind, image, x1, y1, x2, y2, score, label
    def _pack(self) -> torch.Tensor:
        rows = []
        for i, (p, t) in enumerate(zip(self.preds, self.truths)):
            rows.append(np.array([[0, i, 0, 0, 0, 0, 0, 0]], np.float64))
            for kind, b, s, lab in ((1, p["boxes"], p["scores"], p["labels"]),
                                    (2, t["boxes"], np.ones(len(t["boxes"])), t["labels"]),
                                    (3, t["crowd"], np.ones(len(t["crowd"])), t["crowd_labels"])):
                if len(b):
                    rows.append(np.column_stack([np.full(len(b), kind), np.full(len(b), i), b, s, lab]))
        return torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, 8)))

    def _unpack(self, packed: np.ndarray) -> None:
        self.preds, self.truths = [], []
        for i in np.unique(packed[packed[:, 0] == 0, 1]):
            rows = packed[packed[:, 1] == i]
            part = {k: rows[rows[:, 0] == k] for k in (1, 2, 3)}
            self.preds.append({"boxes": part[1][:, 2:6], "scores": part[1][:, 6],
                               "labels": part[1][:, 7].astype(np.int64)})
            self.truths.append({"boxes": part[2][:, 2:6], "scores": np.ones(len(part[2])),
                                "labels": part[2][:, 7].astype(np.int64), "crowd": part[3][:, 2:6],
                                "crowd_labels": part[3][:, 7].astype(np.int64)})

    def all_reduce(self) -> "DetectionMeter":
        """Gather every rank's images (each rank then holds the whole split, ranks in order)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        mine = self._pack().to(dev)
        world = dist.get_world_size()
        sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([len(mine)], dtype=torch.int64, device=dev))
        top = int(max(s.item() for s in sizes))
        pad = torch.zeros(top, 8, dtype=mine.dtype, device=dev)
        pad[:len(mine)] = mine
        parts = [torch.zeros_like(pad) for _ in range(world)]
        dist.all_gather(parts, pad)
        self._unpack(join_packed([part[:int(n.item())].cpu().numpy() for part, n in zip(parts, sizes)]))
        return self

    def compute(self) -> dict:
        return coco_scores(self.preds, self.truths, self.classes)


def join_packed(parts: list[np.ndarray]) -> np.ndarray:
    """The packed records of several meters (ranks) as one, image numbers renumbered in order."""
    out, offset = [], 0
    for a in parts:
        a = np.array(a, np.float64).reshape(-1, 8)
        images = np.unique(a[a[:, 0] == 0, 1])
        a[:, 1] = offset + np.searchsorted(images, a[:, 1])
        offset += len(images)
        out.append(a)
    return np.concatenate(out) if out else np.zeros((0, 8))


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _xywh(b: np.ndarray) -> list[list[float]]:
    return [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in np.asarray(b).reshape(-1, 4)]


def coco_scores(preds: list[dict], truths: list[dict], classes: list[str]) -> dict:
    """COCO box AP of per-image ``preds`` against ``truths`` (see the module doc)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    k = len(classes)
    cats = [{"id": c + 1, "name": str(name)} for c, name in enumerate(classes)]
    images = [{"id": i + 1} for i in range(len(truths))]
    gt_anns, dt_anns = [], []
    for i, (p, t) in enumerate(zip(preds, truths)):
        crowd_boxes, crowd_labels = _np(t.get("crowd"), np.float64, (4,)), _np(t.get("crowd_labels"), np.int64)
        p, t = as_detections(p), as_detections(t)
        for box, lab in zip(_xywh(t["boxes"]), t["labels"]):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1, "bbox": box,
                            "area": box[2] * box[3], "iscrowd": 0})
        for box, lab in zip(_xywh(crowd_boxes), crowd_labels):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1, "bbox": box,
                            "area": box[2] * box[3], "iscrowd": 1})
        for box, s, lab in zip(_xywh(p["boxes"]), p["scores"], p["labels"]):
            if 0 <= lab < k:
                dt_anns.append({"id": len(dt_anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1, "bbox": box,
                                "area": box[2] * box[3], "score": float(s), "iscrowd": 0})
    n_truth = sum(1 for a in gt_anns if not a["iscrowd"])
    out = {"n_images": len(truths), "n_truth": n_truth, "n_detections": len(dt_anns)}
    nan = float("nan")
    if not truths or n_truth == 0:
        return {"map": nan, "map50": nan, "map75": nan, "per_class_ap": {c: None for c in classes},
                "per_class_ap50": {c: None for c in classes}, **out}
    gt, dt = COCO(), COCO()
    gt.dataset = {"images": images, "categories": cats, "annotations": gt_anns}
    dt.dataset = {"images": images, "categories": cats, "annotations": dt_anns}
    _quiet(gt.createIndex)
    _quiet(dt.createIndex)
    ev = COCOeval(gt, dt, "bbox")
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    prec = ev.eval["precision"]  # (T IoU thresholds, R recall points, K classes, A areas, M max dets)
    thr = ev.params.iouThrs
    t50, t75 = int(np.argmin(np.abs(thr - 0.5))), int(np.argmin(np.abs(thr - 0.75)))

    def ap(p):
        v = p[p > -1]
        return float(v.mean()) if v.size else None

    per_class = {classes[c]: ap(prec[:, :, c, 0, -1]) for c in range(k)}
    per_class50 = {classes[c]: ap(prec[t50, :, c, 0, -1]) for c in range(k)}
    def or_nan(v):
        return nan if v is None else v

    return {"map": or_nan(ap(prec[:, :, :, 0, -1])), "map50": or_nan(ap(prec[t50, :, :, 0, -1])),
            "map75": or_nan(ap(prec[t75, :, :, 0, -1])), "per_class_ap": per_class, "per_class_ap50": per_class50,
            **out}


def coco_results(detections: list[dict], image_ids=None, category_ids=None) -> list[dict]:
    """COCO results records (``image_id``, ``category_id``, ``bbox`` = [x, y, w, h], ``score``) of
    per-image detections, as ``edgeda predict`` writes them. ``image_ids[i]`` / ``category_ids[k]``:
    the ids of a COCO source (its domain's ``image_ids`` / ``category_ids``); default ``i`` and ``k``."""
    out = []
    for i, d in enumerate(detections):
        d = as_detections(d)
        iid = image_ids[i] if image_ids is not None else i
        for box, s, lab in zip(_xywh(d["boxes"]), d["scores"], d["labels"]):
            cid = category_ids[int(lab)] if category_ids is not None else int(lab)
            out.append({"image_id": iid, "category_id": cid, "bbox": [round(v, 3) for v in box],
                        "score": round(float(s), 5)})
    return out


# ---- export parity -------------------------------------------------------------------------
def unpad(boxes, scores, labels, count) -> list[dict]:
    """A padded, fixed-size detection output (boxes (B, D, 4), scores (B, D), labels (B, D), count
    (B,)) -> one dict per image of its first ``count`` detections."""
    boxes, scores, labels = np.asarray(boxes), np.asarray(scores), np.asarray(labels)
    count = np.asarray(count).reshape(-1)
    return [{"boxes": boxes[i, :int(n)], "scores": scores[i, :int(n)], "labels": labels[i, :int(n)]}
            for i, n in enumerate(count)]


def compare_detections(ref: list[dict], out: list[dict], iou: float = MATCH_IOU) -> dict:
    """Parity of two detection sets of the same images (eager ``ref``, exported ``out``): each ref
    box, by decreasing score, takes the unmatched ``out`` box of its class with the highest IoU, if
    that IoU is at least ``iou``. Returns ``n`` (images), ``n_ref``, ``n_out``, ``matched``,
    ``unmatched_ref``, ``unmatched_out``, ``match_rate`` (matched / max(n_ref, n_out), 1 when both are
    empty), ``min_iou`` of the matched pairs, ``max_score_diff`` over them (also as ``max_abs_diff``)."""
    if len(ref) != len(out):
        raise ValueError(f"{len(ref)} reference images but {len(out)} compared ones")
    n_ref = n_out = matched = 0
    min_iou, max_diff = 1.0, 0.0
    for r, o in zip(ref, out):
        r, o = as_detections(r), as_detections(o)
        n_ref, n_out = n_ref + len(r["boxes"]), n_out + len(o["boxes"])
        if not len(r["boxes"]) or not len(o["boxes"]):
            continue
        ious = box_iou(r["boxes"], o["boxes"])
        ious[r["labels"][:, None] != o["labels"][None, :]] = -1
        taken = np.zeros(len(o["boxes"]), bool)
        for j in np.argsort(-r["scores"], kind="stable"):
            cand = np.where(taken, -1, ious[j])
            m = int(cand.argmax())
            if cand[m] >= iou:
                taken[m] = True
                matched += 1
                min_iou = min(min_iou, float(cand[m]))
                max_diff = max(max_diff, abs(float(r["scores"][j]) - float(o["scores"][m])))
    top = max(n_ref, n_out)
    return {"n": len(ref), "n_ref": n_ref, "n_out": n_out, "matched": matched, "unmatched_ref": n_ref - matched,
            "unmatched_out": n_out - matched, "match_rate": matched / top if top else 1.0,
            "min_iou": min_iou if matched else None, "max_score_diff": max_diff, "max_abs_diff": max_diff}
