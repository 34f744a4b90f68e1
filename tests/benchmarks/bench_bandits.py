"""Channel choice: the served Thompson sampler against UCB1 and a fixed equal split.

Simulates ``--contacts`` contacts on three channels (conversion rates, revenue per conversion
and cost per contact given below, SMS / app push / e-mail in the spirit of the article), for
``--seeds`` seeds with common random numbers, and prints per policy: expected-conversion
regret, conversions, net revenue, the share sent to the best channel and the cost of one
decision. The fixed split is the baseline of the ratios. Then the sequential test: A/A
experiments looked at every hour for a week, false positives of the mSPRT against the
z-test repeated at every look.

    .venv/bin/python tests/benchmarks/bench_bandits.py --contacts 20000 --seeds 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

ARMS = [  # channel, conversion rate, revenue per conversion (CNY), cost per contact (CNY)
    ("sms", 0.035, 150.0, 0.05),
    ("push", 0.045, 150.0, 0.01),
    ("email", 0.020, 150.0, 0.002),
]


def bandits(contacts: int, seeds: int) -> None:
    from ray_apps.evaluation.bandit_sim import POLICIES, Arm, simulate

    arms = [Arm(*a) for a in ARMS]
    rows: dict[str, list] = {p: [] for p in POLICIES}
    for seed in range(seeds):
        for policy in POLICIES:
            started = time.perf_counter()
            (r,) = simulate(arms, contacts=contacts, policies=[policy], seed=seed)
            rows[policy].append((r, (time.perf_counter() - started) / contacts * 1e6))
    print(f"\n== channel policies: {contacts:,} contacts x {seeds} seeds "
          f"(rates {', '.join(f'{a.channel} {a.rate:.3f}' for a in arms)}) ==")
    print(f"{'policy':<10}{'regret':>10}{'± sd':>8}{'conversions':>13}{'net revenue':>13}"
          f"{'to best':>9}{'µs/contact':>12}{'regret / fixed':>16}")
    base = np.mean([r.regret for r, _ in rows["fixed"]])
    for policy in POLICIES:
        regret = np.array([r.regret for r, _ in rows[policy]])
        conv = np.mean([r.conversions for r, _ in rows[policy]])
        revenue = np.mean([r.revenue for r, _ in rows[policy]])
        best = np.mean([r.share["push"] for r, _ in rows[policy]])
        us = np.mean([t for _, t in rows[policy]])
        print(f"{policy:<10}{regret.mean():>10.1f}{regret.std():>8.1f}{conv:>13.0f}{revenue:>13,.0f}"
              f"{best:>9.1%}{us:>12.0f}{regret.mean() / base:>16.2f}")


def sequential(runs: int, looks: int, per_look: int) -> None:
    from scipy import stats

    from ray_apps.evaluation.abtest import msprt_proportions

    rng = np.random.default_rng(0)
    c = rng.binomial(per_look, 0.05, (runs, looks)).cumsum(axis=1)
    v = rng.binomial(per_look, 0.05, (runs, looks)).cumsum(axis=1)
    n = per_look * np.arange(1, looks + 1)
    started = time.perf_counter()
    seq = np.mean([msprt_proportions(c[r], n, v[r], n).rejected_at is not None for r in range(runs)])
    took = (time.perf_counter() - started) / runs * 1e3
    pooled = (c + v) / (2 * n)
    z = (v - c) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    naive = np.mean(np.any(np.abs(z) > stats.norm.ppf(0.975), axis=1))
    once = np.mean(np.abs(z[:, -1]) > stats.norm.ppf(0.975))
    print(f"\n== sequential test under the null: {runs:,} A/A runs, {looks} hourly looks of "
          f"{per_look} users per arm, nominal alpha 0.05 ==")
    print(f"z-test once at the end        {once:.4f}")
    print(f"z-test at every look          {naive:.4f}   (x{naive / 0.05:.1f} the nominal rate)")
    print(f"mSPRT at every look           {seq:.4f}   ({took:.2f} ms per experiment of {looks} looks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5_000, help="A/A experiments for the sequential test")
    args = parser.parse_args()
    bandits(args.contacts, args.seeds)
    sequential(args.runs, 168, 200)


if __name__ == "__main__":
    main()
