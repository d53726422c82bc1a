"""Classification metrics shared by the bench runs and the spectral alignment instrument (one ECE)."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def ece(conf: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error Σ_b (n_b/N)·|acc_b − conf_b| over ``n_bins`` equal-width confidence bins
    [b/n, (b+1)/n) (confidence 1 falls in the last bin); ``conf`` is the max softmax probability."""
    conf, correct = conf.double(), correct.double()
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.double().mean().item() * abs(correct[m].mean().item() - conf[m].mean().item())
    return total


def temperature_scaled_loss(logits: torch.Tensor, y: torch.Tensor, iters: int = 30) -> tuple[float, float]:
    """(cross-entropy at the best temperature, that temperature T) for ``logits``/``y``: the loss of
    ``softmax(logits / T)`` minimised over T > 0, so that two models are compared on what they rank, not on how
    confident they are.  Convex in β = 1/T: Newton on β (gradient E_p[z] − z_y, curvature Var_p[z]), float64."""
    z = logits.detach().reshape(-1, logits.shape[-1]).double()
    y = y.reshape(-1).long()
    if not torch.isfinite(z).all():
        return float("nan"), float("nan")
    zy = z.gather(1, y[:, None]).squeeze(1)
    beta = 1.0
    for _ in range(iters):
        p = torch.softmax(beta * z, 1)
        ez = (p * z).sum(1)
        grad = (ez - zy).mean().item()
        curv = (p * (z - ez[:, None]) ** 2).sum(1).mean().item()
        if curv <= 1e-12:
            break
        new = beta - grad / curv
        new = min(max(new, beta / 4), beta * 4)  # damped: stays positive, converges from any start
        if abs(new - beta) <= 1e-9 * beta:
            beta = new
            break
        beta = new
    loss = F.cross_entropy(beta * z, y).item()
    return loss, 1.0 / beta


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> dict:
    """Accuracy, cross-entropy, ECE, mean confidence and margin statistics of one batch of logits (float64).

    Margins: probability margin p_y − max_{j≠y} p_j and logit margin z_y − max_{j≠y} z_j (mean, 10/50/90 %
    quantiles, fraction negative)."""
    logits = logits.detach().double()
    y = y.long()
    rows = torch.arange(len(y))
    probs = torch.softmax(logits, 1)
    conf, pred = probs.max(1)
    correct = (pred == y).double()
    other = logits.clone()
    other[rows, y] = -math.inf
    lmargin = logits[rows, y] - other.max(1).values
    pother = probs.clone()
    pother[rows, y] = -1.0
    pmargin = probs[rows, y] - pother.max(1).values
    q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    return {
        "acc": float(correct.mean()),
        "loss": float(F.cross_entropy(logits, y)),
        "ece": ece(conf, correct, n_bins),
        "mean_conf": float(conf.mean()),
        "prob_margin_mean": float(pmargin.mean()),
        "logit_margin_mean": float(lmargin.mean()),
        "logit_margin_q10_50_90": [float(v) for v in torch.quantile(lmargin, q)],
        "frac_negative_margin": float((lmargin < 0).double().mean()),
    }
