"""Calibration, margins and the alignment callback on hand-made logits with known answers (docs/spectral.md §4)."""
import math

import pytest
import torch

from nsf_lab.spectral.alignment import AlignmentRecorder, accuracy_at_loss, classification_metrics, early_dense_cadence


def _logits(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_metrics_known_answer():
    probs = [[0.95, 0.05], [0.85, 0.15], [0.65, 0.35], [0.25, 0.75]]
    y = torch.tensor([0, 0, 1, 1])
    m = classification_metrics(_logits(probs), y, n_bins=10)
    assert m["acc"] == pytest.approx(0.75)
    assert m["mean_conf"] == pytest.approx(0.8)
    # one sample per bin: ECE = mean |correct − conf|
    assert m["ece"] == pytest.approx((0.05 + 0.15 + 0.65 + 0.25) / 4)
    assert m["loss"] == pytest.approx(-(math.log(0.95) + math.log(0.85) + math.log(0.35) + math.log(0.75)) / 4)
    assert m["prob_margin_mean"] == pytest.approx((0.9 + 0.7 - 0.3 + 0.5) / 4)
    lm = [math.log(0.95 / 0.05), math.log(0.85 / 0.15), math.log(0.35 / 0.65), math.log(0.75 / 0.25)]
    assert m["logit_margin_mean"] == pytest.approx(sum(lm) / 4)
    assert m["frac_negative_margin"] == pytest.approx(0.25)


def test_ece_zero_when_calibrated_and_large_when_overconfident():
    # 10 samples at confidence 0.7, 7 of them right: perfectly calibrated
    probs = [[0.7, 0.3]] * 10
    y = torch.tensor([0] * 7 + [1] * 3)
    assert classification_metrics(_logits(probs), y)["ece"] == pytest.approx(0.0, abs=1e-12)
    y_bad = torch.tensor([0] * 2 + [1] * 8)  # 20 % right at 70 % confidence
    assert classification_metrics(_logits(probs), y_bad)["ece"] == pytest.approx(0.5)


def test_cadence_is_dense_early_and_sparse_later():
    c = early_dense_cadence(steps_per_epoch=16, early_epochs=2, per_epoch_early=8, per_epoch_late=2)
    chosen = [s for s in range(0, 81) if c(s)]
    assert chosen[:3] == [0, 2, 4]
    assert [s for s in chosen if s <= 32] == list(range(0, 33, 2))
    assert [s for s in chosen if s > 32] == [40, 48, 56, 64, 72, 80]


def test_recorder_in_a_training_loop_and_accuracy_at_loss():
    torch.manual_seed(0)
    x = torch.randn(200, 5)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(5, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    rec = AlignmentRecorder(x, y, cadence=5, batch_size=64)  # chunked evaluation
    rec(0, model)
    for step in range(1, 31):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        rec(step, model)
    h = rec.history
    assert h["step"] == [0, 5, 10, 15, 20, 25, 30]
    assert h["loss"][-1] < h["loss"][0] and h["acc"][-1] > 0.9
    assert model.training  # mode restored
    at = accuracy_at_loss(h, [h["loss"][2], -1.0])
    assert at[h["loss"][2]]["step"] == 10 and at[h["loss"][2]]["acc"] == h["acc"][2]
    assert at[-1.0] is None  # a level never reached
