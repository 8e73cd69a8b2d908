"""The job's counts, gauges and decisions, sent to ``streaming.monitoring``.

``JobMetrics`` wraps an optional ``Telemetry``: without one every call does
nothing, so the learner stage runs the same with and without metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from online_model.evaluation import ConfusionMatrix, Metrics


def version_text(version: int | None) -> str:
    """Return ``v3`` for version 3, and ``none`` before any version exists."""
    return "none" if version is None else f"v{version}"


class JobMetrics:
    """Translate what the learner stage did into telemetry calls."""

    def __init__(self, telemetry: Any | None) -> None:
        self.telemetry = telemetry

    def routed(
        self,
        events: int,
        dead_letters: Mapping[str, int],
        duplicates: int,
        held_out: int,
        requests: int,
    ) -> None:
        """Count the events of one input batch by where they went."""
        if self.telemetry is None:
            return
        from streaming import monitoring as mon

        self.telemetry.count(mon.EVENTS_READ, events)
        for reason, count in dead_letters.items():
            self.telemetry.count(mon.EVENTS_DEAD_LETTERED, count, reason=reason)
        if duplicates:
            self.telemetry.count(mon.EVENTS_DUPLICATE, duplicates)
        if held_out:
            self.telemetry.count(mon.EVENTS_HELD_OUT, held_out)
        if requests:
            self.telemetry.count(mon.PREDICTIONS_ANSWERED, requests)

    def learned(self, report: Any, size: int, elapsed_s: float) -> None:
        """Record one learned micro-batch: size, latency, loss, prequential."""
        if self.telemetry is None:
            return
        from streaming import monitoring as mon

        self.telemetry.count(mon.EVENTS_LEARNED, size)
        self.telemetry.observe(mon.MICRO_BATCH_SIZE, size)
        self.telemetry.observe(mon.MICRO_BATCH_LATENCY, elapsed_s)
        if elapsed_s > 0:
            self.telemetry.set(mon.EXAMPLES_PER_SECOND, size / elapsed_s)
        scored = report.scored
        event_time_ms = max((s.event_time_ms for s in scored), default=None)
        if report.loss is not None and math.isfinite(report.loss):
            self.telemetry.set(
                mon.TRAINING_LOSS, report.loss, event_time_ms=event_time_ms
            )
        if not scored:
            return
        hits = sum(s.ranked_labels[:1] == (s.true_label,) for s in scored)
        top5 = sum(s.true_label in s.ranked_labels[:5] for s in scored)
        self.telemetry.set(
            mon.PREQUENTIAL_TOP1, hits / len(scored), event_time_ms=event_time_ms
        )
        self.telemetry.set(
            mon.PREQUENTIAL_TOP5, top5 / len(scored), event_time_ms=event_time_ms
        )

    def validated(
        self,
        candidate: Metrics,
        champion: Metrics | None,
        candidate_id: str,
        serving: str,
    ) -> None:
        """Record the holdout metrics of a candidate and the serving version.

        ``candidate_id`` (``c17``) labels the candidate, because it has no
        version number before it is published; ``serving`` is ``v12``.
        """
        if self.telemetry is None:
            return
        from streaming import monitoring as mon

        pairs = [(candidate_id, mon.ROLE_CANDIDATE, candidate)]
        if champion is not None:
            pairs.append((serving, mon.ROLE_SERVING, champion))
        for version, role, metrics in pairs:
            for spec, value in (
                (mon.HOLDOUT_TOP1, metrics.top1_accuracy),
                (mon.HOLDOUT_TOP5, metrics.top_k_hit_rate),
                (mon.HOLDOUT_LOSS, metrics.log_loss),
            ):
                if math.isfinite(value):
                    self.telemetry.set(spec, value, version=version, role=role)

    def serving(self, version: int) -> None:
        """Record the version that now serves predictions."""
        if self.telemetry is None:
            return
        from streaming import monitoring as mon

        self.telemetry.set(mon.SERVING_VERSION, version)

    def confusion(
        self, matrix: ConfusionMatrix, version: str, event_time_ms: int | None
    ) -> None:
        """Record the holdout confusion matrix of ``version`` (or a candidate)."""
        if self.telemetry is None:
            return
        self.telemetry.record_confusion(
            matrix, version=version, source="holdout", event_time_ms=event_time_ms
        )

    def decided(
        self, kind: str, fields: Mapping[str, Any], event_time_ms: int | None = None
    ) -> None:
        """Record a promotion, rejection, rollback or drift alarm for the report.

        ``event_time_ms`` is the latest event time learned when it happened,
        so the report can place it on the event-time axis.

        An adopted pointer change to a lower version is an operator's
        rollback; other kinds of decision records are not sent.
        """
        if self.telemetry is None:
            return
        from streaming import monitoring as mon

        kinds = {
            "promotion": mon.EventKind.PROMOTION,
            "rejection": mon.EventKind.REJECTION,
            "rollback": mon.EventKind.ROLLBACK,
            "drift_alarm": mon.EventKind.DRIFT_ALARM,
        }
        event_kind = kinds.get(kind)
        manual = kind == "adopted" and moves_back(fields)
        if manual:
            event_kind = mon.EventKind.ROLLBACK
        if event_kind is None:
            return
        details = {
            key: value
            for key, value in fields.items()
            if isinstance(value, int | float | str) and key != "detector"
        }
        labels: dict[str, str] = {}
        if event_kind is mon.EventKind.ROLLBACK:
            labels["trigger"] = mon.TRIGGER_MANUAL if manual else mon.TRIGGER_AUTOMATIC
        if event_kind is mon.EventKind.DRIFT_ALARM:
            labels["detector"] = str(fields.get("detector", ""))
        self.telemetry.record_event(
            event_kind, event_time_ms=event_time_ms, labels=labels, **details
        )


def moves_back(fields: Mapping[str, Any]) -> bool:
    """Return whether an adopted pointer change went to an older version."""
    version, previous = fields.get("version"), fields.get("previous")
    return isinstance(version, int) and isinstance(previous, int) and version < previous
