"""Settings of the streaming job's learner stage, with units in the names."""

from __future__ import annotations

from dataclasses import dataclass

from online_model.gate import METRIC_FIELDS, GateMetric


@dataclass(frozen=True)
class JobConfig:
    """Batching, validation, rollback and checkpoint settings of the job.

    A micro-batch closes at ``micro_batch_size`` events or when its oldest
    event has waited ``micro_batch_max_wait_s``. A candidate meets the gate
    every ``gate_every_micro_batches`` micro-batches or ``gate_every_s``
    seconds, whichever comes first, once the holdout window contains
    ``holdout_min_events``. It is promoted when its ``gate_metric`` on the
    holdout window (``log_loss``, ``top1``, ``top5`` or ``macro_f1``, see
    online_model/gate.py) is no worse than the serving version's by more than
    ``gate_tolerance``, in that metric's unit. After a drift alarm the job
    rolls back when an earlier version beats the serving one on the holdout
    window by ``rollback_margin`` or more, in the same metric.
    """

    micro_batch_size: int = 256
    micro_batch_max_wait_s: float = 2.0
    holdout_fraction: float = 0.1
    holdout_window_size: int = 2000
    holdout_min_events: int = 200
    gate_every_micro_batches: int = 20
    gate_every_s: float = 30.0
    gate_metric: GateMetric = "log_loss"
    gate_tolerance: float = 0.0
    rollback_margin: float = 0.02
    rollback_versions_kept: int = 5
    rollback_cooldown_micro_batches: int = 20
    checkpoint_every_s: float = 5.0
    dedup_window_size: int = 200_000
    top_k: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        _at_least("micro_batch_size", self.micro_batch_size, 1)
        _at_least("holdout_window_size", self.holdout_window_size, 1)
        _at_least("holdout_min_events", self.holdout_min_events, 1)
        _at_least("gate_every_micro_batches", self.gate_every_micro_batches, 1)
        _at_least("rollback_versions_kept", self.rollback_versions_kept, 1)
        _at_least("dedup_window_size", self.dedup_window_size, 1)
        _at_least("top_k", self.top_k, 1)
        if self.gate_metric not in METRIC_FIELDS:
            raise ValueError(
                f"gate_metric must be one of {', '.join(METRIC_FIELDS)}, "
                f"got {self.gate_metric!r}"
            )
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(
                f"holdout_fraction must be in [0, 1), got {self.holdout_fraction!r}"
            )
        for name in (
            "micro_batch_max_wait_s",
            "gate_every_s",
            "checkpoint_every_s",
            "gate_tolerance",
            "rollback_margin",
        ):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.holdout_min_events > self.holdout_window_size:
            raise ValueError(
                f"holdout_min_events ({self.holdout_min_events}) must not exceed "
                f"holdout_window_size ({self.holdout_window_size})"
            )


def _at_least(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
