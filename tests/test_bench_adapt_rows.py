"""The row and method names of ``benchmarks/adapt.py``: ablation variants ``NAME[KEY=VALUE,...]`` and
the dense shift rows ``BASE@TARGET`` (which bundle they adapt, which frames, which labels report)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import adapt

        yield adapt
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_variants_keep_their_commas_and_pass_their_options(bench):
    assert bench.split_methods("tent,tent[balance=off,lr=0.01],cotta") == ["tent", "tent[balance=off,lr=0.01]", "cotta"]
    assert bench.split_variant("tent[balance=off,lr=0.01]") == ("tent", ["balance=off", "lr=0.01"])
    assert bench.split_variant("cotta") == ("cotta", [])


def test_shift_rows_adapt_their_base_rows_bundle_to_the_suites_splits(bench):
    from dense_shifts import TARGETS

    assert len(bench.SHIFT_ROWS) == len(TARGETS) >= 8
    assert bench.base_row("syn_seg@fog") == "syn_seg" and bench.kind_name("syn_seg@fog") == "dense_shifts"
    assert bench.pair_of("syn_seg@fog") == {"source": "synscenes", "target": "synscenes:fog", "test": "synscenes:fog-test"}
    assert bench.pair_of("digits_seg@board")["test"] == "handwritten-scenes:board-test"
    assert bench.pair_of("syn_seg")["target"] == "synscenes:photo"  # a base row is its own pair
