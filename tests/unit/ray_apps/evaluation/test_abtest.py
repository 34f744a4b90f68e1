"""A/B statistics against statsmodels / scipy and published worked examples; the sequential
test's false-positive rate under the null, measured by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cluster.core.errors import InvalidArgument
from ray_apps.evaluation.abtest import (
    adjust_pvalues,
    cuped,
    msprt_proportions,
    power_proportions,
    sample_ratio_mismatch,
    sample_size_proportions,
    two_proportion_ztest,
    welch_ttest,
)
from ray_apps.evaluation.segments import segment_significance


@pytest.mark.parametrize(("c", "n1", "v", "n2", "alt"), [
    (200, 10_000, 250, 10_000, "two-sided"), (31, 400, 52, 410, "larger"), (90, 1_000, 70, 1_200, "smaller")])
def test_two_proportion_ztest_matches_statsmodels(c, n1, v, n2, alt):
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    got = two_proportion_ztest(c, n1, v, n2, alternative=alt)
    z, p = proportions_ztest([v, c], [n2, n1], alternative=alt)
    assert got.z == pytest.approx(z, rel=1e-9)
    assert got.p_value == pytest.approx(p, rel=1e-9)
    low, high = confint_proportions_2indep(v, n2, c, n1, method="wald", compare="diff")
    assert (got.ci_low, got.ci_high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert got.relative_lift == pytest.approx((v / n2 - c / n1) / (c / n1))


def test_two_proportion_ztest_worked_example():
    """A textbook example (Agresti & Franklin): 104 of 11,037 vs 189 of 11,034 (aspirin vs
    placebo heart attacks): z = -5.0, p < 1e-6."""
    got = two_proportion_ztest(189, 11_034, 104, 11_037)
    assert got.z == pytest.approx(-5.0, abs=0.02)
    assert got.p_value < 1e-6 and got.significant


def test_zero_control_rate_has_no_relative_lift_and_bad_counts_name_the_field():
    assert two_proportion_ztest(0, 100, 3, 100).relative_lift is None
    with pytest.raises(InvalidArgument) as err:
        two_proportion_ztest(5, 0, 1, 10)
    assert err.value.field == "control_trials"
    with pytest.raises(InvalidArgument) as err:
        two_proportion_ztest(5, 10, 11, 10)
    assert err.value.field == "variant_conversions"


@pytest.mark.parametrize("alt", ["two-sided", "larger"])
def test_welch_matches_scipy(alt):
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(3, 1, 300), rng.lognormal(3.1, 1.3, 250)
    got = welch_ttest(a, b, alternative=alt)
    ref = stats.ttest_ind(b, a, equal_var=False, alternative={"two-sided": "two-sided", "larger": "greater"}[alt])
    assert got.t == pytest.approx(ref.statistic, rel=1e-9)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert got.df == pytest.approx(ref.df, rel=1e-9)
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert (got.ci_low, got.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


@pytest.mark.parametrize(("p1", "p2", "ratio", "alt"), [
    (0.10, 0.12, 1.0, "two-sided"), (0.02, 0.025, 2.0, "two-sided"), (0.30, 0.33, 1.0, "larger")])
def test_sample_size_and_power_match_statsmodels(p1, p2, ratio, alt):
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    es = abs(proportion_effectsize(p2, p1))
    sm_alt = "two-sided" if alt == "two-sided" else "larger"
    ref = NormalIndPower().solve_power(effect_size=es, alpha=0.05, power=0.8, ratio=ratio, alternative=sm_alt)
    n1, n2 = sample_size_proportions(p1, p2, ratio=ratio, alternative=alt)
    assert n1 == int(np.ceil(ref)) and n2 == int(np.ceil(ref * ratio))
    assert power_proportions(p1, p2, n1, ratio=ratio, alternative=alt) == pytest.approx(
        NormalIndPower().power(es, n1, 0.05, ratio=ratio, alternative=sm_alt), rel=1e-6)
    assert power_proportions(p1, p2, n1, ratio=ratio, alternative=alt) >= 0.8


def test_power_calculator_refuses_nonsense():
    with pytest.raises(InvalidArgument) as err:
        sample_size_proportions(0.1, 0.1)
    assert err.value.field == "variant_rate"
    for power in (1.2, 0.04):  # not a probability; not above alpha
        with pytest.raises(InvalidArgument) as err:
            sample_size_proportions(0.1, 0.2, power=power)
        assert err.value.field == "power"
    with pytest.raises(InvalidArgument) as err:  # a one-sided test of the other direction
        sample_size_proportions(0.12, 0.10, alternative="larger")
    assert err.value.field == "variant_rate"
    with pytest.raises(InvalidArgument) as err:  # undetectable: more users than an int64 API field takes
        sample_size_proportions(0.5, 0.5 + 1e-12)
    assert err.value.field == "variant_rate"


def test_one_sided_power_against_a_change_the_other_way_is_tiny_as_in_statsmodels():
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    got = power_proportions(0.12, 0.10, 3_000, alternative="larger")
    ref = NormalIndPower().power(proportion_effectsize(0.10, 0.12), 3_000, 0.05, ratio=1.0, alternative="larger")
    assert got == pytest.approx(ref, rel=1e-6) and got < 0.001


def _null_runs(runs: int, looks: int, per_look: int, rate: float, seed: int):
    rng = np.random.default_rng(seed)
    c = rng.binomial(per_look, rate, (runs, looks)).cumsum(axis=1)
    v = rng.binomial(per_look, rate, (runs, looks)).cumsum(axis=1)
    n = per_look * np.arange(1, looks + 1)
    return c, v, n


def test_msprt_false_positive_rate_under_the_null_stays_below_alpha_with_hourly_looks():
    """2,000 A/A experiments, 168 looks each (hourly for a week): the mSPRT rejects in at most
    alpha of them (plus Monte Carlo error); the z-test checked at every look does not."""
    runs, looks, alpha = 2_000, 168, 0.05
    c, v, n = _null_runs(runs, looks, 200, 0.05, seed=11)
    seq = sum(msprt_proportions(c[r], n, v[r], n, alpha=alpha).rejected_at is not None for r in range(runs))
    # The repeated z-test, vectorised: reject if any look has |z| > 1.96.
    pooled = (c + v) / (2 * n)
    z = (v - c) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    naive = int(np.any(np.abs(z) > stats.norm.ppf(1 - alpha / 2), axis=1).sum())
    mc = 3 * np.sqrt(alpha * (1 - alpha) / runs)
    print(f"\nfalse positives over {runs} A/A runs, {looks} looks: mSPRT {seq / runs:.4f}, "
          f"repeated z-test {naive / runs:.4f} (nominal {alpha})")
    assert seq / runs <= alpha + mc
    assert naive / runs > 2 * alpha


def test_msprt_detects_a_real_lift_and_its_p_values_never_rise():
    rng = np.random.default_rng(5)
    looks, per = 168, 200
    c = rng.binomial(per, 0.05, looks).cumsum()
    v = rng.binomial(per, 0.06, looks).cumsum()
    n = per * np.arange(1, looks + 1)
    got = msprt_proportions(c, n, v, n)
    assert got.rejected_at is not None
    assert all(a >= b for a, b in zip(got.p_values, got.p_values[1:]))
    # The confidence sequence (running intersection over looks) excludes 0 once H0 is rejected.
    assert got.ci_low > 0
    with pytest.raises(InvalidArgument) as err:
        msprt_proportions([5, 4], [100, 90], [5, 6], [100, 200])
    assert err.value.field == "looks"
    for bad in (1e-170, 1e200):
        with pytest.raises(InvalidArgument) as err:
            msprt_proportions(c, n, v, n, mixture_sd=bad)
        assert err.value.field == "mixture_sd"


def test_msprt_defaults_do_not_depend_on_an_empty_first_look():
    """A first hour without conversions must not tune the test to a tiny effect: a large
    lift (5 % -> 6 % on 100,000 users per arm, z about 10) is detected either way."""
    looks = np.arange(1, 101)
    n = 1_000 * looks
    c, v = (0.05 * n).astype(int), (0.06 * n).astype(int)
    c[0] = v[0] = 0
    got = msprt_proportions(c, n, v, n)
    assert got.rejected_at is not None and got.rejected_at < 50
    assert got.mixture_sd == pytest.approx(0.1 * (c[1] + v[1]) / (2 * n[1]))


def test_msprt_confidence_sequence_covers_the_true_difference():
    """Under a true difference of +1 point, the final running-intersection interval holds it in
    at least 1 - alpha of the runs (it is valid at every look, so at the last one too)."""
    rng = np.random.default_rng(21)
    runs, looks, per = 400, 100, 300
    covered = 0
    for _ in range(runs):
        c = rng.binomial(per, 0.05, looks).cumsum()
        v = rng.binomial(per, 0.06, looks).cumsum()
        n = per * np.arange(1, looks + 1)
        got = msprt_proportions(c, n, v, n)
        covered += got.ci_low <= 0.01 <= got.ci_high
    assert covered / runs >= 0.95 - 3 * np.sqrt(0.05 * 0.95 / runs)


def test_cuped_keeps_the_effect_and_removes_the_explained_variance():
    rng = np.random.default_rng(9)
    estimates, raw_estimates, reductions = [], [], []
    rho = 0.7
    for _ in range(200):
        pre = rng.normal(100, 20, 4_000)
        noise = rng.normal(0, 20 * np.sqrt(1 - rho ** 2) / rho, 4_000)
        post = pre + noise
        post[2_000:] += 2.0  # the variant's true effect
        got = cuped(post[:2_000], post[2_000:], pre[:2_000], pre[2_000:])
        estimates.append(got.test.difference)
        raw_estimates.append(post[2_000:].mean() - post[:2_000].mean())
        reductions.append(got.variance_reduction)
    assert np.mean(estimates) == pytest.approx(2.0, abs=0.1)  # unbiased
    assert np.mean(reductions) == pytest.approx(rho ** 2, abs=0.03)
    # The estimate's spread shrinks to sqrt(1 - rho^2) = 0.71 of the raw difference's.
    assert np.std(estimates) / np.std(raw_estimates) == pytest.approx(np.sqrt(1 - rho ** 2), abs=0.1)
    with pytest.raises(InvalidArgument) as err:
        cuped([1, 2, 3], [1, 2, 3], [1, 2], [1, 2, 3])
    assert err.value.field == "control_pre"


def test_sample_ratio_mismatch_matches_scipy_and_flags_a_broken_split():
    ok = sample_ratio_mismatch([50_120, 49_880])
    ref = stats.chisquare([50_120, 49_880])
    assert (ok.chi2, ok.p_value) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    assert not ok.mismatch
    bad = sample_ratio_mismatch([10_000, 10_600, 10_050], planned=[1, 1, 1])
    assert bad.mismatch and bad.p_value < 0.001
    weighted = sample_ratio_mismatch([9_000, 1_000], planned=[0.9, 0.1])
    assert weighted.chi2 == pytest.approx(0.0) and not weighted.mismatch


@pytest.mark.parametrize(("method", "sm"), [("holm", "holm"), ("bh", "fdr_bh")])
def test_pvalue_adjustment_matches_statsmodels(method, sm):
    from statsmodels.stats.multitest import multipletests

    p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04]
    assert adjust_pvalues(p, method) == pytest.approx(list(multipletests(p, method=sm)[1]))


def test_segment_anova_on_mcdonalds_mussel_data():
    """The worked example of McDonald's Handbook of Biological Statistics (scipy's f_oneway
    docs): F = 7.1210, p = 0.0002812."""
    got = segment_significance({
        "tillamook": [0.0571, 0.0813, 0.0831, 0.0976, 0.0817, 0.0859, 0.0735, 0.0659, 0.0923, 0.0836],
        "newport": [0.0873, 0.0662, 0.0672, 0.0819, 0.0749, 0.0649, 0.0835, 0.0725],
        "petersburg": [0.0974, 0.1352, 0.0817, 0.1016, 0.0968, 0.1064, 0.1050],
        "magadan": [0.1033, 0.0915, 0.0781, 0.0685, 0.0677, 0.0697, 0.0764, 0.0689],
        "tvarminne": [0.0703, 0.1026, 0.0956, 0.0973, 0.1039, 0.1045],
    })
    assert got.anova_f == pytest.approx(7.1210, abs=1e-4)
    assert got.anova_p == pytest.approx(0.0002812, rel=1e-3)
    ref = stats.kruskal(*[np.array(v) for v in [
        [0.0571, 0.0813, 0.0831, 0.0976, 0.0817, 0.0859, 0.0735, 0.0659, 0.0923, 0.0836],
        [0.0873, 0.0662, 0.0672, 0.0819, 0.0749, 0.0649, 0.0835, 0.0725],
        [0.0974, 0.1352, 0.0817, 0.1016, 0.0968, 0.1064, 0.1050],
        [0.1033, 0.0915, 0.0781, 0.0685, 0.0677, 0.0697, 0.0764, 0.0689],
        [0.0703, 0.1026, 0.0956, 0.0973, 0.1039, 0.1045]]])
    assert (got.kruskal_h, got.kruskal_p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    assert 0 < got.omega_squared < got.eta_squared < 1
    assert got.epsilon_squared == pytest.approx(ref.statistic / (sum(got.sizes) - 1))


def test_segment_effect_sizes_match_statsmodels_anova():
    import pandas as pd
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    rng = np.random.default_rng(2)
    groups = {f"s{i}": rng.normal(10 + i, 3, 50 + 10 * i) for i in range(4)}
    got = segment_significance(groups)
    frame = pd.DataFrame({"y": np.concatenate(list(groups.values())),
                          "g": np.repeat(list(groups), [len(v) for v in groups.values()])})
    table = anova_lm(ols("y ~ C(g)", frame).fit())
    ssb, ssw = table["sum_sq"].iloc[0], table["sum_sq"].iloc[1]
    assert got.anova_f == pytest.approx(table["F"].iloc[0])
    assert got.eta_squared == pytest.approx(ssb / (ssb + ssw))
    with pytest.raises(InvalidArgument):
        segment_significance({"only": [1.0, 2.0]})
