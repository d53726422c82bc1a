"""Statistics over seeds, shared by the bench report and the spectral instruments (no scipy needed).

Every function skips missing values (None, NaN, ±inf: "diverged", "never reached") and says how many it
skipped where that matters.  Student-t quantiles and p-values are exact (regularised incomplete beta).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def finite(xs) -> list[float]:
    """The finite values of ``xs`` as floats (None, NaN and ±inf dropped)."""
    return [float(x) for x in xs if x is not None and math.isfinite(float(x))]


def mean(xs) -> float:
    """Mean of the finite values; NaN when there are none."""
    xs = finite(xs)
    return float(np.mean(xs)) if xs else float("nan")


def mean_sd(xs) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n) of the finite values; sd is 0 for one value, both NaN for none."""
    xs = finite(xs)
    if not xs:
        return float("nan"), float("nan"), 0
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0, len(xs)


def fmt_mean_sd(xs, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± sd`` of the finite values times ``scale`` (100 for percent), ``n/a`` when there are none."""
    m, sd, n = mean_sd(xs)
    return "n/a" if n == 0 else f"{scale * m:.{digits}f} ± {scale * sd:.{digits}f}"


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lnf = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lnf) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lnf) * _betacf(b, a, 1.0 - x) / b


def t_sf2(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with ``df`` degrees of freedom."""
    if not math.isfinite(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile (0.5 < q < 1) of Student's t (bisection on the exact tail; NaN for df <= 0)."""
    if df <= 0:
        return float("nan")
    lo, hi = 0.0, 1.0
    while t_sf2(hi, df) > 2 * (1 - q):
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_sf2(mid, df) > 2 * (1 - q) else (lo, mid)
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean, sd and half-width of the t confidence interval over the finite values (seeds); the rest are
    counted in ``n_missing``.  ``ci95`` is None with fewer than two values."""
    xs = finite(values)
    out = {"n": len(xs), "n_missing": len(values) - len(xs)}
    if not xs:
        out.update(mean=None, ci95=None, std=None)
        return out
    m, sd, n = mean_sd(xs)
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n) if n > 1 else None
    out.update(mean=m, std=sd, ci95=half)
    return out


def _t_test(diff: float, se: float, df: float, level: float) -> dict:
    if se == 0.0:
        p = 1.0 if diff == 0.0 else 0.0
        return {"diff": diff, "lo": diff, "hi": diff, "p": p, "df": float(df)}
    half = t_quantile(0.5 + level / 2, df) * se
    return {"diff": diff, "lo": diff - half, "hi": diff + half, "p": float(t_sf2(diff / se, df)), "df": float(df)}


def welch(a, b, level: float = 0.95) -> dict | None:
    """Welch's t-test of mean(a) − mean(b) (unequal variances): diff, CI (lo, hi), two-sided p, df.
    None with fewer than two finite values on a side."""
    a, b = np.asarray(finite(a)), np.asarray(finite(b))
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = float(a.var(ddof=1)) / len(a), float(b.var(ddof=1)) / len(b)
    se = float(math.sqrt(va + vb))
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else float(len(a) + len(b) - 2)
    return _t_test(float(a.mean() - b.mean()), se, df, level)


def paired(a, b, level: float = 0.95) -> dict | None:
    """Paired t-test of mean(a − b) over pairs where both are finite (e.g. the same seed); None with < 2 pairs."""
    d = np.asarray([x - y for x, y in zip(a, b) if finite([x]) and finite([y])], dtype=float)
    if len(d) < 2:
        return None
    out = _t_test(float(d.mean()), float(d.std(ddof=1)) / math.sqrt(len(d)), len(d) - 1, level)
    out["n"] = len(d)
    return out


def bootstrap_ci(xs, stat=np.mean, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over the finite values (seeded, so reports are reproducible)."""
    x = np.asarray(finite(xs))
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = np.array([stat(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)])
    return float(np.quantile(boots, (1 - level) / 2)), float(np.quantile(boots, (1 + level) / 2))


def holm(pvalues, alpha: float = 0.05) -> list[dict]:
    """Holm's step-down correction of a family of two-sided tests.

    Per test (input order): ``p_adj`` (monotone adjusted p-value), ``rank`` (1 = smallest p) and ``level``:
    the confidence level 1 − α/(m − rank + 1) at which that test's interval excludes 0 exactly when its own
    step rejects.  ``reject`` also applies the step-down stop (a later step never rejects after one fails).
    None (a comparison that could not be made) counts in m as p = 1, so missing data never shrinks the family."""
    ps = [1.0 if p is None or not math.isfinite(p) else float(p) for p in pvalues]
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out, run = [None] * m, 0.0
    for rank, i in enumerate(order, 1):
        run = max(run, min(1.0, (m - rank + 1) * ps[i]))
        out[i] = {"p_adj": run, "rank": rank, "level": 1.0 - alpha / (m - rank + 1), "reject": run < alpha}
    return out


def _power_factor(n: int, power: float, alpha: float) -> float:
    return t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)


def seeds_for_paired(sd: float, delta: float, power: float = 0.8, alpha: float = 0.05, n_max: int = 10_000):
    """Seeds (pairs) a two-sided paired t-test needs to detect a mean difference ``delta`` (paired SD ``sd``):
    the smallest n with (t_{1−α/2,n−1} + t_{power,n−1})·sd/√n ≤ |delta| (the normal formula, t quantiles
    iterated because they depend on n).  None where even ``n_max`` does not suffice; 2 at least."""
    if sd <= 0:
        return 2
    z = _power_factor(10**6, power, alpha)  # the normal-approximation start, a lower bound
    n = max(2, math.ceil((z * sd / abs(delta)) ** 2))
    while n <= n_max:
        if _power_factor(n, power, alpha) * sd / math.sqrt(n) <= abs(delta):
            return n
        n += 1
    return None


def resolvable_effect(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The paired mean difference that ``n`` seeds detect with the given power (inverse of seeds_for_paired)."""
    return float("nan") if n < 2 else _power_factor(n, power, alpha) * sd / math.sqrt(n)


def bootstrap_paired(stat, *columns, level: float = 0.95, n_boot: int = 2000, seed: int = 0):
    """Percentile bootstrap of ``stat(*columns)`` resampling rows jointly (the rows are seeds, so every arm and
    budget keeps its pairing).  ``stat`` may return ±inf ("never reached"); NaN draws are dropped.
    Returns (estimate, lo, hi, n_dropped)."""
    cols = [np.asarray(c, dtype=float) for c in columns]
    n = len(cols[0])
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        boots.append(stat(*(c[idx] for c in cols)))
    b = np.asarray(boots, dtype=float)
    keep = b[~np.isnan(b)]
    est = float(stat(*cols))
    if len(keep) == 0:
        return est, float("nan"), float("nan"), n_boot
    q = np.quantile(keep, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return est, float(q[0]), float(q[1]), n_boot - len(keep)
