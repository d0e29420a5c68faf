import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_demo_config_is_the_benchmarked_cpu_profile():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from adaptation import PROFILES

    demo = yaml.safe_load((ROOT / "configs" / "digits-cpu.yaml").read_text())
    common = dict(PROFILES["cpu"]["common"])
    common.pop("checkpoint_every")  # the benchmark skips checkpoints; the demo keeps them
    demo.pop("checkpoint_every")
    for k in ("source", "target"):
        assert demo.pop(k) == {"source": "syndigits", "target": "handwritten"}[k]
    assert demo == common
