"""The shipped-model format: a directory ``NAME.edgeda/`` with ``manifest.json`` + safetensors.

Loading never executes code: weights are safetensors, architectures are JSON records rebuilt
through :func:`edgeda.models.rebuild`. Every file is listed in the manifest with its sha256 and
checked on load, and the manifest's own content is covered by ``manifest_sha256`` (format version
2; version-1 bundles load with a warning); paths must stay inside the bundle; unknown newer format
versions are refused.
Writes are atomic: the bundle is assembled in a temporary directory and renamed into place.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from . import __version__
from .errors import BundleError, BundleWarning, EdgedaError
from .models import arch_of, rebuild
from .tasks import task_of
from .tasks.spec import TaskSpec
from .utils import atomic_dir, sha256_file

FORMAT = "edgeda-bundle"
FORMAT_VERSION = 2  # 2: the manifest carries the checksum of its own content (``manifest_sha256``)
MANIFEST = "manifest.json"
MANIFEST_CHECKSUM = "manifest_sha256"


def manifest_checksum(manifest: dict) -> str:
    """sha256 of the manifest's content (every field but the checksum itself) as canonical JSON:
    the classes, input spec, architectures, method, training record, metrics and file checksums.
    An edited manifest (a renamed class, another architecture) no longer matches, as an edited
    weight file no longer matches its sha256."""
    import hashlib

    content = json.loads(json.dumps({k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}))
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _version() -> str:
    return __version__


def safe_relpath(name: str) -> str:
    """Validate a path named inside a manifest: relative, normalised, no ``..``, no absolute path."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise BundleError(f"manifest names an invalid path {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or name.startswith("~"):
        raise BundleError(f"manifest names a path outside the bundle: {name!r}")
    return str(p)


def _save_module(module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def write_bundle(
    path: str | Path,
    modules: dict[str, Any],
    task: TaskSpec,
    *,
    method: dict | None = None,
    training: dict | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write ``modules`` (name -> nn.Module built via :func:`edgeda.models.build`) as a bundle."""
    primary = task_of(task).deployable
    if primary not in modules:
        raise ValueError(f"a {task.task} bundle always ships its task network {primary!r}")
    path = Path(path)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "edgeda_version": _version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": task.to_dict(),
        "deployables": {},
        "method": method or {},
        "training": training or {},
        "metrics": metrics or {},
        "files": {},
    }
    manifest.update(extra or {})
    with atomic_dir(path) as tmp:
        for name, module in modules.items():
            fname = f"{name}.safetensors"
            _save_module(module, tmp / fname)
            manifest["deployables"][name] = {"file": fname, "arch": arch_of(module)}
        _copy_into(tmp, extra_files or {})
        _finish_manifest(tmp, manifest)
    return path


def _copy_into(folder: Path, files: dict[str, Path]) -> None:
    """Copy ``{relative name in the bundle: source file}`` into ``folder`` (names validated)."""
    for rel, src in files.items():
        dst = folder / safe_relpath(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _finish_manifest(folder: Path, manifest: dict) -> None:
    files = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            rel = f.relative_to(folder).as_posix()
            files[rel] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    manifest["files"] = files
    manifest["format_version"] = FORMAT_VERSION  # rewritten manifests (export, adapt) are sealed anew
    manifest[MANIFEST_CHECKSUM] = manifest_checksum(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


class Bundle:
    """A verified bundle on disk. ``bundle.module(bundle.primary)`` rebuilds the task network in eval mode."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        mf = self.path / MANIFEST
        if not self.path.exists():
            raise BundleError(f"{self.path} does not exist (a bundle is the model.edgeda folder a training run writes)")
        if not mf.is_file():
            raise BundleError(f"{self.path} is not an edgeda bundle (no {MANIFEST})")
        try:
            self.manifest = json.loads(mf.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise BundleError(f"{mf} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
        except OSError as e:
            raise BundleError(f"cannot read {mf}: {e.strerror or e}") from None
        check_manifest(self.manifest)
        if verify:
            self.verify_manifest()
            self.verify()
        try:
            self.task = TaskSpec.from_dict(self.manifest["task"])
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise BundleError(f"bundle {self.path} has a malformed task record ({str(e)[:200]})") from None

    def verify_manifest(self) -> None:
        """Refuse a manifest whose content does not match its own checksum. Bundles written before
        manifests carried one (format version 1) load with a warning: their weight files are still
        checked, their manifest cannot be."""
        m = self.manifest
        if m["format_version"] < 2:
            import warnings

            warnings.warn(f"bundle {self.path} was written by an edgeda before manifests were checksummed (format "
                          "version 1): its weight files are verified, an edit of its manifest would not be noticed; "
                          "rewrite it (e.g. `edgeda export BUNDLE`) to seal it", BundleWarning, stacklevel=3)
            return
        if m.get(MANIFEST_CHECKSUM) != manifest_checksum(m):
            raise BundleError(f"bundle {self.path}: manifest.json does not match its checksum (edited or corrupt); "
                              "its classes, input spec and architecture cannot be trusted")

    def verify(self) -> None:
        root = self.path.resolve()
        for rel, info in self.manifest["files"].items():
            f = self.path / safe_relpath(rel)
            if not f.is_file():
                raise BundleError(f"bundle {self.path} is missing {rel}")
            if not f.resolve().is_relative_to(root):  # a symlink out of the bundle
                raise BundleError(f"bundle {self.path}: {rel} points outside the bundle")
            if sha256_file(f) != info.get("sha256"):
                raise BundleError(f"bundle {self.path}: {rel} does not match its checksum (tampered or corrupt)")

    @property
    def names(self) -> list[str]:
        return sorted(self.manifest["deployables"])

    def module(self, name: str | None = None, device: str = "cpu"):
        from safetensors.torch import load_file

        name = name or self.primary
        entry = self.manifest["deployables"].get(name)
        if entry is None:
            raise BundleError(f"bundle {self.path} has no {name!r} (has: {', '.join(self.names)})")
        try:
            weights = self.path / safe_relpath(entry["file"])
            _check_arch_size(entry["arch"], weights.stat().st_size if weights.is_file() else 0)
            module = rebuild(entry["arch"])
        except (EdgedaError, TypeError, ValueError, KeyError, AttributeError, RuntimeError, OverflowError) as e:
            raise BundleError(f"bundle {self.path}: cannot rebuild {name!r} from its architecture record ({str(e)[:200]})") from None
        try:
            state = load_file(str(self.path / safe_relpath(entry["file"])))
            module.load_state_dict(state)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type; a mismatch is RuntimeError
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise BundleError(f"bundle {self.path}: weights of {name!r} do not load ({first})") from None
        return module.to(device).eval()

    @property
    def primary(self) -> str:
        """The name of the task network: ``classifier``, or ``model`` for dense tasks."""
        return task_of(self.task).deployable

    @property
    def target_test(self) -> str | None:
        """The spec of the target test split the bundle was trained against (e.g. ``handwritten:test``),
        if it names one: the default data of ``edgeda eval`` and of an export's parity check."""
        return self.manifest.get("training", {}).get("domains", {}).get("target_test")

    @property
    def model(self):
        """The task network (the ``classifier`` of a classification bundle, the dense ``model`` otherwise)."""
        return self.module(self.primary)

    def file(self, rel: str) -> Path:
        return self.path / safe_relpath(rel)


def _check_arch_size(arch: dict, weights_bytes: int) -> None:
    """Refuse an architecture record that asks for more tensors than its weights file holds.

    The record is built first on PyTorch's ``meta`` device (shapes only, no memory), so a manifest
    whose kwargs ask for an enormous model fails here instead of exhausting the machine's memory.
    Weights are stored at 2 bytes per element at least (fp16/bf16)."""
    import torch

    with torch.device("meta"):
        probe = rebuild(arch)
    n = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    if 2 * n > weights_bytes + 4096:
        raise BundleError(f"architecture record asks for {n:,} weights but the weights file has {weights_bytes:,} bytes")


def check_manifest(m: Any) -> None:
    """Refuse manifests that are malformed, from a newer format, or name paths outside the bundle."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError("manifest is not an edgeda bundle manifest")
    v = m.get("format_version")
    if not isinstance(v, int) or isinstance(v, bool):
        raise BundleError(f"manifest has an invalid format_version {v!r}")
    if v > FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {v} is newer than this edgeda supports ({FORMAT_VERSION}); upgrade edgeda"
        )
    for key, typ in (("task", dict), ("deployables", dict), ("files", dict)):
        if not isinstance(m.get(key), typ):
            raise BundleError(f"manifest field {key!r} is missing or malformed")
    for rel, info in m["files"].items():
        safe_relpath(rel)
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            raise BundleError(f"manifest entry for {rel!r} has no sha256")
    for name, entry in m["deployables"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("arch"), dict):
            raise BundleError(f"deployable {name!r} has no architecture record")
        rel = safe_relpath(entry.get("file", ""))
        if rel not in m["files"]:
            raise BundleError(f"deployable {name!r} names {rel!r}, which has no checksum in the manifest")


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    return Bundle(path, verify=verify)


def update_bundle(src: str | Path, dst: str | Path | None = None, *, add_files: dict[str, Path] | None = None,
                  manifest_updates: dict | None = None) -> Path:
    """Copy a verified bundle (to ``dst``, or in place), add files and manifest fields, rewrite checksums.

    The result replaces ``dst`` atomically; ``src`` itself is only replaced when ``dst`` is None.
    """
    bundle = Bundle(src)
    dst = Path(dst) if dst is not None else bundle.path
    manifest = json.loads(json.dumps(bundle.manifest))
    for k, v in (manifest_updates or {}).items():
        if isinstance(v, dict) and isinstance(manifest.get(k), dict):
            manifest[k].update(v)
        else:
            manifest[k] = v
    with atomic_dir(dst) as tmp:
        _copy_into(tmp, {rel: bundle.file(rel) for rel in bundle.manifest["files"]})
        _copy_into(tmp, add_files or {})
        _finish_manifest(tmp, manifest)
    return dst
