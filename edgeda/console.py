"""What every ``edgeda`` command shares: user errors as one sentence and an exit code, edgeda's
warnings as one line, ``--json`` output, and the list of files a domain skipped. The command
modules (:mod:`edgeda.cli` and each subsystem's ``cli``) import it; it imports none of them."""
from __future__ import annotations

import functools
import json
import sys
import warnings

import click

from .errors import BundleWarning, EdgedaError


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """edgeda's own warnings as one line on stderr (others as Python prints them)."""
    if issubclass(category, BundleWarning):
        click.secho(f"warning: {message}", fg="yellow", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if warnings.showwarning is not _show_warning:
            global _python_showwarning
            _python_showwarning = warnings.showwarning
            warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except EdgedaError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted; the last checkpoint is kept (continue with --resume)", fg="yellow", err=True)
            sys.exit(130)

    return wrapper


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def print_skipped(report: dict, echo, what: str = "", listed: int = 5) -> None:
    """``skipped N files``, then the first few with the reason (``report``: ``LoadReport.to_dict()``)."""
    for w in report.get("warnings", []):
        echo(f"  warning: {what}{w}")
    n = report.get("skipped", 0)
    if not n:
        return
    a = report.get("skipped_annotations", 0)  # entries inside annotation files, not whole files
    counts = [f"{k} {w}{'s' if k != 1 else ''}" for k, w in ((n - a, "file"), (a, "annotation")) if k]
    echo(f"  {what}skipped {' and '.join(counts)}" + (":" if report.get("skipped_files") else ""))
    for f in report.get("skipped_files", [])[:listed]:
        echo(f"    {f['path']}: {f['reason']}")
    if n > listed:
        echo(f"    ... {n - listed} more" + (" (listed in the manifest)" if what else ""))
