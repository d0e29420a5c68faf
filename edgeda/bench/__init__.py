"""Latency and throughput of a bundle on each backend: ``edgeda bench`` and :func:`bench`."""
from .._callable import make_callable
from .harness import STATS, bench, latency_stats, write_json  # noqa: F401

make_callable(__name__, "edgeda.bench.harness:bench")
