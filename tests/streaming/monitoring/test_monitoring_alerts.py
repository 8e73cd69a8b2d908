"""Alert policies as code, applied to a local AlertPolicyService server."""

from __future__ import annotations

import json

import pytest
from fake_cloud_monitoring import FakeMonitoringServer
from google.cloud import monitoring_v3

from streaming import monitoring as mon
from streaming.monitoring.alerts import (
    AlertThresholds,
    apply_policies,
    build_policies,
    main,
)

Aligner = monitoring_v3.Aggregation.Aligner

# Aligners the Aggregation API allows for each metric kind and value type.
VALID_ALIGNERS = {
    ("CUMULATIVE", "INT64"): {Aligner.ALIGN_DELTA, Aligner.ALIGN_RATE},
    ("CUMULATIVE", "DISTRIBUTION"): {Aligner.ALIGN_DELTA},
    ("GAUGE", "DOUBLE"): {
        Aligner.ALIGN_MEAN,
        Aligner.ALIGN_MAX,
        Aligner.ALIGN_MIN,
        Aligner.ALIGN_PERCENT_CHANGE,
    },
}


def metric_of(condition: monitoring_v3.AlertPolicy.Condition) -> mon.MetricSpec:
    filter_text = condition.condition_threshold.filter
    metric_type = filter_text.split('metric.type = "')[1].split('"')[0]
    return mon.METRICS_BY_NAME[metric_type.removeprefix(mon.METRIC_PREFIX)]


def test_policies_cover_each_situation() -> None:
    policies = build_policies(AlertThresholds(job="jobs-demo"))

    titles = [policy.display_name for policy in policies]
    assert titles == [
        "streamlearn [jobs-demo]: rollback happened",
        "streamlearn [jobs-demo]: serving quality below threshold",
        "streamlearn [jobs-demo]: training loss on a plateau",
        "streamlearn [jobs-demo]: no promotion",
        "streamlearn [jobs-demo]: trainer stalled or slow",
        "streamlearn [jobs-demo]: memory near its limit",
    ]
    watched = [[metric_of(c).name for c in policy.conditions] for policy in policies]
    assert watched == [
        ["registry/rollbacks"],
        ["holdout/top5_accuracy"],
        ["training/loss"],
        ["registry/promotions"],
        ["events/learned", "training/micro_batch_latency"],
        ["resource/memory_utilization"],
    ]


def test_conditions_valid_for_their_metrics() -> None:
    for policy in build_policies(AlertThresholds(job="jobs-demo")):
        for condition in policy.conditions:
            spec = metric_of(condition)
            threshold = condition.condition_threshold
            [aggregation] = threshold.aggregations
            allowed = VALID_ALIGNERS[(spec.kind.value, spec.value_type.value)]
            assert aggregation.per_series_aligner in allowed, condition.display_name
            period_s = aggregation.alignment_period.total_seconds()
            assert 60 <= period_s <= 90_000, condition.display_name
            assert threshold.duration.total_seconds() % 60 == 0
            assert 'metric.label.job = "jobs-demo"' in threshold.filter


def test_thresholds_reach_conditions() -> None:
    thresholds = AlertThresholds(
        serving_top5_min=0.7,
        no_promotion_window_s=7200,
        memory_utilization_max=0.8,
        loss_min_drop_percent=2.5,
    )

    policies = {p.display_name: p for p in build_policies(thresholds)}

    quality = policies["streamlearn: serving quality below threshold"].conditions[0]
    assert quality.condition_threshold.threshold_value == 0.7
    assert 'metric.label.role = "serving"' in quality.condition_threshold.filter
    promotion = policies["streamlearn: no promotion"].conditions[0]
    period = promotion.condition_threshold.aggregations[0].alignment_period
    assert period.total_seconds() == 7200
    missing = promotion.condition_threshold.evaluation_missing_data
    assert missing.name == "EVALUATION_MISSING_DATA_ACTIVE"
    memory = policies["streamlearn: memory near its limit"].conditions[0]
    assert memory.condition_threshold.threshold_value == 0.8
    plateau = policies["streamlearn: training loss on a plateau"].conditions[0]
    assert plateau.condition_threshold.threshold_value == -2.5


@pytest.mark.parametrize(
    "settings",
    [
        {"stall_window_s": 90},
        {"no_promotion_window_s": 100_000},
        {"serving_top5_min": 1.5},
        {"memory_utilization_max": 0.0},
        {"loss_min_drop_percent": 0.0},
        {"loss_min_drop_percent": float("nan")},
        {"micro_batch_latency_max_s": float("nan")},
        {"micro_batch_latency_max_s": float("inf")},
        {"serving_top5_min": float("nan")},
    ],
)
def test_invalid_thresholds_rejected(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        AlertThresholds(**settings)  # type: ignore[arg-type]


def test_apply_creates_then_updates(monitoring_server: FakeMonitoringServer) -> None:
    client = monitoring_server.alert_client()
    unrelated = monitoring_v3.AlertPolicy(
        display_name="someone else's policy",
        combiner=monitoring_v3.AlertPolicy.ConditionCombinerType.OR,
        conditions=[{"display_name": "c", "condition_absent": {"filter": "x"}}],
    )
    client.create_alert_policy(name="projects/demo", alert_policy=unrelated)

    first = apply_policies(client, "demo", build_policies(AlertThresholds()))
    second = apply_policies(
        client, "demo", build_policies(AlertThresholds(serving_top5_min=0.75))
    )

    assert [action for action, _ in first] == ["created"] * 6
    assert [action for action, _ in second] == ["updated"] * 6
    assert [name for _, name in second] == [name for _, name in first]
    assert len(monitoring_server.alert_policies) == 7
    quality = next(
        policy
        for policy in monitoring_server.alert_policies.values()
        if policy.display_name == "streamlearn: serving quality below threshold"
    )
    assert quality.conditions[0].condition_threshold.threshold_value == 0.75
    assert "someone else's policy" in {
        p.display_name for p in monitoring_server.alert_policies.values()
    }


def test_cli_apply_against_endpoint(
    monitoring_server: FakeMonitoringServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["apply", "--project", "demo", "--endpoint", monitoring_server.address]

    assert main([*args, "--format", "json"]) == 0

    results = json.loads(capsys.readouterr().out)
    assert [result["action"] for result in results] == ["created"] * 6
    assert len(monitoring_server.alert_policies) == 6


def test_cli_dry_run_changes_nothing(
    monitoring_server: FakeMonitoringServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["apply", "--project", "demo", "--dry-run", "--job", "jobs-demo"]
    args += ["--endpoint", monitoring_server.address]

    assert main(args) == 0

    documents = json.loads(capsys.readouterr().out)
    assert len(documents) == 6
    assert documents[0]["displayName"] == "streamlearn [jobs-demo]: rollback happened"
    assert documents[0]["conditions"][0]["conditionThreshold"]["comparison"] == (
        "COMPARISON_GT"
    )
    assert monitoring_server.alert_calls == []


def test_cli_reports_invalid_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["apply", "--project", "demo", "--stall-window-s", "61", "--dry-run"])

    assert code == 2
    assert "stall_window_s must be a multiple of 60" in capsys.readouterr().err


def test_cli_reports_server_failure(
    monitoring_server: FakeMonitoringServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import grpc

    monitoring_server.fail_with = grpc.StatusCode.PERMISSION_DENIED
    args = ["apply", "--project", "demo", "--endpoint", monitoring_server.address]

    assert main(args) == 1

    assert "applying policies failed" in capsys.readouterr().err


def test_streamlearn_dispatches_alerts(capsys: pytest.CaptureFixture[str]) -> None:
    from streaming.cli import main as streamlearn

    code = streamlearn(["alerts", "apply", "--project", "demo", "--dry-run"])

    assert code == 0
    assert len(json.loads(capsys.readouterr().out)) == 6
