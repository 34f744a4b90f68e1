"""Does a metric differ between segments? One-way ANOVA and Kruskal-Wallis, with effect sizes.

ANOVA compares means and assumes roughly normal groups of similar variance; Kruskal-Wallis
compares ranks and suits skewed metrics such as spend. Both come with an effect size, since
with tens of thousands of users nearly every difference is "significant":

* eta squared (share of variance between segments) and omega squared (its less biased form);
* epsilon squared for Kruskal-Wallis, ``H / (n - 1)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from cluster.core.errors import InvalidArgument

__all__ = ["SegmentTest", "segment_significance"]


@dataclass(frozen=True)
class SegmentTest:
    groups: list[str]
    sizes: list[int]
    means: list[float]
    medians: list[float]
    anova_f: float
    anova_p: float
    eta_squared: float
    omega_squared: float
    kruskal_h: float
    kruskal_p: float
    epsilon_squared: float


def segment_significance(values: Mapping[str, Sequence[float]]) -> SegmentTest:
    """Test whether ``values`` (metric values per segment name) differ across segments.

    Raises:
        InvalidArgument: fewer than two segments with two or more finite values each.
    """
    groups = {name: np.asarray(v, float) for name, v in values.items()}
    if len(groups) < 2 or any(g.size < 2 for g in groups.values()):
        raise InvalidArgument("give at least two segments with at least two values each", field="values")
    if any(not np.all(np.isfinite(g)) for g in groups.values()):
        raise InvalidArgument("values must be finite numbers", field="values")
    arrays = list(groups.values())
    allv = np.concatenate(arrays)
    n, k = allv.size, len(arrays)
    with np.errstate(all="ignore"):
        grand = allv.mean()
        ssb = float(sum(g.size * (g.mean() - grand) ** 2 for g in arrays))
        ssw = float(sum(((g - g.mean()) ** 2).sum() for g in arrays))
    sst = ssb + ssw
    if not np.isfinite(sst):
        raise InvalidArgument("values are too large to compare (their variance overflows)", field="values")
    if ssw == 0:
        raise InvalidArgument("every segment is constant: the F statistic is undefined", field="values")
    msw = ssw / (n - k)
    f = (ssb / (k - 1)) / msw
    p = float(stats.f.sf(f, k - 1, n - k))
    h, kp = stats.kruskal(*arrays)
    return SegmentTest(
        groups=list(groups), sizes=[int(g.size) for g in arrays], means=[float(g.mean()) for g in arrays],
        medians=[float(np.median(g)) for g in arrays], anova_f=float(f), anova_p=p,
        eta_squared=ssb / sst, omega_squared=max(0.0, (ssb - (k - 1) * msw) / (sst + msw)),
        kruskal_h=float(h), kruskal_p=float(kp), epsilon_squared=float(h) / (n - 1),
    )
