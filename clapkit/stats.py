"""Exact statistics for the claims clapkit's reports make: "above chance", "above the audio-blind answer", "A beats B
over seeds".

* ``binomial_tail``: P(X >= k) for X ~ Binomial(n, p), summed exactly (term by term in log space), the one-sided
  p-value of k successes in n trials against a rate p0.  A fractional k (a tie among m top classes earns 1/m of a
  success, ``clapkit.metrics``) uses the tail's continuous extension, the regularized incomplete beta function
  I_p(k, n - k + 1), which equals the sum at every integer k and lies between the tails at floor(k) and ceil(k).
* ``wilson_interval``: the Wilson score interval of a proportion (good coverage at small n and near 0 or 1, where
  the normal "p +- z se" interval leaves [0, 1] or has zero width).
* ``student_t_cdf`` / ``student_t_quantile`` and ``paired_t_test``: the paired t-test of two rows of the ablation
  grid over their common seeds, with its degrees of freedom, two-sided p-value and the t interval of the mean
  difference.  The t distribution's CDF is the regularized incomplete beta function, evaluated by its continued
  fraction (modified Lentz; Numerical Recipes 6.4), so no scipy is needed at run time (scipy is a test dependency
  only; the tests compare against it and against closed forms).

Significance levels are stated where they are used: ``THREE_SIGMA`` (one-sided P(Z > 3) = 0.00135) for accuracies
against chance, in the evaluate stage and for the pretraining's per-task claims (``exact_task_claims``); 0.05
two-sided for the grid's paired t-tests (``clapkit.grid_summary``), where 2-4 seeds could never reach 3 sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

__all__ = ["THREE_SIGMA", "binomial_tail", "wilson_interval", "regularized_incomplete_beta", "student_t_cdf",
           "student_t_quantile", "PairedTTest", "paired_t_test", "accuracy_claim", "exact_task_claims",
           "significant_digits"]  # fmt: skip

# One-sided P(Z > 3) for a standard normal Z: 0.0013499.  "3 standard errors above" in the normal approximation
# the reports used before; as the alpha of an exact test it keeps that meaning without the approximation.
THREE_SIGMA = 1.0 - NormalDist().cdf(3.0)


def significant_digits(x: float | None, digits: int = 3) -> float | None:
    """``x`` rounded to ``digits`` significant digits (p-values span hundreds of decades: rounding to a fixed number
    of decimals would turn 1e-40 into 0)."""
    if x is None or x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits - 1}e}")


# --- the incomplete beta function ----------------------------------------------------------------------------------

def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes ``betacf``, modified Lentz); converges quickly for
    x < (a + 1) / (a + b + 2), in about sqrt(max(a, b)) terms."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"incomplete beta needs a, b > 0, got {a}, {b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


# --- proportions ---------------------------------------------------------------------------------------------------

def binomial_tail(successes: float, n: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(n, p): the one-sided exact p-value of ``successes`` in ``n`` against p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {p}")
    if successes <= 0:
        return 1.0
    if successes > n:
        return 0.0
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    if successes != int(successes):  # fractional successes (shared tie credit): the tail's continuous extension
        return regularized_incomplete_beta(successes, n - successes + 1.0, p)
    k = int(successes)
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    logs = [log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the proportion successes / n (two-sided, ``confidence``)."""
    if n <= 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    phat, z2 = successes / n, z * z
    denom = 1.0 + z2 / n
    centre = (phat + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(max(phat * (1.0 - phat), 0.0) / n + z2 / (4.0 * n * n)) / denom
    # at 0 (or n) successes the bound is exactly 0 (or 1); the formula leaves a rounding residue there
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return (lo, hi)


def accuracy_claim(successes: float, n: int, chance: float, alpha: float = THREE_SIGMA) -> dict[str, object]:
    """An accuracy's Wilson 95% interval and its exact one-sided binomial test against ``chance``:
    ``{"ci95": [low, high], "p_value": P(X >= successes | chance), "significant": p_value < alpha}``."""
    lo, hi = wilson_interval(successes, n)
    p = binomial_tail(successes, n, chance)
    return {"ci95": [round(lo, 4), round(hi, 4)], "p_value": significant_digits(p), "significant": bool(p < alpha)}


def exact_task_claims(successes: int, n: int, chance: float, audio_blind: float,
                      alpha: float = THREE_SIGMA) -> dict[str, object]:  # fmt: skip
    """The pretraining's per-task claims (``metrics/pretrain.json``) by exact binomial tests instead of the normal
    approximation (``clapkit.pretrain_tasks.evaluate_generation``): ``successes`` correct answers of ``n``.

    * ``significant``: above uniform chance (1 / classes): P(X >= successes | n, chance) < ``alpha``.
    * ``above_audio_blind``: above what a model that ignores the audio can score.  Its null rate is the better of
      the two audio-blind answers, the task's commonest training answer (``audio_blind``, its accuracy on these
      clips) and a uniform guess (``chance``): when the commonest training answer never occurs among the test
      clips (``audio_blind`` = 0), a blind model still guesses right 1 / classes of the time.

    Returns those two flags (the keys ``evaluate_generation`` writes, so they replace its approximate ones) with the
    Wilson 95% interval of the accuracy and both p-values.
    """
    null_blind = max(audio_blind, chance)
    p_chance = binomial_tail(successes, n, chance)
    p_blind = binomial_tail(successes, n, null_blind)
    lo, hi = wilson_interval(successes, n)
    return {"significant": bool(p_chance < alpha), "above_audio_blind": bool(p_blind < alpha),
            "ci95": [round(lo, 4), round(hi, 4)], "p_value_chance": significant_digits(p_chance),
            "p_value_audio_blind": significant_digits(p_blind), "audio_blind_null_rate": round(null_blind, 4),
            "alpha": significant_digits(alpha)}


# --- the t distribution and the paired t-test ----------------------------------------------------------------------

def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom: 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t^2)
    for t > 0 (and symmetrically below 0)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(q: float, df: float) -> float:
    """The t with P(T <= t) = q (bisection on ``student_t_cdf`` to machine precision)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    lo, hi = -1.0, 1.0
    while student_t_cdf(lo, df) > q:
        lo *= 2.0
    while student_t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class PairedTTest:
    """Paired t-test of the differences a_i - b_i (two-sided)."""

    pairs: int
    mean_difference: float
    std_difference: float  # sample standard deviation (n - 1) of the differences
    t: float
    df: int
    p_value: float  # two-sided: P(|T| >= |t|)
    ci95: tuple[float, float]  # t interval of the mean difference

    def as_dict(self) -> dict[str, object]:
        return {"test": "paired t-test (two-sided)", "pairs": self.pairs, "mean_difference": self.mean_difference,
                "std_difference": self.std_difference, "t": self.t, "df": self.df, "p_value": self.p_value,
                "ci95": list(self.ci95)}  # fmt: skip


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTTest:
    """The paired t-test of ``a`` against ``b`` (same length, at least 2 pairs).  Equal differences (no spread) give
    t = +-inf and p = 0 when they are not zero, t = 0 and p = 1 when they are."""
    if len(a) != len(b):
        raise ValueError(f"paired samples of different lengths ({len(a)} and {len(b)})")
    n = len(a)
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {n}")
    diffs = [x - y for x, y in zip(a, b)]
    mean = math.fsum(diffs) / n
    std = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    df = n - 1
    if std == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return PairedTTest(n, mean, 0.0, t, df, 1.0 if mean == 0.0 else 0.0, (mean, mean))
    se = std / math.sqrt(n)
    t = mean / se
    p = min(1.0, 2.0 * student_t_cdf(-abs(t), df))
    half = student_t_quantile(0.975, df) * se
    return PairedTTest(n, mean, std, t, df, p, (mean - half, mean + half))
