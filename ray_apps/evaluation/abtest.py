"""A/B test statistics: fixed-horizon tests, power, a sequential test, CUPED, SRM, corrections.

Every function takes plain numbers or arrays and returns a frozen dataclass, so the CLI, the
ExperimentService and the report share one implementation. Invalid input raises
:class:`cluster.core.errors.InvalidArgument` naming the field.

* :func:`two_proportion_ztest`: conversion rates, pooled-variance z-test, Wald interval.
* :func:`welch_ttest`: means with unequal variances (revenue per user), Welch-Satterthwaite df.
* :func:`sample_size_proportions` / :func:`power_proportions`: Cohen's h with the normal
  approximation (what statsmodels' ``NormalIndPower`` solves).
* :func:`msprt_proportions`: the mixture sequential probability ratio test (Johari, Pekelis
  and Walsh, "Always valid inference", 2017). Its always-valid p-value may be looked at after
  every batch (every hour) without raising the false-positive rate above ``alpha``;
  the repeated z-test would.
* :func:`cuped`: variance reduction with a pre-period covariate (Deng et al., 2013).
* :func:`sample_ratio_mismatch`: chi-square test of the assignment counts against the
  planned split.
* :func:`adjust_pvalues`: Holm (family-wise) or Benjamini-Hochberg (false discovery rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from cluster.core.errors import InvalidArgument

__all__ = [
    "ProportionTest", "MeanTest", "SequentialResult", "CupedResult", "SrmResult",
    "two_proportion_ztest", "welch_ttest", "sample_size_proportions", "power_proportions",
    "msprt_proportions", "cuped", "sample_ratio_mismatch", "adjust_pvalues",
]

ALTERNATIVES = ("two-sided", "larger", "smaller")


def _check_probability(value: float, field: str) -> None:
    if not 0 < value < 1:
        raise InvalidArgument(f"{field} must be in (0, 1), got {value}", field=field)


#: The significance levels accepted: below 1e-10 the critical values leave the float range.
MIN_ALPHA, MAX_ALPHA = 1e-10, 0.5


def check_significance(alpha: float) -> None:
    if not MIN_ALPHA <= alpha <= MAX_ALPHA:
        raise InvalidArgument(f"alpha must be between {MIN_ALPHA} and {MAX_ALPHA}, got {alpha}", field="alpha")


def _check_counts(successes: int, trials: int, arm: str) -> None:
    if trials <= 0:
        raise InvalidArgument(f"{arm} trials must be positive, got {trials}", field=f"{arm}_trials")
    if not 0 <= successes <= trials:
        raise InvalidArgument(f"{arm} conversions must be between 0 and its trials ({trials}), got {successes}",
                              field=f"{arm}_conversions")


def _p_value(z: float, alternative: str, dist=stats.norm) -> float:
    if alternative == "two-sided":
        return float(2 * dist.sf(abs(z)))
    if alternative == "larger":
        return float(dist.sf(z))
    if alternative == "smaller":
        return float(dist.cdf(z))
    raise InvalidArgument(f"alternative must be one of {', '.join(ALTERNATIVES)}", field="alternative")


@dataclass(frozen=True)
class ProportionTest:
    control_rate: float
    variant_rate: float
    difference: float  # variant - control
    relative_lift: float | None  # difference / control_rate; None when the control rate is 0
    z: float
    p_value: float
    ci_low: float  # Wald interval of the difference at 1 - alpha
    ci_high: float
    significant: bool


def two_proportion_ztest(control_conversions: int, control_trials: int, variant_conversions: int,
                         variant_trials: int, *, alpha: float = 0.05,
                         alternative: str = "two-sided") -> ProportionTest:
    """Two-proportion z-test (pooled variance under H0; unpooled Wald interval).

    ``alternative`` ``larger`` tests variant > control.
    """
    _check_counts(control_conversions, control_trials, "control")
    _check_counts(variant_conversions, variant_trials, "variant")
    check_significance(alpha)
    p1, p2 = control_conversions / control_trials, variant_conversions / variant_trials
    pooled = (control_conversions + variant_conversions) / (control_trials + variant_trials)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / control_trials + 1 / variant_trials))
    diff = p2 - p1
    z = diff / se0 if se0 > 0 else 0.0
    p = _p_value(z, alternative)
    se = math.sqrt(p1 * (1 - p1) / control_trials + p2 * (1 - p2) / variant_trials)
    half = stats.norm.ppf(1 - alpha / 2) * se
    return ProportionTest(p1, p2, diff, diff / p1 if p1 > 0 else None, z, p, diff - half, diff + half, p < alpha)


@dataclass(frozen=True)
class MeanTest:
    control_mean: float
    variant_mean: float
    difference: float
    t: float
    df: float
    p_value: float
    ci_low: float
    ci_high: float
    significant: bool


def welch_ttest(control: Sequence[float], variant: Sequence[float], *, alpha: float = 0.05,
                alternative: str = "two-sided") -> MeanTest:
    """Welch's t-test of variant - control (no equal-variance assumption)."""
    a, b = np.asarray(control, dtype=float), np.asarray(variant, dtype=float)
    for arr, name in ((a, "control"), (b, "variant")):
        if arr.size < 2:
            raise InvalidArgument(f"{name} needs at least 2 observations, got {arr.size}", field=name)
        if not np.all(np.isfinite(arr)):
            raise InvalidArgument(f"{name} holds a value that is not a finite number", field=name)
    check_significance(alpha)
    with np.errstate(all="ignore"):
        va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
        diff = float(b.mean() - a.mean())
        df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    if not all(math.isfinite(x) for x in (va, vb, diff, df if va + vb > 0 else 0.0)):
        raise InvalidArgument("values are too large to compare (their variance overflows)", field="variant")
    se = math.sqrt(va + vb)
    if se == 0:
        raise InvalidArgument("both groups are constant: the t statistic is undefined", field="variant")
    t = diff / se
    p = _p_value(t, alternative, stats.t(df))
    half = stats.t.ppf(1 - alpha / 2, df) * se
    return MeanTest(float(a.mean()), float(b.mean()), diff, t, float(df), p, diff - half, diff + half, p < alpha)


def _cohens_h(p1: float, p2: float) -> float:
    return 2 * math.asin(math.sqrt(p2)) - 2 * math.asin(math.sqrt(p1))


def _check_rate(p: float, field: str) -> None:
    if not 0 < p < 1:
        raise InvalidArgument(f"{field} must be a rate in (0, 1), got {p}", field=field)


def sample_size_proportions(baseline_rate: float, variant_rate: float, *, alpha: float = 0.05, power: float = 0.8,
                            ratio: float = 1.0, alternative: str = "two-sided") -> tuple[int, int]:
    """Users per arm (control, variant) to detect ``baseline_rate`` -> ``variant_rate``.

    ``ratio`` is variant users per control user. Normal approximation on Cohen's h.
    """
    _check_rate(baseline_rate, "baseline_rate")
    _check_rate(variant_rate, "variant_rate")
    check_significance(alpha)
    _check_probability(power, "power")
    if baseline_rate == variant_rate:
        raise InvalidArgument("variant_rate must differ from baseline_rate", field="variant_rate")
    if not (0 < ratio < math.inf):
        raise InvalidArgument("ratio must be a positive number", field="ratio")
    if power <= alpha:
        raise InvalidArgument(f"power ({power}) must be above alpha ({alpha})", field="power")
    h = _directed_h(baseline_rate, variant_rate, alternative)
    a = alpha / 2 if alternative == "two-sided" else alpha
    z = stats.norm.ppf(1 - a) + stats.norm.ppf(power)
    n1 = (z / h) ** 2 * (1 + 1 / ratio)
    if not n1 * max(1.0, ratio) < MAX_USERS:
        raise InvalidArgument(f"detecting {baseline_rate} -> {variant_rate} needs more than {MAX_USERS:.0e} users "
                              "per arm", field="variant_rate")
    return math.ceil(n1), math.ceil(n1 * ratio)


#: The largest arm sample_size_proportions answers with (an int64 field over the API).
MAX_USERS = 1e12


def _directed_h(baseline_rate: float, variant_rate: float, alternative: str) -> float:
    """Cohen's h of the change, positive in the direction the alternative tests; a one-sided
    test of the other direction is refused (it could never detect the change)."""
    h = _cohens_h(baseline_rate, variant_rate)
    if alternative == "two-sided":
        return abs(h)
    if alternative not in ALTERNATIVES:
        raise InvalidArgument(f"alternative must be one of {', '.join(ALTERNATIVES)}", field="alternative")
    signed = h if alternative == "larger" else -h
    if signed <= 0:
        side = "above" if alternative == "larger" else "below"
        raise InvalidArgument(f"alternative {alternative!r} tests for variant_rate {side} baseline_rate",
                              field="variant_rate")
    return signed


def power_proportions(baseline_rate: float, variant_rate: float, control_trials: int, *, alpha: float = 0.05,
                      ratio: float = 1.0, alternative: str = "two-sided") -> float:
    """Probability of a significant result with ``control_trials`` control users."""
    _check_rate(baseline_rate, "baseline_rate")
    _check_rate(variant_rate, "variant_rate")
    check_significance(alpha)
    if control_trials <= 0:
        raise InvalidArgument("control_trials must be positive", field="control_trials")
    if not (0 < ratio < math.inf):
        raise InvalidArgument("ratio must be a positive number", field="ratio")
    h = _cohens_h(baseline_rate, variant_rate)
    shift = h * math.sqrt(control_trials / (1 + 1 / ratio))
    if alternative == "two-sided":
        crit = stats.norm.ppf(1 - alpha / 2)
        return float(stats.norm.sf(crit - abs(shift)) + stats.norm.cdf(-crit - abs(shift)))
    if alternative not in ALTERNATIVES:
        raise InvalidArgument(f"alternative must be one of {', '.join(ALTERNATIVES)}", field="alternative")
    # One-sided: the power against the change as it is (tiny when it goes the other way).
    return float(stats.norm.sf(stats.norm.ppf(1 - alpha) - (shift if alternative == "larger" else -shift)))


@dataclass(frozen=True)
class SequentialResult:
    """The mSPRT after each look: always-valid p-values and when (if) H0 was rejected."""

    p_values: list[float]  # non-increasing; valid at every look
    likelihood_ratios: list[float]
    rejected_at: int | None  # index of the first look with p <= alpha
    alpha: float
    mixture_sd: float
    difference: float  # variant - control at the last look
    ci_low: float  # always-valid confidence sequence of the difference at the last look
    ci_high: float


def msprt_proportions(control_conversions: Sequence[int], control_trials: Sequence[int],
                      variant_conversions: Sequence[int], variant_trials: Sequence[int], *,
                      alpha: float = 0.05, mixture_sd: float | None = None) -> SequentialResult:
    """Mixture SPRT on cumulative counts, one entry per look (e.g. per hour).

    The difference of rates ``d`` is approximately normal with variance ``v = p(1-p)(1/n1 +
    1/n2)``; with a normal mixture ``N(0, tau^2)`` over the true difference, the likelihood
    ratio is ``sqrt(v / (v + tau^2)) * exp(tau^2 d^2 / (2 v (v + tau^2)))``. The always-valid
    p-value is the running minimum of ``1 / LR``, so stopping at the first look with
    ``p <= alpha`` keeps the false-positive rate at or below ``alpha`` however often one looks.

    Args:
        mixture_sd: ``tau``, the scale of differences the test is most sensitive to; default a
            tenth of the pooled rate at the first look (a 10 % relative lift).
    """
    looks = len(control_trials)
    if looks == 0 or not (len(control_conversions) == len(variant_conversions) == len(variant_trials) == looks):
        raise InvalidArgument("give the same number (at least 1) of cumulative counts per look for each arm",
                              field="looks")
    check_significance(alpha)
    for i in range(looks):
        _check_counts(control_conversions[i], control_trials[i], "control")
        _check_counts(variant_conversions[i], variant_trials[i], "variant")
        if i and (control_trials[i] < control_trials[i - 1] or variant_trials[i] < variant_trials[i - 1]):
            raise InvalidArgument("counts must be cumulative (never decreasing from one look to the next)",
                                  field="looks")
    c1, n1 = np.asarray(control_conversions, float), np.asarray(control_trials, float)
    c2, n2 = np.asarray(variant_conversions, float), np.asarray(variant_trials, float)
    pooled = (c1 + c2) / (n1 + n2)
    if mixture_sd is None:
        # A tenth of the rate at the first look that saw a conversion (an early hour may have none).
        seen = pooled[pooled > 0]
        mixture_sd = max(0.1 * float(seen[0]), 1e-4) if seen.size else 1e-4
    if not (MIN_MIXTURE_SD <= mixture_sd <= 1):
        raise InvalidArgument(f"mixture_sd must be between {MIN_MIXTURE_SD} and 1 (a difference of rates)",
                              field="mixture_sd")
    tau2 = mixture_sd ** 2
    d = c2 / n2 - c1 / n1
    informative = pooled * (1 - pooled) > 0  # a look with no conversions (or only) says nothing
    v = np.where(informative, pooled * (1 - pooled), 1.0) * (1 / n1 + 1 / n2)
    log_lr = np.where(informative, 0.5 * np.log(v / (v + tau2)) + tau2 * d ** 2 / (2 * v * (v + tau2)), 0.0)
    lr = np.exp(np.minimum(log_lr, 700))
    p = np.minimum.accumulate(np.minimum(1.0, 1.0 / lr))
    hits = np.nonzero(p <= alpha)[0]
    # Confidence sequence: at each look, the differences the test would not reject; the running
    # intersection over looks is valid at every look, as the running minimum of p is.
    half = np.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + np.log((v + tau2) / v)))
    low = np.where(informative, d - half, -1.0)
    high = np.where(informative, d + half, 1.0)
    ci_low, ci_high = float(max(-1.0, np.max(low))), float(min(1.0, np.min(high)))
    return SequentialResult([float(x) for x in p], [float(x) for x in lr], int(hits[0]) if hits.size else None,
                            alpha, float(mixture_sd), float(d[-1]), ci_low, ci_high)


#: Smallest mixture_sd accepted (below it tau^2 underflows the likelihood ratio).
MIN_MIXTURE_SD = 1e-6


@dataclass(frozen=True)
class CupedResult:
    theta: float  # cov(Y, X) / var(X), pooled over both arms
    variance_reduction: float  # 1 - var(adjusted) / var(raw)
    control_adjusted: np.ndarray
    variant_adjusted: np.ndarray
    test: MeanTest  # Welch's test on the adjusted metric


def cuped(control: Sequence[float], variant: Sequence[float], control_pre: Sequence[float],
          variant_pre: Sequence[float], *, alpha: float = 0.05, alternative: str = "two-sided") -> CupedResult:
    """CUPED: ``Y - theta (X - mean X)`` with the pre-period metric ``X`` of the same users.

    The adjusted difference has the same expectation as the raw one (assignment is
    independent of the pre-period) and a variance smaller by the share of Y that X explains.
    """
    y1, y2 = np.asarray(control, float), np.asarray(variant, float)
    x1, x2 = np.asarray(control_pre, float), np.asarray(variant_pre, float)
    if y1.shape != x1.shape:
        raise InvalidArgument("control_pre must hold one value per control user", field="control_pre")
    if y2.shape != x2.shape:
        raise InvalidArgument("variant_pre must hold one value per variant user", field="variant_pre")
    for arr, name in ((x1, "control_pre"), (x2, "variant_pre")):
        if not np.all(np.isfinite(arr)):
            raise InvalidArgument(f"{name} holds a value that is not a finite number", field=name)
    y, x = np.concatenate([y1, y2]), np.concatenate([x1, x2])
    with np.errstate(all="ignore"):
        vx = x.var(ddof=1)
        theta = float(np.cov(y, x, ddof=1)[0, 1] / vx) if vx > 0 else 0.0
    if not (np.isfinite(vx) and math.isfinite(theta)):
        raise InvalidArgument("values are too large to compare (their variance overflows)", field="control_pre")
    if vx == 0:
        raise InvalidArgument("the pre-period metric is constant: it cannot explain anything", field="control_pre")
    mx = x.mean()
    a1, a2 = y1 - theta * (x1 - mx), y2 - theta * (x2 - mx)
    raw = np.concatenate([y1 - y1.mean(), y2 - y2.mean()]).var()
    adj = np.concatenate([a1 - a1.mean(), a2 - a2.mean()]).var()
    return CupedResult(theta, float(1 - adj / raw) if raw > 0 else 0.0, a1, a2,
                       welch_ttest(a1, a2, alpha=alpha, alternative=alternative))


@dataclass(frozen=True)
class SrmResult:
    observed: list[int]
    expected: list[float]
    chi2: float
    p_value: float
    mismatch: bool  # p < threshold: the split is broken, do not trust the test


def sample_ratio_mismatch(counts: Sequence[int], planned: Sequence[float] | None = None, *,
                          threshold: float = 0.001) -> SrmResult:
    """Chi-square goodness of fit of the users per arm against the planned split (equal by
    default). A small threshold (0.001) is customary: SRM checks run on every experiment."""
    obs = np.asarray(counts, float)
    if obs.size < 2 or not np.all(np.isfinite(obs)) or np.any(obs < 0) or obs.sum() == 0:
        raise InvalidArgument("counts needs two or more non-negative arm sizes, not all zero", field="counts")
    weights = np.ones_like(obs) if planned is None else np.asarray(planned, float)
    if weights.shape != obs.shape or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise InvalidArgument("planned must give one positive weight per arm", field="planned")
    shares = weights / weights.max()  # scaled first: a sum of huge weights would overflow
    expected = obs.sum() * shares / shares.sum()
    chi2 = float(((obs - expected) ** 2 / expected).sum())
    p = float(stats.chi2.sf(chi2, obs.size - 1))
    return SrmResult([int(c) for c in counts], [float(e) for e in expected], chi2, p, p < threshold)


def adjust_pvalues(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """Adjusted p-values: ``holm`` (controls the family-wise error) or ``bh``
    (Benjamini-Hochberg, controls the false discovery rate)."""
    p = np.asarray(p_values, float)
    if p.size == 0 or np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise InvalidArgument("p_values must be one or more numbers in [0, 1]", field="p_values")
    m = p.size
    order = np.argsort(p)
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "bh":
        adj = np.minimum.accumulate((m / np.arange(m, 0, -1) * ranked[::-1]))[::-1]
    else:
        raise InvalidArgument("method must be holm or bh", field="method")
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return [float(x) for x in out]
