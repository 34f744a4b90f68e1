"""ExperimentService's functions: request messages in, response messages out, and for any
request either an answer or INVALID_ARGUMENT naming a field (never another error)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.core.errors import InvalidArgument
from protos.marketing.v1 import experiment_pb2 as pb
from ray_apps.evaluation import service


def test_conversions_compare_each_variant_correct_the_p_values_and_check_the_split():
    got = service.analyze_conversions(pb.AnalyzeConversionsRequest(
        control=pb.Arm(name="control", conversions=200, trials=10_000),
        variants=[pb.Arm(name="red", conversions=260, trials=10_000), pb.Arm(name="blue", conversions=205, trials=9_950)]))
    red, blue = got.variants
    assert red.name == "red" and red.p_value < 0.01 and red.significant
    assert red.adjusted_p_value == pytest.approx(min(1.0, 2 * red.p_value))  # Holm, smallest of two
    assert not blue.significant
    assert blue.adjusted_p_value == pytest.approx(max(red.adjusted_p_value, blue.p_value))  # Holm's step-down
    assert red.relative_lift == pytest.approx(0.3)
    assert not got.sample_ratio.mismatch and got.correction == "holm"


def test_a_broken_split_is_flagged():
    got = service.analyze_conversions(pb.AnalyzeConversionsRequest(
        control=pb.Arm(name="a", conversions=10, trials=10_000, planned_weight=1),
        variants=[pb.Arm(name="b", conversions=10, trials=11_000, planned_weight=1)]))
    assert got.sample_ratio.mismatch


@pytest.mark.parametrize(("request_", "field"), [
    (pb.AnalyzeConversionsRequest(control=pb.Arm(name="a", conversions=1, trials=10)), "variants"),
    (pb.AnalyzeConversionsRequest(control=pb.Arm(name="a", conversions=1, trials=10),
                                  variants=[pb.Arm(name="b", conversions=5, trials=0)]), "variants[0].trials"),
    (pb.AnalyzeConversionsRequest(control=pb.Arm(name="a", conversions=11, trials=10),
                                  variants=[pb.Arm(name="b", conversions=5, trials=9)]), "control.conversions"),
    (pb.AnalyzeConversionsRequest(control=pb.Arm(name="a", conversions=1, trials=10),
                                  variants=[pb.Arm(name="a", conversions=5, trials=9)]), "variants[0].name"),
    (pb.AnalyzeConversionsRequest(control=pb.Arm(name="a", conversions=1, trials=10), correction="bonferroni",
                                  variants=[pb.Arm(name="b", conversions=5, trials=9)]), "correction"),
])
def test_bad_conversion_requests_name_the_field(request_, field):
    with pytest.raises(InvalidArgument) as err:
        service.analyze_conversions(request_)
    assert err.value.field == field


def test_means_with_pre_period_values_add_cuped():
    import numpy as np

    rng = np.random.default_rng(0)
    pre = rng.normal(50, 10, 2_000)
    post = pre + rng.normal(0, 5, 2_000)
    post[1_000:] += 1.0
    got = service.compare_means(pb.CompareMeansRequest(
        control=post[:1_000], variant=post[1_000:], control_pre=pre[:1_000], variant_pre=pre[1_000:]))
    assert got.HasField("cuped") and got.variance_reduction > 0.7
    assert (got.cuped.ci_high - got.cuped.ci_low) < 0.6 * (got.raw.ci_high - got.raw.ci_low)
    assert not service.compare_means(pb.CompareMeansRequest(control=[1, 2, 3], variant=[2, 3, 4])).HasField("cuped")


def test_sequential_and_sample_size_answer():
    looks = [pb.Look(control_conversions=50 * k, control_trials=1_000 * k, variant_conversions=62 * k,
                     variant_trials=1_000 * k) for k in range(1, 40)]
    got = service.sequential_test(pb.SequentialTestRequest(looks=looks))
    assert got.HasField("rejected_at") and len(got.p_values) == 39
    size = service.sample_size(pb.SampleSizeRequest(baseline_rate=0.05, variant_rate=0.06, control_trials=4_000))
    assert size.control_trials == size.variant_trials > 4_000
    assert 0 < size.power_at_trials < 0.8
    bad = [pb.Look(control_conversions=5, control_trials=100, variant_conversions=5, variant_trials=100),
           pb.Look(control_conversions=5, control_trials=90, variant_conversions=5, variant_trials=100)]
    with pytest.raises(InvalidArgument) as err:
        service.sequential_test(pb.SequentialTestRequest(looks=bad))
    assert err.value.field == "looks"


def test_segments_and_json_bodies():
    body = {"groups": [{"name": "loyal", "values": [5, 6, 7, 8]}, {"name": "new", "values": [1, 2, 2, 3]}]}
    got = service.segment_significance_of(service.parse_request(body, pb.SegmentSignificanceRequest))
    assert [g.name for g in got.groups] == ["loyal", "new"] and got.anova_p < 0.01
    for bad, field in [({"grups": []}, "grups"), ({"groups": [{"name": "a", "values": ["x"]}]}, "groups[0].values[0]"),
                       ({"alpha": "high"}, "alpha"), ([1, 2], "body")]:
        with pytest.raises(InvalidArgument) as err:
            service.parse_request(bad, pb.SequentialTestRequest if "alpha" in str(bad) else pb.SegmentSignificanceRequest)
        assert err.value.field == field, bad


_any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
_count = st.integers(-5, 2**40)
_text = st.text(max_size=70)
_arm = st.builds(pb.Arm, name=_text, conversions=_count, trials=_count, planned_weight=_any_float)
_look = st.builds(pb.Look, control_conversions=_count, control_trials=_count, variant_conversions=_count,
                  variant_trials=_count)
_values = st.lists(_any_float, max_size=8)
_alt = st.sampled_from(["", "two-sided", "larger", "smaller", "both"])
CASES = [
    (service.analyze_conversions, st.builds(pb.AnalyzeConversionsRequest, control=_arm, variants=st.lists(_arm, max_size=3),
                                            alpha=_any_float, alternative=_alt,
                                            correction=st.sampled_from(["", "holm", "bh", "none", "x"]))),
    (service.compare_means, st.builds(pb.CompareMeansRequest, control=_values, variant=_values, control_pre=_values,
                                      variant_pre=_values, alpha=_any_float, alternative=_alt)),
    (service.sequential_test, st.builds(pb.SequentialTestRequest, looks=st.lists(_look, max_size=4), alpha=_any_float,
                                        mixture_sd=_any_float)),
    (service.sample_size, st.builds(pb.SampleSizeRequest, baseline_rate=_any_float, variant_rate=_any_float,
                                    alpha=_any_float, power=_any_float, ratio=_any_float, alternative=_alt,
                                    control_trials=_count)),
    (service.segment_significance_of, st.builds(pb.SegmentSignificanceRequest, groups=st.lists(
        st.builds(pb.SegmentValues, name=_text, values=_values), max_size=4))),
]


@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_any_request_gets_an_answer_or_invalid_argument(data):
    fn, strategy = data.draw(st.sampled_from(CASES))
    request = data.draw(strategy)
    try:
        response = fn(request)
    except InvalidArgument as err:
        assert err.field, request
        return
    # An answer holds numbers only: no NaN or infinity reaches a client.
    from google.protobuf.json_format import MessageToJson

    text = MessageToJson(response)
    assert "NaN" not in text and "Infinity" not in text, (request, text)


def test_cli_reads_files_and_names_bad_columns(tmp_path):
    import json

    from cluster.cli import main

    arms = tmp_path / "arms.csv"
    arms.write_text("arm,conversions,trials\ncontrol,200,10000\nred,260,10000\n")
    looks = tmp_path / "looks.csv"
    looks.write_text("control_conversions,control_trials,variant_conversions,variant_trials\n"
                     + "".join(f"{50 * k},{1000 * k},{66 * k},{1000 * k}\n" for k in range(1, 30)))
    bad = tmp_path / "bad.csv"
    bad.write_text("arm,conversions,trials\ncontrol,200,ten\n")
    import contextlib
    import io

    def run(*argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(list(argv))
        return code, out.getvalue()

    code, out = run("experiment", "conversions", str(arms))
    assert code == 0 and json.loads(out)["variants"][0]["significant"] is True
    code, out = run("experiment", "sequential", str(looks))
    assert code == 0 and "rejected_at" in json.loads(out)
    code, _ = run("experiment", "conversions", str(bad))
    assert code == 2
