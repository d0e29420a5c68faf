"""``edgeda export`` and ``edgeda predict`` (wired lazily from :mod:`edgeda.cli`)."""
from __future__ import annotations

import sys

import click

from ..console import emit_json, handle_errors
from ..errors import EdgedaError


def parse_batch(text: str) -> tuple[int, int, int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise EdgedaError(f"--batch expects min,opt,max integers, got {text!r}") from None
    if len(parts) == 1:
        parts = [1, parts[0], parts[0]]
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise EdgedaError(f"--batch expects min,opt,max with 1 <= min <= opt <= max, got {text!r}")
    return parts[0], parts[1], parts[2]


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--out", show_default="update BUNDLE in place, atomically", help="write a new bundle here")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--data", show_default="the bundle's target test split", help="labeled domain for the parity and accuracy check")
@click.option("--calib", show_default="the bundle's target adapt split", help="target images for int8 calibration")
@click.option("--trt", "build_trt", is_flag=True, help="also build a TensorRT engine (needs TensorRT and a GPU)")
@click.option("--batch", default="1,8,32", show_default=True, help="TensorRT optimization profile min,opt,max")
@click.option("--workspace-mb", default=1024, show_default=True, help="TensorRT workspace limit")
@click.option("--plugins", type=click.Path(dir_okay=False), help="libedgeda_plugins.so: fuse edgeda plugins into the engine")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), show_default="auto",
              help="ONNX exporter; auto: torch.export-based where it works and matches, else TorchScript")
@click.option("--json", "as_json", is_flag=True, help="print the export record (paths, exporter, parity, scores) as JSON")
@handle_errors
def export(bundle, out, precision, data, calib, build_trt, batch, workspace_mb, plugins, exporter, as_json) -> None:
    """ONNX (+ fp16/int8, + TensorRT) of every deployable, parity-checked against PyTorch."""
    from .api import export_bundle

    if plugins and not build_trt:
        raise EdgedaError("--plugins applies to TensorRT engines; add --trt")
    res = export_bundle(bundle, out, precision=precision, data=data, calib=calib, trt=build_trt,
                        batch=parse_batch(batch), workspace_mb=workspace_mb, plugins=plugins, exporter=exporter,
                        log=None if as_json else click.echo)
    if as_json:
        emit_json(res)


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--input", "input_", required=True, type=click.Path(), help="an image file or a folder of images")
@click.option("--backend", type=click.Choice(["ort", "torch", "trt"]), default="ort", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda (ort/torch)")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="preds.csv or preds.json")
@click.option("--out-dir", type=click.Path(file_okay=False), show_default="predictions/", help="dense bundles: folder for the mask / depth PNGs")
@click.option("--coco", "coco_out", type=click.Path(dir_okay=False), help="detection bundles: write COCO results JSON here")
@click.option("--coco-images", type=click.Path(exists=True, dir_okay=False),
              help="with --coco: a COCO annotation file listing the input images; image_id taken from it (by file name)")
@click.option("--voc", "voc_out", type=click.Path(file_okay=False),
              help="detection bundles: write the boxes as a Pascal VOC folder (Annotations/*.xml, classes.txt) to "
                   "correct in a labelling tool and use as labelled data")
@click.option("--min-score", type=float, default=0.5, show_default=True, help="with --voc: the boxes written score at least this")
@click.option("--json", "as_json", is_flag=True, help="print the predictions as JSON")
@click.option("--plugins", type=click.Path(dir_okay=False), help="libedgeda_plugins.so, for engines built with --plugins")
@handle_errors
def predict(bundle, input_, backend, precision, device, batch_size, out, out_dir, coco_out, coco_images, voc_out,
            min_score, as_json, plugins) -> None:
    """Per image: class and confidence (classifiers), a colourised mask and overlay (segmentation) or
    a 16-bit and a colour-mapped depth PNG (depth); unreadable files are skipped and listed."""
    from .prediction import predict as run_predict

    res = run_predict(bundle, input_, backend=backend, precision=precision, out=out, out_dir=out_dir, batch_size=batch_size,
                      device=device, progress=not as_json and sys.stderr.isatty(), plugin_library=plugins, coco_out=coco_out,
                      coco_images=coco_images, voc_out=voc_out, min_score=min_score)
    if as_json:
        emit_json(res)
        return
    if out is None:
        for r in res["predictions"][:20]:
            if "class_name" in r:
                click.echo(f"{r['path']}: {r['class_name']} ({r['confidence']:.1%}, entropy {r['entropy']:.3f})")
            elif "fraction" in r:
                top = sorted(r["fraction"].items(), key=lambda kv: -kv[1])[:3]
                click.echo(f"{r['path']}: " + ", ".join(f"{k} {v:.0%}" for k, v in top) + f" (confidence {r['mean_confidence']:.1%})")
            elif "n_detections" in r:
                top = ", ".join(f"{d['class']} {d['score']:.2f}" for d in r["detections"][:5])
                click.echo(f"{r['path']}: {r['n_detections']} detections" + (f" ({top})" if top else ""))
            else:
                click.echo(f"{r['path']}: depth {r['depth_min_m']:.1f}-{r['depth_max_m']:.1f} m (median {r['depth_median_m']:.1f})")
        if res["n"] > 20:
            click.echo(f"... {res['n'] - 20} more (use --out preds.csv)")
    click.echo(f"{res['n']} images predicted with {backend} ({precision})" + (f"; written to {res['out']}" if out else "")
               + (f"; PNGs in {res['out_dir']}" if res.get("out_dir") else "")
               + (f"; COCO results in {res['coco_out']}" if res.get("coco_out") else "")
               + (f"; {res['voc_objects']} boxes as Pascal VOC in {res['voc_out']}" if res.get("voc_out") else ""))
    if res.get("coco_unlisted"):
        click.echo(f"{len(res['coco_unlisted'])} images are not listed in --coco-images and were left out of the COCO "
                   f"results, e.g. {res['coco_unlisted'][0]}")
    if res["skipped"]:
        click.echo(f"skipped {len(res['skipped'])} unreadable files:")
        for s in res["skipped"][:20]:
            click.echo(f"  {s['path']}: {s['reason']}")
