"""Alert policies as code: ``streamlearn alerts apply --project P``.

Each policy watches catalogue metrics through Cloud Monitoring threshold
conditions. ``apply`` creates a policy, or updates the one with the same
display name, so running it again after changing a threshold is safe.

Limits from the AlertPolicy API (google-cloud-monitoring 2.32): a
condition's ``duration`` must be a multiple of 60 s, and an alignment period
must be 60 to 90,000 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from google.cloud import monitoring_v3
from google.protobuf import duration_pb2

from streaming.monitoring.catalogue import (
    EVENTS_LEARNED,
    HOLDOUT_TOP5,
    MICRO_BATCH_LATENCY,
    PROCESS_MEMORY_UTILIZATION,
    PROMOTIONS,
    ROLE_SERVING,
    ROLLBACKS,
    TRAINING_LOSS,
    MetricSpec,
)

logger = logging.getLogger(__name__)

# proto-plus enums. mypy types their members as int, so parameters are int.
Aligner = monitoring_v3.Aggregation.Aligner
Reducer = monitoring_v3.Aggregation.Reducer
Comparison = monitoring_v3.ComparisonType
MissingData = monitoring_v3.AlertPolicy.Condition.EvaluationMissingData
Severity = monitoring_v3.AlertPolicy.Severity

DISPLAY_NAME_PREFIX = "streamlearn"
MAX_ALIGNMENT_PERIOD_S = 90_000


@dataclass(frozen=True)
class AlertThresholds:
    """Thresholds of the alert policies; times in seconds, shares in 0..1.

    ``job`` restricts every policy to one job's series (all jobs when None).
    """

    job: str | None = None
    serving_top5_min: float = 0.5
    serving_quality_window_s: int = 900
    loss_window_s: int = 3600
    loss_min_drop_percent: float = 1.0
    no_promotion_window_s: int = 6 * 3600
    stall_window_s: int = 600
    micro_batch_latency_max_s: float = 30.0
    memory_utilization_max: float = 0.9
    notification_channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        windows = {
            "serving_quality_window_s": self.serving_quality_window_s,
            "loss_window_s": self.loss_window_s,
            "no_promotion_window_s": self.no_promotion_window_s,
            "stall_window_s": self.stall_window_s,
        }
        for name, seconds in windows.items():
            if seconds % 60 or not 60 <= seconds <= MAX_ALIGNMENT_PERIOD_S:
                raise ValueError(
                    f"{name} must be a multiple of 60 in 60..90000 s, got {seconds}"
                )
        for name, share in {
            "serving_top5_min": self.serving_top5_min,
            "memory_utilization_max": self.memory_utilization_max,
        }.items():
            if not 0 < share <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {share}")
        # Written so that NaN fails the test too.
        if not 0 < self.loss_min_drop_percent < math.inf:
            raise ValueError(
                "loss_min_drop_percent must be a finite number > 0, got "
                f"{self.loss_min_drop_percent}"
            )
        if not 0 < self.micro_batch_latency_max_s < math.inf:
            raise ValueError(
                "micro_batch_latency_max_s must be a finite number > 0, got "
                f"{self.micro_batch_latency_max_s}"
            )


def _metric_filter(spec: MetricSpec, thresholds: AlertThresholds, *extra: str) -> str:
    parts = [f'metric.type = "{spec.metric_type}"', 'resource.type = "generic_task"']
    if thresholds.job is not None:
        parts.append(f'metric.label.job = "{thresholds.job}"')
    parts.extend(extra)
    return " AND ".join(parts)


def _seconds(value: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(value))


def _condition(
    display_name: str,
    filter_text: str,
    *,
    aligner: int,
    period_s: int,
    comparison: int,
    threshold: float,
    duration_s: int = 0,
    reducer: int = Reducer.REDUCE_NONE,
    missing_data: int | None = None,
) -> monitoring_v3.AlertPolicy.Condition:
    aggregation = monitoring_v3.Aggregation(
        alignment_period=_seconds(period_s),
        per_series_aligner=aligner,
        cross_series_reducer=reducer,
        group_by_fields=["metric.label.job"] if reducer != Reducer.REDUCE_NONE else [],
    )
    threshold_condition = monitoring_v3.AlertPolicy.Condition.MetricThreshold(
        filter=filter_text,
        aggregations=[aggregation],
        comparison=comparison,
        threshold_value=threshold,
        duration=_seconds(duration_s),
        trigger=monitoring_v3.AlertPolicy.Condition.Trigger(count=1),
    )
    if missing_data is not None:
        threshold_condition.evaluation_missing_data = MissingData(missing_data)
    return monitoring_v3.AlertPolicy.Condition(
        display_name=display_name, condition_threshold=threshold_condition
    )


def _policy(
    thresholds: AlertThresholds,
    title: str,
    advice: str,
    conditions: Sequence[monitoring_v3.AlertPolicy.Condition],
    severity: int,
) -> monitoring_v3.AlertPolicy:
    scope = f" [{thresholds.job}]" if thresholds.job else ""
    return monitoring_v3.AlertPolicy(
        display_name=f"{DISPLAY_NAME_PREFIX}{scope}: {title}",
        documentation=monitoring_v3.AlertPolicy.Documentation(
            content=advice, mime_type="text/markdown"
        ),
        user_labels={"managed_by": "streamlearn"},
        conditions=list(conditions),
        combiner=monitoring_v3.AlertPolicy.ConditionCombinerType.OR,
        notification_channels=list(thresholds.notification_channels),
        severity=severity,
    )


def _rollback_policy(t: AlertThresholds) -> monitoring_v3.AlertPolicy:
    rollback = _condition(
        "registry/rollbacks increased",
        _metric_filter(ROLLBACKS, t),
        aligner=Aligner.ALIGN_DELTA,
        period_s=300,
        reducer=Reducer.REDUCE_SUM,
        comparison=Comparison.COMPARISON_GT,
        threshold=0,
    )
    advice = (
        "The job or an operator rolled the model back. The run's metrics.jsonl "
        "and `streamlearn report` show the rollback's reason and numbers."
    )
    return _policy(t, "rollback happened", advice, [rollback], Severity.WARNING)


def _serving_quality_policy(t: AlertThresholds) -> monitoring_v3.AlertPolicy:
    quality = _condition(
        f"serving holdout top-5 below {t.serving_top5_min}",
        _metric_filter(HOLDOUT_TOP5, t, f'metric.label.role = "{ROLE_SERVING}"'),
        aligner=Aligner.ALIGN_MEAN,
        period_s=300,
        comparison=Comparison.COMPARISON_LT,
        threshold=t.serving_top5_min,
        duration_s=t.serving_quality_window_s,
    )
    advice = (
        "The serving version's top-5 accuracy on the holdout window stayed below "
        "the threshold. Check for drift alarms and recent promotions; "
        "`rollback --to vN` restores an earlier version."
    )
    title = "serving quality below threshold"
    return _policy(t, title, advice, [quality], Severity.ERROR)


def _loss_plateau_policy(t: AlertThresholds) -> monitoring_v3.AlertPolicy:
    # Fires when the loss fell by less than loss_min_drop_percent over the
    # window, or rose. ALIGN_PERCENT_CHANGE works on gauges and smooths the
    # series with a 10-minute moving mean first.
    plateau = _condition(
        f"training loss fell less than {t.loss_min_drop_percent}% "
        f"in {t.loss_window_s} s",
        _metric_filter(TRAINING_LOSS, t),
        aligner=Aligner.ALIGN_PERCENT_CHANGE,
        period_s=t.loss_window_s,
        comparison=Comparison.COMPARISON_GT,
        threshold=-t.loss_min_drop_percent,
    )
    advice = (
        "The training loss stopped falling. This is expected once the model has "
        "converged; otherwise check the label stream."
    )
    title = "training loss on a plateau"
    return _policy(t, title, advice, [plateau], Severity.WARNING)


def _no_promotion_policy(t: AlertThresholds) -> monitoring_v3.AlertPolicy:
    no_promotion = _condition(
        f"no promotion in {t.no_promotion_window_s} s",
        _metric_filter(PROMOTIONS, t),
        aligner=Aligner.ALIGN_DELTA,
        period_s=t.no_promotion_window_s,
        reducer=Reducer.REDUCE_SUM,
        comparison=Comparison.COMPARISON_LT,
        threshold=1,
        missing_data=MissingData.EVALUATION_MISSING_DATA_ACTIVE,
    )
    advice = (
        "No candidate passed the validation gate in the window, or the job wrote "
        "no promotion counts. Check rejections and whether automatic promotion "
        "is paused."
    )
    return _policy(t, "no promotion", advice, [no_promotion], Severity.WARNING)


def _trainer_policy(t: AlertThresholds) -> monitoring_v3.AlertPolicy:
    # A stopped job stops writing, so missing data counts as stalled too.
    stalled = _condition(
        f"no events learned in {t.stall_window_s} s",
        _metric_filter(EVENTS_LEARNED, t),
        aligner=Aligner.ALIGN_DELTA,
        period_s=t.stall_window_s,
        reducer=Reducer.REDUCE_SUM,
        comparison=Comparison.COMPARISON_LT,
        threshold=1,
        missing_data=MissingData.EVALUATION_MISSING_DATA_ACTIVE,
    )
    slow = _condition(
        f"p99 micro-batch learning time above {t.micro_batch_latency_max_s} s",
        _metric_filter(MICRO_BATCH_LATENCY, t),
        aligner=Aligner.ALIGN_DELTA,
        period_s=300,
        reducer=Reducer.REDUCE_PERCENTILE_99,
        comparison=Comparison.COMPARISON_GT,
        threshold=t.micro_batch_latency_max_s,
        duration_s=300,
    )
    advice = (
        "The job learned no events in the window, stopped writing metrics, or "
        "its micro-batches take longer than expected."
    )
    title = "trainer stalled or slow"
    return _policy(t, title, advice, [stalled, slow], Severity.ERROR)


def _memory_policy(t: AlertThresholds) -> monitoring_v3.AlertPolicy:
    memory = _condition(
        f"resident memory above {t.memory_utilization_max:.0%} of the limit",
        _metric_filter(PROCESS_MEMORY_UTILIZATION, t),
        aligner=Aligner.ALIGN_MAX,
        period_s=60,
        comparison=Comparison.COMPARISON_GT,
        threshold=t.memory_utilization_max,
        duration_s=300,
    )
    advice = (
        "The job's resident memory is close to its limit, so the job may be "
        "killed soon."
    )
    return _policy(t, "memory near its limit", advice, [memory], Severity.ERROR)


POLICY_BUILDERS = (
    _rollback_policy,
    _serving_quality_policy,
    _loss_plateau_policy,
    _no_promotion_policy,
    _trainer_policy,
    _memory_policy,
)


def build_policies(thresholds: AlertThresholds) -> list[monitoring_v3.AlertPolicy]:
    """Build every alert policy for ``thresholds``, in a fixed order."""
    return [build(thresholds) for build in POLICY_BUILDERS]


def apply_policies(
    client: monitoring_v3.AlertPolicyServiceClient,
    project_id: str,
    policies: Sequence[monitoring_v3.AlertPolicy],
) -> list[tuple[str, str]]:
    """Create each policy, or update the existing one with its display name.

    When several existing policies share a display name, the first one listed
    is updated and the others are left alone. Returns (action, policy name)
    pairs, action being ``created`` or ``updated``.
    """
    project_name = f"projects/{project_id}"
    existing: dict[str, str] = {}
    for policy in client.list_alert_policies(name=project_name):
        existing.setdefault(policy.display_name, policy.name)

    results: list[tuple[str, str]] = []
    for policy in policies:
        name = existing.get(policy.display_name)
        if name is None:
            created = client.create_alert_policy(name=project_name, alert_policy=policy)
            logger.info(
                "created alert policy %s (%s)", created.name, policy.display_name
            )
            results.append(("created", created.name))
            continue
        replacement = monitoring_v3.AlertPolicy(policy)
        replacement.name = name
        updated = client.update_alert_policy(alert_policy=replacement)
        logger.info("updated alert policy %s (%s)", updated.name, policy.display_name)
        results.append(("updated", updated.name))
    return results


# (option, AlertThresholds field, type, help) of the threshold options.
THRESHOLD_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    (
        "--serving-top5-min",
        "serving_top5_min",
        float,
        "alert when the serving holdout top-5 stays below this share",
    ),
    (
        "--loss-window-s",
        "loss_window_s",
        int,
        "window in seconds over which the training loss must fall",
    ),
    (
        "--loss-min-drop-percent",
        "loss_min_drop_percent",
        float,
        "minimum drop of the training loss over the window, in percent",
    ),
    (
        "--no-promotion-window-s",
        "no_promotion_window_s",
        int,
        "alert when nothing was promoted for this many seconds (max 90000)",
    ),
    (
        "--stall-window-s",
        "stall_window_s",
        int,
        "alert when no event was learned for this many seconds",
    ),
    (
        "--micro-batch-latency-max-s",
        "micro_batch_latency_max_s",
        float,
        "alert when the p99 micro-batch learning time exceeds this, in seconds",
    ),
    (
        "--memory-utilization-max",
        "memory_utilization_max",
        float,
        "alert when resident memory exceeds this share of the limit",
    ),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamlearn alerts",
        description=(
            "Create or update the Cloud Monitoring alert policies of streamlearn "
            "(matched by display name): rollback happened, serving quality below "
            "a threshold, training loss on a plateau, no promotion, trainer "
            "stalled or slow, memory near its limit."
        ),
        epilog="example: streamlearn alerts apply --project my-project --dry-run",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    apply = commands.add_parser(
        "apply",
        help="create or update the policies",
        description="Create or update the alert policies in a project.",
        epilog="example: streamlearn alerts apply --project my-project --dry-run",
    )
    apply.add_argument("--project", required=True, help="Google Cloud project id")
    apply.add_argument("--job", help="watch only this job's series (default: all)")
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="print the policies as JSON and change nothing (needs no credentials)",
    )
    apply.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format"
    )
    defaults = AlertThresholds()
    for option, field_name, option_type, help_text in THRESHOLD_OPTIONS:
        apply.add_argument(
            option,
            type=option_type,
            default=getattr(defaults, field_name),
            help=f"{help_text} (default %(default)s)",
        )
    apply.add_argument(
        "--notification-channel",
        action="append",
        default=[],
        help="notification channel name (projects/P/notificationChannels/ID); "
        "repeatable",
    )
    apply.add_argument(
        "--endpoint",
        help="HOST:PORT of a plaintext gRPC server to use instead of Cloud "
        "Monitoring, for local tests",
    )
    return parser


def _alert_client(endpoint: str | None) -> monitoring_v3.AlertPolicyServiceClient:
    if endpoint is None:
        return monitoring_v3.AlertPolicyServiceClient()
    import grpc
    from google.cloud.monitoring_v3.services.alert_policy_service.transports import (
        AlertPolicyServiceGrpcTransport,
    )

    transport = AlertPolicyServiceGrpcTransport(channel=grpc.insecure_channel(endpoint))
    return monitoring_v3.AlertPolicyServiceClient(transport=transport)


def main(argv: Sequence[str]) -> int:
    """Run ``streamlearn alerts``; return the exit code."""
    args = _parser().parse_args(list(argv))
    settings = {field: getattr(args, field) for _, field, _, _ in THRESHOLD_OPTIONS}
    try:
        thresholds = AlertThresholds(
            job=args.job,
            notification_channels=tuple(args.notification_channel),
            **settings,
        )
    except ValueError as error:
        print(f"streamlearn alerts: {error}", file=sys.stderr)
        return 2
    policies = build_policies(thresholds)

    if args.dry_run:
        documents = [
            json.loads(
                monitoring_v3.AlertPolicy.to_json(
                    policy,
                    use_integers_for_enums=False,
                    always_print_fields_with_no_presence=False,
                )
            )
            for policy in policies
        ]
        print(json.dumps(documents, indent=2))
        return 0

    from google.api_core import exceptions as api_exceptions

    try:
        results = apply_policies(_alert_client(args.endpoint), args.project, policies)
    except api_exceptions.GoogleAPICallError as error:
        print(f"streamlearn alerts: applying policies failed: {error}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps([{"action": a, "name": n} for a, n in results], indent=2))
    else:
        for (action, name), policy in zip(results, policies, strict=True):
            print(f"{action} {name}  {policy.display_name}")
    return 0
