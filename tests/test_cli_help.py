"""What `--help` and `edgeda methods` tell a user: every default, every on-device method, every
`--select` choice; and the defaults that belong to one kind of data only."""
import numpy as np
import pytest
from click.testing import CliRunner

from edgeda.cli import main


def _help(*cmd):
    res = CliRunner().invoke(main, [*cmd, "--help"], terminal_width=400)
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def test_train_help_shows_every_default():
    out = _help("train")
    for text in ("--method TEXT adaptation method", "[default: dann]", "[default: runs/edgeda]", "[default: 2000]",
                 "[default: (handwritten when the source is syndigits, else none)]", "--checkpoint-every", "[default: 500]",
                 "for folders and .npz files 32 (classification) or 128 (segmentation, depth)"):
        assert text in out, text
    assert "without target labels" not in out and "target_val scores the --target-val images" in out


@pytest.mark.parametrize("cmd, texts", [
    (("eval",), ("--device TEXT where the model runs", "[default: auto]", "--json print the scores as JSON")),
    (("export",), ("--json print the export record",)),
    (("data", "preview"), ("--size INTEGER side in pixels", "[default: 32]", "1 (grey) or 3 (RGB)")),
    (("adapt",), ("[default: shot for classifiers, tent for segmentation and detection]",)),
])
def test_help_of_other_commands(cmd, texts):
    out = _help(*cmd)
    for text in texts:
        assert text in out, text


def test_methods_lists_on_device_methods_and_every_selector():
    out = CliRunner().invoke(main, ["methods"]).output
    device = out[out.index("on the device"):]
    assert all(f"  {m} " in device for m in ("3cgan", "shot", "tent", "cotta"))
    assert "  dann " in out[:out.index("on the device")]
    out = CliRunner().invoke(main, ["methods", "--validators"]).output
    assert "\ntarget_val\n" in out and "\nsnd\n" in out and "At most ``max_n`` images are scored" in " ".join(out.split())


def test_a_dense_source_needs_no_unrelated_default_target(tmp_path):
    from edgeda.config import make_config
    from edgeda.errors import DataError
    from edgeda.training.domains import load_domains

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "seg.npz", x=rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8),
             y=rng.integers(0, 3, (6, 16, 16)).astype(np.int64))
    cfg = make_config(None, {"source": str(tmp_path / "seg.npz"), "method": "source_only", "image_size": 16})
    d = load_domains(cfg, needs_target=False)
    assert d.task == "segmentation" and d.target is None and d.target_test is None and cfg.target is None
    cfg = make_config(None, {"source": str(tmp_path / "seg.npz"), "image_size": 16})  # dann adapts to a target
    with pytest.raises(DataError, match="give --target") as e:
        load_domains(cfg, needs_target=True)
    assert "handwritten" not in str(e.value)


@pytest.mark.parametrize("cmd", [["eval"], ["predict", "--input", "."], ["bench"], ["export"],
                                 ["adapt", "--target-dir", ".", "--out", "o.edgeda"]])
def test_a_missing_bundle_path_says_it_does_not_exist(cmd, tmp_path):
    res = CliRunner().invoke(main, [cmd[0], str(tmp_path / "nope.edgeda"), *cmd[1:]])
    assert res.exit_code == 2 and "nope.edgeda does not exist" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("where", ["flag", "config"])
def test_method_auto_from_the_command_line_or_a_config_file_runs_auto(tmp_path, monkeypatch, where):
    import edgeda.auto

    seen = {}

    def fake_auto(cfg, log=None):
        seen["cfg"] = cfg
        return {"task": "classification", "candidates": {}, "selector": "info_max", "chosen": "source_only",
                "transfer_warning": None, "bundle": str(tmp_path / "model.edgeda")}

    monkeypatch.setattr(edgeda.auto, "train_auto", fake_auto)
    args = ["train", "--out", str(tmp_path / "run"), "--iters", "7"]
    if where == "flag":
        args += ["--method", "auto"]
    else:
        (tmp_path / "auto.yaml").write_text("method: auto\n")
        args += ["--config", str(tmp_path / "auto.yaml")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    # the candidates' base run is source-only; the other settings pass through
    assert seen["cfg"].method == "source_only" and seen["cfg"].iters == 7
    assert "chosen by info_max: source_only" in res.output
