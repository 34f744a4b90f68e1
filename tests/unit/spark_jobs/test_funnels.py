"""Conversion funnels: the per-user scan, the Spark table, the statistics and FunnelService.

The Spark results are checked against :func:`_reference`, an independent implementation written
the straightforward way: for every first-step event, match each later step greedily to the
earliest unused event that is not before the previous step and within the window.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from cluster.core.errors import FailedPrecondition, InvalidArgument
from protos.marketing.v1 import funnel_pb2 as pb
from ray_apps.funnels import (
    FunnelTable,
    funnel_stats,
    get_funnel,
    http_query_to_request,
    load_funnel_table,
)
from spark_jobs.funnels import (
    FUNNEL_COLUMNS,
    ORGANIC,
    check_steps,
    deepest_chain,
    funnel_table,
)

DEFAULT = ["view", "click", "cart", "purchase"]
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
HOUR = 3600


def _us(dt: datetime) -> int:
    return int((dt - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def _reference(events: list[tuple[int, str, str, str]], steps: list[str], window: int):
    """``(steps_reached, step_times, device)`` of one user, the slow obvious way.

    ``events`` are ``(ts, event_id, action, device)``. Of the chains reaching the deepest step,
    the one with the latest first event; of several first events in the same instant, the
    smallest event id.
    """
    evs = sorted(events)
    times = [e[0] for e in evs]
    best = (0, None, (), None)
    for i, (t0, _eid, action, device) in enumerate(evs):
        if action != steps[0]:
            continue
        used, chain = {i}, [t0]
        for step in steps[1:]:
            pick = None
            # Events in the same instant as the previous step may follow it, whatever their order.
            for j in range(bisect.bisect_left(times, chain[-1]), len(evs)):
                if evs[j][0] - t0 > window:
                    break
                if j not in used and evs[j][2] == step:
                    pick = j
                    break
            if pick is None:
                break
            used.add(pick)
            chain.append(evs[pick][0])
        if (len(chain), t0) > best[:2]:
            best = (len(chain), t0, tuple(chain), device)
    return best[0], best[2], best[3]


# -- the scan on hand-made events -------------------------------------------------------------

def _scan(rows, steps=DEFAULT, window=24 * HOUR):
    """deepest_chain on ``(second, action)`` rows (event ids in row order, device d<row>)."""
    rows = [(t, f"e{i:03d}", a, f"d{i}") for i, (t, a) in enumerate(rows)]
    rows.sort()
    return deepest_chain([r[0] for r in rows], [r[2] for r in rows], [r[3] for r in rows], steps, window)


CASES = {
    # name: (events as (second, action), steps, window s, expected (reached, step seconds, device))
    "complete": ([(0, "view"), (10, "click"), (20, "cart"), (30, "purchase")], DEFAULT, 100,
                 (4, (0, 10, 20, 30), "d0")),
    "tie_in_order": ([(0, "view"), (0, "click"), (5, "cart")], DEFAULT, 100, (3, (0, 0, 5), "d0")),
    # The click has the smaller event id but the same second as the view: still after it (<=).
    "tie_reversed": ([(0, "click"), (0, "view")], DEFAULT, 100, (2, (0, 0), "d1")),
    "window_edge_inside": ([(0, "view"), (100, "click")], DEFAULT, 100, (2, (0, 100), "d0")),
    "window_edge_outside": ([(0, "view"), (101, "click")], DEFAULT, 100, (1, (0,), "d0")),
    "out_of_order": ([(0, "click"), (1, "view"), (2, "cart"), (3, "purchase")], DEFAULT, 100, (1, (1,), "d1")),
    "step_missing": ([(0, "view"), (1, "click"), (3, "purchase")], DEFAULT, 100, (2, (0, 1), "d0")),
    # Repeated views: the latest view that still reaches the click starts the chain.
    "repeated_first_step": ([(0, "view"), (50, "view"), (120, "click")], DEFAULT, 100, (2, (50, 120), "d1")),
    # A deeper chain later beats a shallower one earlier; equal depth: the later start.
    "deeper_later": ([(0, "view"), (5, "click"), (1000, "view"), (1001, "click"), (1002, "cart")], DEFAULT, 100,
                     (3, (1000, 1001, 1002), "d2")),
    "latest_start": ([(0, "view"), (5, "click"), (1000, "view"), (1001, "click")], DEFAULT, 100,
                     (2, (1000, 1001), "d2")),
    # Same start, two clicks: the earliest click is kept.
    "earliest_steps": ([(0, "view"), (5, "click"), (7, "click"), (9, "cart")], DEFAULT, 100, (3, (0, 5, 9), "d0")),
    "no_first_step": ([(0, "click"), (1, "cart")], DEFAULT, 100, (0, (), None)),
    # One event never fills two steps of a repeated action ...
    "repeated_action_one_event": ([(0, "view"), (5, "purchase")], ["view", "view", "purchase"], 100,
                                  (1, (0,), "d0")),
    # ... but two events in the same second fill both.
    "repeated_action_tie": ([(0, "view"), (0, "view"), (5, "purchase")], ["view", "view", "purchase"], 100,
                            (3, (0, 0, 5), "d0")),
    "repeated_action_mixed_tie": ([(0, "click"), (0, "view"), (0, "view")], ["view", "click", "view"], 100,
                                  (3, (0, 0, 0), "d1")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_scan_and_the_reference_give_the_expected_chain(name):
    rows, steps, window, expected = CASES[name]
    assert _scan(rows, steps, window) == expected
    ref = _reference([(t, f"e{i:03d}", a, f"d{i}") for i, (t, a) in enumerate(rows)], steps, window)
    assert ref == expected


def test_the_scan_equals_the_reference_on_random_event_lists():
    # Small alphabets and many ties exercise the instant-grouping; 500 users take < 1 s.
    rng = np.random.default_rng(3)
    actions = ["view", "click", "cart", "purchase"]
    for _ in range(500):
        n = int(rng.integers(1, 14))
        rows = [(int(rng.integers(0, 12)), str(rng.choice(actions))) for _ in range(n)]
        steps = [str(a) for a in rng.choice(actions, size=int(rng.integers(2, 5)))]
        window = int(rng.integers(0, 8))
        events = [(t, f"e{i:03d}", a, f"d{i}") for i, (t, a) in enumerate(rows)]
        assert _scan(rows, steps, window) == _reference(events, steps, window), (rows, steps, window)


def test_steps_are_validated_naming_steps():
    for bad in (["view"], ["view", "buy"], "view"):
        with pytest.raises(InvalidArgument) as err:
            check_steps(bad)
        assert err.value.field == "steps"


# -- the Spark table on hand-made events --------------------------------------------------------

@pytest.fixture(scope="module")
def small(spark):
    s = timedelta(seconds=1)
    events = [
        # event_id, user, ts, action, device
        ("a1", "ua", T0, "view", "ios"), ("a2", "ua", T0, "click", "pc"), ("a3", "ua", T0 + 10 * s, "cart", None),
        ("a4", "ua", T0 + 20 * s, "purchase", "ios"),
        ("b1", "ub", T0, "view", "android"), ("b2", "ub", T0 + 24 * HOUR * s, "click", "android"),  # edge: inside
        ("c1", "uc", T0, "view", None), ("c2", "uc", T0 + (24 * HOUR + 1) * s, "click", "pc"),  # just outside
        ("d1", "ud", T0, "click", "pc"), ("d2", "ud", T0 + s, "cart", "pc"),  # no view: no row
        ("e1", "ue", T0 - 2 * HOUR * s, "view", "pc"), ("e2", "ue", T0, "favorite", "pc"),
    ]
    impressions = [
        # id, user, ts, channel, clicked
        ("i1", "ua", T0 - timedelta(days=1), "sms", True),
        ("i2", "ua", T0 - timedelta(hours=1), "push", False),   # not a click
        ("i3", "ub", T0 - timedelta(days=7), "email", True),     # exactly 7 days before: outside
        ("i4", "uc", T0 + s, "feed", True),                      # after the first step
        ("i5", "ue", T0 - timedelta(hours=3), None, True),       # clicked, channel unknown
    ]
    ev = spark.createDataFrame(events, "event_id string, user_id string, ts timestamp, action string, "
                                       "device_type string")
    imp = spark.createDataFrame(impressions, "impression_id string, user_id string, ts timestamp, channel string, "
                                             "clicked boolean")
    rows = funnel_table(ev, DEFAULT, 24 * HOUR, imp, name="f", attribution_days=7).collect()
    return {r.user_id: r for r in rows}


def test_the_spark_table_keeps_depth_times_device_date_and_channel(small):
    assert set(small) == {"ua", "ub", "uc", "ue"}  # ud never viewed
    ua = small["ua"]
    assert (ua.funnel, ua.steps_reached, ua.device, ua.first_date, ua.channel) == ("f", 4, "ios", T0.date(), "sms")
    # Spark collects naive local times; .timestamp() reads them back as local, whatever the zone.
    assert [t.timestamp() for t in ua.step_ts] == [
        x.timestamp() for x in (T0, T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=20))]
    assert (small["ub"].steps_reached, small["ub"].channel) == (2, ORGANIC)
    assert (small["uc"].steps_reached, small["uc"].device, small["uc"].channel) == (1, "(unknown)", ORGANIC)
    assert (small["ue"].first_date, small["ue"].channel) == ((T0 - timedelta(hours=2)).date(), "(unknown)")
    assert tuple(ua.__fields__) == FUNNEL_COLUMNS


def test_a_bad_window_or_steps_is_refused(spark):
    ev = spark.createDataFrame([("e", "u", T0, "view", "pc")],
                               "event_id string, user_id string, ts timestamp, action string, device_type string")
    with pytest.raises(InvalidArgument) as err:
        funnel_table(ev, ["view", "checkout"], 60)
    assert err.value.field == "steps"
    with pytest.raises(InvalidArgument) as err:
        funnel_table(ev, DEFAULT, 0)
    assert err.value.field == "window_s"


# -- generated data ---------------------------------------------------------------------------------

SAMPLE_USERS = 400


@pytest.fixture(scope="module")
def generated(built_tables):
    """The funnel job on the shared generated lake (a new table, ``features/funnels``), read back."""
    from cluster.core.storage import Zone, open_lake
    from spark_jobs import funnels

    s = built_tables["settings"]
    lake = open_lake(s)
    extra = {"default": {"steps": DEFAULT, "window_hours": 24},
             "view_twice": {"steps": ["view", "view", "cart"], "window_hours": 2}}
    meta = funnels.main(s, run_id="run-funnels-test", funnels=extra)
    table = load_funnel_table(lake)
    # The raw zone is partitioned by day (folders), which pandas reads straight from the local lake.
    raw = lake.uri(Zone.RAW).removeprefix("file://")
    events = pd.read_parquet(f"{raw}/events", columns=["event_id", "user_id", "ts", "action", "device_type"])
    clicks = pd.read_parquet(f"{raw}/impressions", columns=["impression_id", "user_id", "ts", "channel", "clicked"])
    return {"meta": meta, "table": table, "events": events, "clicks": clicks.loc[clicks["clicked"].astype(bool)],
            "days": s.evaluation.attribution_window_days}


def _sample_reference(generated, funnel: str):
    """The reference chain of a seeded sample of users, and those users' rows of the table."""
    d = generated["table"].definitions[funnel]
    window = int(d["window_hours"] * HOUR * 1_000_000)
    ev = generated["events"]
    users = sorted(ev["user_id"].unique())
    sample = set(np.random.default_rng(11).choice(users, size=min(SAMPLE_USERS, len(users)), replace=False))
    mine = ev[ev["user_id"].isin(sample)]
    ts = (mine["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    ref = {}
    for uid, part in mine.assign(ts_us=ts).groupby("user_id"):
        rows = list(zip(part["ts_us"], part["event_id"], part["action"], part["device_type"].fillna("(unknown)")))
        ref[uid] = _reference(rows, d["steps"], window)
    frame = generated["table"].frame
    rows = frame[(frame["funnel"] == funnel) & frame["user_id"].isin(sample)]
    return ref, rows


@pytest.mark.parametrize("funnel", ["default", "view_twice"])
def test_spark_funnel_equals_the_reference_per_user_step_and_device(generated, funnel):
    ref, rows = _sample_reference(generated, funnel)
    entered = {u: r for u, r in ref.items() if r[0] > 0}
    assert len(entered) > 100  # a sample worth comparing
    got = {}
    for r in rows.itertuples():
        stamps = pd.to_datetime(pd.Series(r.step_ts), utc=True)
        got[r.user_id] = (int(r.steps_reached), tuple(int(x) for x in (stamps - pd.Timestamp(0, tz="UTC"))
                                                        // pd.Timedelta(microseconds=1)), r.device)
    assert got == entered
    # Users per step and device, the figures the service reports.
    n = len(generated["table"].definitions[funnel]["steps"])
    want = Counter((k, dev) for depth, _, dev in entered.values() for k in range(1, depth + 1))
    sub = FunnelTable(rows, generated["table"].definitions, "x")
    _, groups = funnel_stats(sub, funnel, "device")
    have = Counter({(s.step, g.group): s.users for g in groups for s in g.steps if s.users})
    assert have == want
    assert max(k for k, _ in want) == n  # the sample reaches the last step: every step is compared
    # The median seconds from the previous step, directly from the reference chains (the table
    # holds microseconds: differences in float seconds are exact to well below 1e-6 s).
    overall, _ = funnel_stats(sub, funnel)
    for k in range(2, n + 1):
        gaps = [(c[k - 1] - c[k - 2]) / 1e6 for depth, c, _ in entered.values() if depth >= k]
        assert overall.steps[k - 1].median_s_from_previous == pytest.approx(float(np.median(gaps)), abs=1e-6)


def test_first_date_and_last_click_channel_match_the_raw_data(generated):
    frame = generated["table"].frame
    rows = frame[frame["funnel"] == "default"].sample(300, random_state=5)
    clicks = generated["clicks"]
    window = pd.Timedelta(days=generated["days"])
    by_user = {u: g for u, g in clicks.groupby("user_id")}
    for r in rows.itertuples():
        first = pd.Timestamp(r.step_ts[0]).tz_localize("UTC")
        assert r.first_date == first.date()
        c = by_user.get(r.user_id)
        before = c[(c["ts"] <= first) & (first < c["ts"] + window)] if c is not None else []
        if len(before) == 0:
            assert r.channel == ORGANIC
        else:
            last = before.sort_values(["ts", "impression_id"]).iloc[-1]
            assert r.channel == (last["channel"] if isinstance(last["channel"], str) else "(unknown)")
    # The generated clicks do reach some users, so the channel is not trivially organic.
    assert (frame["channel"] != ORGANIC).sum() > 0


def test_the_run_metadata_counts_every_funnels_users(generated):
    meta, frame = generated["meta"], generated["table"].frame
    assert meta["rows"] == len(frame)
    for name, d in meta["funnels"].items():
        assert d["users"] == int((frame["funnel"] == name).sum()) > 0
    assert generated["table"].run_id == "run-funnels-test"


# -- the statistics and the service ------------------------------------------------------------------

def _check_rates(group: pb.FunnelGroup, n_steps: int):
    users = [s.users for s in group.steps]
    assert len(users) == n_steps and group.users == users[0]
    assert all(a >= b for a, b in itertools.pairwise(users))
    for prev, s in zip(group.steps, group.steps[1:]):
        assert s.dropped == prev.users - s.users
        if prev.users:
            assert s.conversion_from_previous == pytest.approx(s.users / prev.users)
            assert s.drop_off == pytest.approx(1 - s.conversion_from_previous)
        else:
            assert not s.HasField("conversion_from_previous") and not s.HasField("drop_off")
    if users[-1]:
        # Conversion from the first step is the product of the step-to-step conversions.
        product = float(np.prod([s.conversion_from_previous for s in group.steps[1:]]))
        assert group.steps[-1].conversion_from_first == pytest.approx(product)
    if users[0]:
        assert group.steps[0].conversion_from_first == 1.0
        assert sum(s.dropped for s in group.steps) == users[0] - users[-1]
    else:
        assert not any(s.HasField("conversion_from_first") for s in group.steps)


@pytest.mark.parametrize("by", ["", "device", "channel", "segment"])
def test_service_rates_are_consistent_and_groups_add_up(generated, by):
    table = generated["table"]

    def segment_of(user_ids):
        # A stand-in lookup: two segments by the user id's last digit, none for a tenth of users.
        return [None if u.endswith("0") else ("even" if int(u[-1]) % 2 == 0 else "odd") for u in user_ids]

    resp = get_funnel(pb.GetFunnelRequest(group_by=by), table, segment_of)
    assert (resp.funnel, list(resp.actions), resp.window_hours) == ("default", DEFAULT, 24.0)
    _check_rates(resp.overall, 4)
    assert resp.overall.users == int((table.frame["funnel"] == "default").sum())
    if not by:
        assert not resp.groups
        return
    assert len(resp.groups) >= 2
    for g in resp.groups:
        _check_rates(g, 4)
    for k in range(4):
        assert sum(g.steps[k].users for g in resp.groups) == resp.overall.steps[k].users
    if by == "segment":
        assert {g.name for g in resp.groups} == {"even", "odd", "(none)"}


def test_a_date_range_keeps_users_by_the_day_of_their_first_step(generated):
    table = generated["table"]
    frame = table.frame[table.frame["funnel"] == "default"]
    lo, hi = date(2026, 3, 1), date(2026, 3, 31)
    resp = get_funnel(pb.GetFunnelRequest(from_date="2026-03-01", to_date="2026-03-31"), table, None)
    days = pd.to_datetime(frame["first_date"]).dt.date
    inside = frame[(days >= lo) & (days <= hi)]
    assert resp.overall.users == len(inside) > 0
    assert resp.overall.steps[3].users == int((inside["steps_reached"] >= 4).sum())
    assert (resp.from_date, resp.to_date) == ("2026-03-01", "2026-03-31")
    # A range without users is zero users, not an error.
    empty = get_funnel(pb.GetFunnelRequest(from_date="2030-01-01", group_by="device"), table, None)
    assert empty.overall.users == 0 and not empty.groups
    _check_rates(empty.overall, 4)


@pytest.mark.parametrize("request_kwargs, field", [
    ({"funnel": "nope"}, "funnel"),
    ({"funnel": "bad name!"}, "funnel"),
    ({"group_by": "city"}, "group_by"),
    ({"from_date": "2026-13-01"}, "from_date"),
    ({"from_date": "20260101"}, "from_date"),
    ({"to_date": "yesterday"}, "to_date"),
    ({"from_date": "2026-05-02", "to_date": "2026-05-01"}, "from_date"),
])
def test_bad_requests_name_the_field(request_kwargs, field):
    table = FunnelTable(pd.DataFrame(columns=list(FUNNEL_COLUMNS)), {"default": {"steps": DEFAULT,
                                                                                 "window_hours": 24.0}})
    with pytest.raises(InvalidArgument) as err:
        get_funnel(pb.GetFunnelRequest(**request_kwargs), table, None)
    assert err.value.field == field


def test_segment_grouping_without_a_model_is_a_failed_precondition():
    table = FunnelTable(pd.DataFrame(columns=list(FUNNEL_COLUMNS)), {"default": {"steps": DEFAULT,
                                                                                 "window_hours": 24.0}})
    with pytest.raises(FailedPrecondition, match="pmkt train segments"):
        get_funnel(pb.GetFunnelRequest(group_by="segment"), table, None)


def test_http_query_becomes_the_request_or_names_the_field():
    req = http_query_to_request({"funnel": "default", "by": "device", "from": "2026-03-01", "to": ["2026-03-31"]})
    assert (req.funnel, req.group_by, req.from_date, req.to_date) == ("default", "device", "2026-03-01",
                                                                      "2026-03-31")
    assert http_query_to_request({}) == pb.GetFunnelRequest()
    for params, field in [({"by": "city"}, "group_by"), ({"from": "03/01/2026"}, "from_date"),
                          ({"to": "2026-02-30"}, "to_date"), ({"from": "2026-04-01", "to": "2026-03-01"}, "from_date"),
                          ({"funnel": ["a", "b"]}, "funnel"), ({"group_by": "device"}, "group_by"),
                          ({"limit": "3"}, "limit")]:
        with pytest.raises(InvalidArgument) as err:
            http_query_to_request(params)
        assert err.value.field == field, params


def test_a_missing_table_names_the_command(tmp_path):
    from cluster.core.storage.lake import LocalLake

    with pytest.raises(FailedPrecondition, match="pmkt features funnels"):
        load_funnel_table(LocalLake(tmp_path))


def test_bad_ad_hoc_funnels_are_refused_before_any_work(settings):
    from spark_jobs import funnels

    with pytest.raises(InvalidArgument) as err:
        funnels.main(settings, funnels={"x": {"steps": ["view", "checkout"], "window_hours": 1}})
    assert err.value.field == "steps"
    with pytest.raises(InvalidArgument) as err:
        funnels.main(settings, funnels={"x": {"steps": ["view", "click"], "window_hours": 0}})
    assert err.value.field == "window_hours"


def test_funnel_settings_default_and_validation():
    from pydantic import ValidationError

    from cluster.core.settings import FunnelSettings

    assert FunnelSettings().definitions["default"].steps == DEFAULT
    assert FunnelSettings().definitions["default"].window_hours == 24.0
    for bad in ({"x": {"steps": ["view"], "window_hours": 1}}, {"x": {"steps": ["view", "buy"], "window_hours": 1}},
                {"x": {"steps": ["view", "click"], "window_hours": 0}},
                {"a b": {"steps": ["view", "click"], "window_hours": 1}}):
        with pytest.raises(ValidationError):
            FunnelSettings(definitions=bad)
