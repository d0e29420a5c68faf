"""DEV, reverse validation, BNM and agreement on constructed cases: what each can and cannot see."""
import pytest
import torch

from conftest import tiny_config
from edgeda.training import Trainer
from edgeda.training.selection import VALIDATORS, EvalContext, score_all, selector_names

K = 4


def clusters(n_per, shift, seed):
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.eye(K, 8)
    y = torch.arange(K).repeat_interleave(n_per)
    return centres[y] + shift + 0.5 * torch.randn(len(y), 8, generator=g), y


def head(features, perm=None):
    """Confident logits of the nearest cluster centre; ``perm`` relabels the classes."""
    c = (features[:, :K]).argmax(1)
    if perm is not None:
        c = torch.as_tensor(perm)[c]
    return 20.0 * torch.nn.functional.one_hot(c, K).float()


SWAP = [1, 0, 2, 3]


def context(model_perm=None, feature_swap=False):
    fs, ys = clusters(30, 0.0, 0)
    ft, yt = clusters(30, 0.3, 1)
    if feature_swap:  # target features of classes 0 and 1 land on each other's source cluster
        ft = ft.clone()
        ft[:, [0, 1]] = ft[:, [1, 0]]
    correct_target = head(clusters(30, 0.3, 1)[0])  # the source-only reference: right on target
    return EvalContext(0.9, target_logits=head(ft, model_perm), target_features=ft,
                       source_logits=head(fs, model_perm), source_features=fs, source_labels=ys,
                       reference_logits=correct_target)


def test_registered_and_selectable():
    assert {"dev", "reverse", "bnm", "agreement"} <= set(VALIDATORS) & set(selector_names())


def test_confident_class_swap_in_the_head():
    good, swapped = score_all(context()), score_all(context(model_perm=SWAP))
    for name in ("dev", "reverse", "agreement"):  # each claims to see a swap the features carry
        assert swapped[name] < good[name] - 0.1, name
    for name in ("entropy", "info_max", "bnm"):  # confidence/diversity scores cannot see it
        assert swapped[name] == pytest.approx(good[name], abs=1e-6), name
    assert good["agreement"] == pytest.approx(1.0) and good["reverse"] > 0.95


def test_swap_by_misaligned_target_features():
    """Alignment that maps target class 0 onto source class 1: only the source-only reference sees it;
    DEV and reverse validation are blind by construction (their docstrings say so)."""
    good, bad = score_all(context()), score_all(context(feature_swap=True))
    assert bad["agreement"] < good["agreement"] - 0.3
    assert bad["reverse"] > 0.9 and abs(bad["dev"] - good["dev"]) < 0.5


def test_bnm_worked_values():
    onehot = 50 * torch.nn.functional.one_hot(torch.arange(8) % K, K).float()
    assert VALIDATORS.get("bnm")(EvalContext(0, target_logits=onehot)) == pytest.approx(K * (2 ** 0.5) / 8, rel=1e-4)
    collapsed = 50 * torch.nn.functional.one_hot(torch.zeros(8, dtype=torch.long), K).float()
    assert VALIDATORS.get("bnm")(EvalContext(0, target_logits=collapsed)) == pytest.approx(8 ** 0.5 / 8, rel=1e-4)


def test_dense_rows_leave_out_what_needs_per_image_labels():
    """Segmentation contexts carry only sampled pixel rows: DEV and reverse say they do not apply."""
    rows = torch.randn(64, 5)
    ctx = EvalContext(0.4, target_logits=rows, reference_logits=rows.clone())
    with pytest.raises(ValueError, match="labeled source"):
        VALIDATORS.get("dev")(ctx)
    s = score_all(ctx)
    assert "dev" not in s and "reverse" not in s and s["agreement"] == pytest.approx(1.0) and "bnm" in s


def test_trainer_records_new_validators_and_selects_by_them(tmp_path):
    from edgeda.models import build  # noqa: F401  (registry import side effects)

    cfg = tiny_config(tmp_path, select="dev")
    res = Trainer(cfg, progress=False, log=None).run()
    for h in res.history:
        assert {"score/dev", "score/reverse", "score/bnm"} <= set(h)
        assert "score/agreement" not in h  # no reference given
    best = max(res.history, key=lambda h: (h["score/dev"], h["iteration"]))["iteration"]
    assert res.metrics["selected_iteration"] == best
