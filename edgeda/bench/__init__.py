"""Latency and throughput of a bundle on each backend: ``edgeda bench`` and :func:`bench`."""
from .harness import STATS, bench, latency_stats, write_json  # noqa: F401
