"""The learner stage of the streaming job, free of Beam.

``JobRuntime`` receives decoded events, ticks and pointer changes in arrival
order on one key, and does everything that must see the whole stream:
deduplication by event id, the holdout split, micro-batching, test-then-train
learning, the validation gate, publishing versions, automatic rollback,
answering prediction requests from the serving version, following the
registry's pointer, and checkpoints. The Beam pipeline (streaming/pipeline.py)
only feeds it.

Crash semantics: a checkpoint contains the learner, the serving version, the
holdout window, the open micro-batch, the window of seen event ids and the
counters, all as of one moment. After a restart the job continues from the
newest checkpoint. Events that reached the job after that checkpoint and
whose messages were acknowledged are not learned at all; no event is learned
twice, because the seen ids are restored with the weights.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import fastavro

from online_model.drift import DriftMonitor, DriftMonitorConfig, KswinConfig
from online_model.evaluation import ConfusionMatrix, Metrics
from online_model.gate import LOWER_IS_BETTER, METRIC_FIELDS, GateConfig, ValidationGate
from online_model.learner import STATE_FORMAT_NAME, LearnerStateError, OnlineLearner
from online_model.scored import Scored
from online_model.spec import FeatureSpec
from rollback.errors import (
    CorruptVersion,
    PointerConflict,
    RegistryError,
    VersionNotFound,
)
from rollback.manifest import ManifestFields
from rollback.state import ServingState
from streaming.checkpoint import CheckpointError, CheckpointStore
from streaming.holdout import HoldoutWindow
from streaming.job_config import JobConfig
from streaming.job_metrics import JobMetrics, version_text
from streaming.wire import DeadLetterReason

logger = logging.getLogger(__name__)

Event = dict[str, Any]
Ranked = list[tuple[str, float]]
Clock = Callable[[], float]
ACTOR = "job"
# Seconds between reads of the registry's pointer on ticks. Announcements
# bring a pointer change at once; this catches a change made without one.
# rollback/cli.py and rollback/README.md state this value to operators.
POINTER_CHECK_S = 5.0
# A label in a dead letter's detail and the log is cut to this many
# characters, so that the detail fits a Pub/Sub attribute.
MAX_SHOWN_LABEL_CHARS = 80


class VersionRegistry(Protocol):
    """The part of ``rollback.registry.Registry`` the job uses."""

    def serving(self) -> int | None: ...

    def state(self) -> ServingState: ...

    def is_paused(self) -> bool: ...

    def read(self, version: int | str) -> Any: ...

    def describe(self, version: int | str) -> Any: ...

    def publish(
        self,
        files: Mapping[str, bytes],
        manifest_fields: ManifestFields,
        actor: str,
        reason: str,
        *,
        move_pointer: bool = True,
        expected: Any = ...,
    ) -> int: ...

    def set_serving(
        self,
        version: int | str,
        actor: str,
        reason: str,
        *,
        expected: Any = ...,
        kind: str = "rollback",
        details: Mapping[str, Any] | None = None,
    ) -> Any: ...


class DecisionSink(Protocol):
    """Receives every decision and alarm of the job as a JSON-ready record."""

    def __call__(self, record: dict[str, Any]) -> None: ...


@dataclass
class EventBatch:
    """The events of one message (or several), as the decode stage emits them."""

    events: list[Event]
    dead_letters: dict[str, int] = field(default_factory=dict)
    messages: int = 1
    publish_time_s: float = 0.0


@dataclass(frozen=True)
class RejectedEvent:
    """A decoded event the runtime rejected, to be dead-lettered with the reason."""

    event: Event
    reason: str
    detail: str


@dataclass(frozen=True)
class Prediction:
    """Top-k roles for one prediction request; version None before any exists."""

    event_id: str
    ranked: Ranked
    version: int | None


@dataclass
class Account:
    """Counts that add up: every event read is in exactly one outcome.

    ``events_read == duplicates + held_out + learned + predictions + pending
    + refused_non_finite + over_label_limit``, where ``pending`` is the open
    micro-batch and ``over_label_limit`` counts the labelled events
    dead-lettered because their label would exceed ``JobConfig.max_labels``. Every
    message read is a data message (``messages_read``, which includes the
    dead-lettered ones) or a control message (a tick or a pointer notice).
    """

    messages_read: int = 0
    events_read: int = 0
    duplicates: int = 0
    held_out: int = 0
    learned: int = 0
    predictions: int = 0
    pending: int = 0
    refused_non_finite: int = 0
    over_label_limit: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    control_messages: int = 0
    micro_batches: int = 0
    # Candidates that met the gate, whatever the outcome; the last one's id
    # is "c" and this number.
    candidates_validated: int = 0
    versions_published: int = 0
    candidates_rejected: int = 0
    promotions_paused: int = 0
    rollbacks_automatic: int = 0
    pointer_changes_adopted: int = 0
    drift_alarms: int = 0
    alerts: int = 0
    checkpoints: int = 0
    checkpoints_failed: int = 0
    # Errors the learner stage caught and logged instead of raising.
    stage_errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def holdout_share(event_id: str) -> float:
    """Map an event id to a stable number in [0, 1) for the holdout split."""
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class JobRuntime:
    """One logical learner and everything around it; see the module."""

    def __init__(
        self,
        spec: FeatureSpec,
        config: JobConfig,
        registry: VersionRegistry,
        new_learner: Callable[[], OnlineLearner],
        load_learner: Callable[[Mapping[str, bytes]], OnlineLearner],
        checkpoints: CheckpointStore | None = None,
        decisions: DecisionSink | None = None,
        telemetry: Any | None = None,
        clock: Clock = time.time,
        code_version: str = "",
    ) -> None:
        self.spec = spec
        self.config = config
        self.registry = registry
        self.new_learner = new_learner
        self.load_learner = load_learner
        self.checkpoints = checkpoints
        self.decisions = decisions
        self.metrics = JobMetrics(telemetry)
        self.clock = clock
        self.code_version = code_version

        self.account = Account()
        self._label_excess_logged = False
        # When the labels the learner does not know were last counted, or
        # None to count them afresh.
        self._labels_counted_at: tuple[int, int] | None = None
        self.learner = new_learner()
        self.serving_version: int | None = None
        self.serving_learner: OnlineLearner | None = None
        self.recent_versions: OrderedDict[int, OnlineLearner] = OrderedDict()
        # Scores are kept for the serving version and every kept version.
        self.holdout = HoldoutWindow(
            config.holdout_window_size,
            kept_models=config.rollback_versions_kept + 2,
            id_field=spec.event_id_field,
        )
        self.pending: list[Event] = []
        # Set by finish(): later events are not this run's to learn.
        self.finished = False
        self.pending_publish_s: list[float] = []
        self.seen_ids: OrderedDict[str, None] = OrderedDict()
        self.drift = DriftMonitor(
            DriftMonitorConfig(
                kswin=KswinConfig(sample_every=config.kswin_sample_every),
                kswin_features=config.kswin_features,
            )
        )
        self.gate = ValidationGate(
            GateConfig(
                metric=config.gate_metric,
                tolerance=config.gate_tolerance,
                min_holdout_events=config.holdout_min_events,
            )
        )
        self.checkpoint_number = 0
        # The highest candidate number used. After a crash the restored
        # account may count fewer candidates than the killed run named, so a
        # restart sets this from its decision log and numbers go on from it.
        self.last_candidate_number = 0
        # Ticks seen by this process (not checkpointed): they show that the
        # pipeline delivers input, before any event has arrived.
        self.ticks_handled = 0

        now = clock()
        self._pending_since = now
        self._last_gate = now
        self._last_validation = -math.inf
        self._last_checkpoint = now
        # The error of the last pointer read that failed, until one succeeds.
        self._pointer_error: str | None = None
        # The last version the pointer named that was saved for other events.
        self.foreign_version: int | None = None
        # The serving version that a publish found missing from the registry.
        self._missing_parent: int | None = None
        # What the newest checkpoint holds, as _progress() gives it.
        self._checkpointed: tuple[Any, ...] | None = None
        self._batches_since_gate = 0
        self._learned_since_gate = 0
        self._rollback_cooldown = 0
        self._alert_cooldown = 0
        self._unserved_publish_s: list[float] = []
        self._event_time_range: tuple[int, int] | None = None
        self._adopted_at: tuple[int, float] | None = None
        self._last_pointer_check = now
        # Versions the pointer named that could not be loaded.
        self._unloadable: set[int] = set()
        # Labels of pending and held-out events that the learner does not
        # know, counted afresh when the learner has changed.
        self._new_labels: set[Any] = set()
        # Whether this process logged its first event over the label limit.
        self._label_limit_logged = False
        # Events rejected since the caller last took them.
        self.rejected: list[RejectedEvent] = []

    @property
    def learner(self) -> OnlineLearner:
        """The learner that trains: the candidate of the next gate."""
        return self._learner

    @learner.setter
    def learner(self, learner: OnlineLearner) -> None:
        self._learner = learner
        self._labels_counted_at = None
        limit = self.config.max_labels
        if learner.label_count > limit and not self._label_excess_logged:
            # A checkpoint or version from a run with a higher limit.
            self._label_excess_logged = True
            logger.warning(
                "the learner has %d labels, more than --max-labels %d: it keeps "
                "learning them, and events with any other label are "
                "dead-lettered as label-limit",
                learner.label_count,
                limit,
            )

    # ------------------------------------------------------------ inputs

    def handle_batch(self, batch: EventBatch) -> list[Prediction]:
        """Route the events of one or more messages; return the predictions
        for the unlabelled ones."""
        self.account.messages_read += batch.messages
        for reason, count in batch.dead_letters.items():
            self.account.dead_lettered[reason] = (
                self.account.dead_lettered.get(reason, 0) + count
            )
        requests: list[Event] = []
        over_limit_before = self.account.over_label_limit
        duplicates, held_out = self._route(batch, requests)
        predictions = self._answer(requests)
        dead_letters = dict(batch.dead_letters)
        over_limit = self.account.over_label_limit - over_limit_before
        if over_limit:
            dead_letters[DeadLetterReason.LABEL_LIMIT.value] = over_limit
        self.metrics.routed(
            len(batch.events),
            dead_letters,
            duplicates=duplicates,
            held_out=held_out,
            requests=len(requests),
        )
        while len(self.pending) >= self.config.micro_batch_size:
            self._learn_micro_batch(self.config.micro_batch_size)
        self._after_input()
        return predictions

    def handle_tick(self) -> None:
        """Close a micro-batch that waited too long; run due gates and checkpoints.

        Every ``POINTER_CHECK_S`` the tick also reads the registry's pointer,
        so a rollback made without an announcement is followed even when no
        events arrive.
        """
        self.ticks_handled += 1
        self.account.control_messages += 1
        now = self.clock()
        if now - self._last_pointer_check >= POINTER_CHECK_S:
            self._last_pointer_check = now
            self.follow_registry()
        self._after_input()

    def handle_pointer_notice(self) -> None:
        """Follow the registry's pointer after a notice that it may have moved."""
        self.account.control_messages += 1
        self.follow_registry()

    def finish(self) -> None:
        """Learn the open micro-batch, run a last gate and checkpoint.

        The registry's pointer is read first, so an operator's rollback made
        after the job's last input is adopted before the last gate and the
        summary names the version the registry serves.
        """
        self.follow_registry()
        if self.pending:
            self._learn_micro_batch(len(self.pending))
        self._run_gate()
        self.save_checkpoint()
        self.finished = True

    # ------------------------------------------------------------ routing

    def _route(self, batch: EventBatch, requests: list[Event]) -> tuple[int, int]:
        """Route each event of ``batch`` to its destination; return the numbers of
        duplicates and of held-out events."""
        id_field = self.spec.event_id_field
        label_field = self.spec.label_field
        fraction = self.config.holdout_fraction
        window = self.config.dedup_window_size
        seen_ids = self.seen_ids
        pending = self.pending
        duplicates = held_out = 0
        for event in batch.events:
            event_id = str(event[id_field])
            if event_id in seen_ids:
                duplicates += 1
                continue
            label = event.get(label_field)
            if label is not None and self._over_label_limit(label):
                # Its id is not remembered, so the event can be published
                # again, from the dead letter, once the limit is raised.
                self._reject_label(event, label)
                continue
            seen_ids[event_id] = None
            if len(seen_ids) > window:
                seen_ids.popitem(last=False)

            if label is None:
                requests.append(event)
            elif holdout_share(event_id) < fraction:
                self.holdout.append(event)
                held_out += 1
            else:
                if not pending:
                    self._pending_since = self.clock()
                pending.append(event)
                self.pending_publish_s.append(batch.publish_time_s)
        self.account.events_read += len(batch.events)
        self.account.duplicates += duplicates
        self.account.held_out += held_out
        self.account.pending = len(pending)
        return duplicates, held_out

    def _over_label_limit(self, label: Any) -> bool:
        """Return whether ``label`` is new and the job has ``max_labels`` labels.

        The job's labels are the learner's and those of the events waiting
        to be learned or in the holdout window.
        """
        learner = self.learner
        if learner.knows_label(label):
            return False
        # The labels the learner does not know are counted afresh after each
        # learned micro-batch and whenever the learner is replaced (the
        # learner setter clears the count), as by a rollback or a restore.
        state = (learner.label_count, self.account.micro_batches)
        if state != self._labels_counted_at:
            self._labels_counted_at = state
            label_field = self.spec.label_field
            self._new_labels = {
                e[label_field]
                for e in itertools.chain(self.pending, self.holdout)
                if not learner.knows_label(e[label_field])
            }
        if label in self._new_labels:
            return False
        if learner.label_count + len(self._new_labels) >= self.config.max_labels:
            return True
        self._new_labels.add(label)
        return False

    def _reject_label(self, event: Event, label: Any) -> None:
        self.account.over_label_limit += 1
        shown_label = repr(label)
        if len(shown_label) > MAX_SHOWN_LABEL_CHARS:
            shown_label = shown_label[:MAX_SHOWN_LABEL_CHARS] + "..."
        detail = (
            f"label {shown_label} is new, and the job has reached --max-labels "
            f"{self.config.max_labels}"
        )
        if not self._label_limit_logged:
            self._label_limit_logged = True
            logger.warning(
                "dead-lettered event %s: %s. Later events over the limit are "
                "counted as over_label_limit",
                event[self.spec.event_id_field],
                detail,
            )
        self.rejected.append(
            RejectedEvent(event, DeadLetterReason.LABEL_LIMIT.value, detail)
        )

    def take_rejected(self) -> list[RejectedEvent]:
        """Return the events rejected since the last call, and forget them."""
        rejected, self.rejected = self.rejected, []
        return rejected

    def _answer(self, requests: list[Event]) -> list[Prediction]:
        if not requests:
            return []
        ids = [str(event[self.spec.event_id_field]) for event in requests]
        self.account.predictions += len(requests)
        if self.serving_learner is None:
            return [Prediction(event_id, [], None) for event_id in ids]
        ranked = self.serving_learner.predict(requests, k=self.config.top_k)
        return [
            Prediction(event_id, top, self.serving_version)
            for event_id, top in zip(ids, ranked, strict=True)
        ]

    def _after_input(self) -> None:
        now = self.clock()
        waited_s = now - self._pending_since
        if self.pending and waited_s >= self.config.micro_batch_max_wait_s:
            self._learn_micro_batch(len(self.pending))
        since_gate_s = now - self._last_gate
        gate_due = self._batches_since_gate >= self.config.gate_every_micro_batches
        if not gate_due and self._learned_since_gate > 0:
            gate_due = since_gate_s >= self.config.gate_every_s
        # The spacing counts from the last gate that validated a candidate.
        since_validation_s = now - self._last_validation
        if gate_due and since_validation_s >= self.config.gate_min_interval_s:
            self._run_gate()
        if now - self._last_checkpoint >= self.config.checkpoint_every_s:
            if self._progress() == self._checkpointed:
                # An idle job would write the same checkpoint again, about
                # 17 MB every 5 s for the default learner.
                self._last_checkpoint = now
            else:
                self.save_checkpoint()

    # ------------------------------------------------------------ learning

    def _learn_micro_batch(self, size: int) -> None:
        batch = self.pending[:size]
        publish_times = self.pending_publish_s[:size]
        del self.pending[:size]
        del self.pending_publish_s[:size]
        self._pending_since = self.clock()

        started = time.perf_counter()
        report = self.learner.learn(batch)
        elapsed_s = time.perf_counter() - started

        if report.refused_non_finite:
            self.account.refused_non_finite += len(batch)
        else:
            self.account.learned += len(batch)
        self.account.pending = len(self.pending)
        self.account.micro_batches += 1
        self._batches_since_gate += 1
        self._learned_since_gate += len(batch)
        self._unserved_publish_s.extend(publish_times)
        self._note_event_times(report.scored)
        if self._adopted_at is not None:
            version, adopted_s = self._adopted_at
            self._record(
                "learned_from_adopted",
                version=version,
                adopted_to_learned_s=self.clock() - adopted_s,
            )
            self._adopted_at = None
        if self._rollback_cooldown > 0:
            self._rollback_cooldown -= 1
        if self._alert_cooldown > 0:
            self._alert_cooldown -= 1
        self.metrics.learned(report, len(batch), elapsed_s)

        alarms = self.drift.update(report.scored, batch)
        for alarm in alarms:
            self.account.drift_alarms += 1
            self._record(
                "drift_alarm", detector=alarm.detector, statistic=alarm.statistic
            )
        if alarms:
            self.confirm_drop()

    def _note_event_times(self, scored: Sequence[Scored]) -> None:
        """Widen the range of event times learned with the valid, labelled
        events of a micro-batch, which the learner scored."""
        if not scored:
            return
        times = [record.event_time_ms for record in scored]
        low, high = min(times), max(times)
        if self._event_time_range is not None:
            low = min(low, self._event_time_range[0])
            high = max(high, self._event_time_range[1])
        self._event_time_range = (low, high)

    # ------------------------------------------------------------ the gate

    def _holdout_metrics(self, learner: OnlineLearner) -> Metrics:
        return self._holdout_evaluation(learner)[0]

    def _holdout_evaluation(
        self, learner: OnlineLearner
    ) -> tuple[Metrics, ConfusionMatrix]:
        # Only the candidate learns. The serving and kept versions are never
        # trained, so the window keeps their results until it changes.
        return self.holdout.evaluate(learner, fixed=learner is not self.learner)

    def _run_gate(self) -> None:
        self._batches_since_gate = 0
        self._last_gate = self.clock()
        if len(self.holdout) < self.config.holdout_min_events:
            return
        if self._learned_since_gate == 0:
            return
        self._learned_since_gate = 0
        self._last_validation = self._last_gate
        adopted_before = self.account.pointer_changes_adopted
        self.follow_registry()
        if self.account.pointer_changes_adopted > adopted_before:
            # The learner now is a copy of the version just adopted, which
            # learned nothing since: publishing it would replace the
            # operator's choice with an identical new version.
            return
        if len(self.recent_versions) > 1:
            rollbacks = self.account.rollbacks_automatic
            self.confirm_drop(alert=False)
            if self.account.rollbacks_automatic > rollbacks:
                # The learner now is the version rolled back to: there is no
                # candidate to validate, only a copy of the serving version.
                return

        self.account.candidates_validated += 1
        self.last_candidate_number = max(
            self.last_candidate_number + 1, self.account.candidates_validated
        )
        candidate_id = f"c{self.last_candidate_number}"
        candidate, candidate_confusion = self._holdout_evaluation(self.learner)
        champion, champion_confusion = None, None
        if self.serving_learner is not None:
            champion, champion_confusion = self._holdout_evaluation(
                self.serving_learner
            )
        decision = self.gate.decide(candidate, champion)
        numbers: dict[str, Any] = {
            "candidate": candidate_id,
            "metric": decision.metric,
            "candidate_value": decision.candidate_value,
            "serving_value": decision.champion_value,
            "candidate_top1": candidate.top1_accuracy,
            "candidate_top5": candidate.top_k_hit_rate,
            "candidate_log_loss": candidate.log_loss,
            "holdout_events": candidate.n_events,
        }
        if champion is not None:
            numbers["serving_top1"] = champion.top1_accuracy
            numbers["serving_top5"] = champion.top_k_hit_rate
            numbers["serving_log_loss"] = champion.log_loss
        self.metrics.validated(
            candidate, champion, candidate_id, version_text(self.serving_version)
        )
        served_before = self.serving_version
        published = None
        if decision.promote:
            published = self._promote(candidate, champion, decision.reason, numbers)
        else:
            self._reject(decision.reason, numbers)

        # The report shows the matrix of the version serving after the gate,
        # or the candidate's while no version exists. After a lost publish
        # race the job serves a version it has not scored, so none is sent.
        event_time_ms = self._latest_event_time_ms()
        if published is not None:
            self.metrics.confusion(
                candidate_confusion, version_text(published), event_time_ms
            )
        elif self.serving_version is None:
            self.metrics.confusion(candidate_confusion, candidate_id, event_time_ms)
        elif self.serving_version == served_before and champion_confusion is not None:
            self.metrics.confusion(
                champion_confusion, version_text(served_before), event_time_ms
            )

    def _promote(
        self,
        candidate: Metrics,
        champion: Metrics | None,
        reason: str,
        numbers: dict[str, Any],
    ) -> int | None:
        """Publish the candidate; return its version, or None if not published."""
        if self._promotion_paused():
            self.account.promotions_paused += 1
            self._record("promotion_paused", reason=reason, **numbers)
            logger.info(
                "promotion paused: kept candidate %s in training, serving %s",
                numbers["candidate"],
                version_text(self.serving_version),
            )
            return None

        if self._parent_still_missing():
            self._record(
                "publish_blocked",
                reason=f"the serving version {version_text(self.serving_version)} "
                "is missing or damaged in the registry; nothing is published "
                "until it is restored or an operator serves an intact version "
                "(rollback --to)",
                **numbers,
            )
            return None
        blocked = self._pointer_unloadable()
        if blocked is not None:
            # Publishing would lose the race with the pointer every time and
            # leave an unused version behind at every gate.
            self._record(
                "publish_blocked",
                reason=f"the registry serves v{blocked}, which this job cannot "
                "load; nothing is published until the pointer moves "
                "(rollback --to)",
                **numbers,
            )
            return None

        fields = self._manifest_fields(candidate, champion)
        # The learner is serialised once, for the registry. The serving copy
        # is a clone in memory with the same state, which is faster than
        # parsing the files again.
        files = self.learner.to_files()
        try:
            version = self.registry.publish(
                files,
                fields,
                ACTOR,
                reason,
                expected=self.serving_version,
            )
        except PointerConflict as conflict:
            # An operator moved the pointer since the job last looked: the
            # stored version stays unused and the job follows the operator.
            logger.warning("publish lost a race with a pointer change: %s", conflict)
            self._record("publish_lost_race", reason=str(conflict), **numbers)
            self.follow_registry()
            return None
        except (VersionNotFound, CorruptVersion) as error:
            # The parent, the version the job serves, was deleted or damaged
            # in the registry. Every later publish would fail the same way
            # until an operator moves the pointer, so the job stops trying.
            serving = self.serving_version
            self._missing_parent = serving
            reason = (
                f"{error}: the serving version {version_text(serving)} is missing "
                "or damaged in the registry, so nothing is published until it is "
                "restored or an operator serves an intact version (rollback --to)"
            )
            logger.error("failed to publish %s: %s", numbers["candidate"], reason)
            self._record("publish_failed", reason=reason, **numbers)
            return None
        except RegistryError as error:
            # A full disk, for example. The candidate keeps training and meets
            # the next gate. Raising here would make the runner process the
            # input again and count its events twice.
            logger.error("failed to publish %s: %s", numbers["candidate"], error)
            self._record("publish_failed", reason=str(error), **numbers)
            return None

        parent = self.serving_version
        self.account.versions_published += 1
        self._set_serving(version, self._copy(self.learner))

        freshness = sorted(self.clock() - t for t in self._unserved_publish_s if t)
        self._unserved_publish_s = []
        self._record(
            "promotion",
            version=version,
            parent=parent,
            reason=reason,
            freshness_median_s=_quantile(freshness, 0.5),
            freshness_p95_s=_quantile(freshness, 0.95),
            freshness_events=len(freshness),
            freshness_sample_s=_sample(freshness, 100),
            **numbers,
        )
        logger.info(
            "published candidate %s as v%d (parent %s): %s",
            numbers["candidate"],
            version,
            version_text(parent),
            reason,
        )
        return version

    def _reject(self, reason: str, numbers: dict[str, Any]) -> None:
        self.account.candidates_rejected += 1
        if self.serving_learner is not None:
            self.learner = self._copy(self.serving_learner)
        self._unserved_publish_s = []
        self._record(
            "rejection", serving_version=self.serving_version, reason=reason, **numbers
        )
        logger.info(
            "rejected candidate %s, kept %s: %s",
            numbers["candidate"],
            version_text(self.serving_version),
            reason,
        )

    def _manifest_fields(
        self, candidate: Metrics, champion: Metrics | None
    ) -> ManifestFields:
        low_high = self._event_time_range
        return ManifestFields(
            fingerprint=self.learner.fingerprint,
            state_format=STATE_FORMAT_NAME,
            events_count=self.account.learned,
            event_time_min=None if low_high is None else _utc(low_high[0]),
            event_time_max=None if low_high is None else _utc(low_high[1]),
            holdout_metrics=_finite(candidate.as_dict()),
            champion_metrics=None if champion is None else _finite(champion.as_dict()),
            label_vocabulary=tuple(self.learner.labels),
            code_version=self.code_version,
            parent=self.serving_version,
        )

    # ------------------------------------------------------------ serving

    def _set_serving(self, version: int, learner: OnlineLearner) -> None:
        self.serving_version = version
        self.serving_learner = learner
        self.recent_versions[version] = learner
        self.recent_versions.move_to_end(version)
        while len(self.recent_versions) > self.config.rollback_versions_kept:
            self.recent_versions.popitem(last=False)
        self.metrics.serving(version)

    def follow_registry(self) -> None:
        """Adopt the registry's serving version when it differs from the job's.

        The adoption record names the change that moved the pointer, such as
        an operator's rollback with its actor and reason.
        """
        try:
            state = self.registry.state()
        except RegistryError as error:
            # Read every few seconds: logged when the failure starts or changes.
            if str(error) != self._pointer_error:
                self._pointer_error = str(error)
                logger.warning(
                    "cannot read the serving pointer: %s (logged again only "
                    "when this changes)",
                    error,
                )
            return
        if self._pointer_error is not None:
            logger.info("the serving pointer is readable again")
            self._pointer_error = None
        serving = state.serving
        # A version the pointer no longer names gets a new record and log line
        # if it fails to load again later.
        self._unloadable &= {serving}
        if serving is None or serving == self.serving_version:
            return
        change = next(
            (
                c
                for c in reversed(state.history)
                if c.moves_pointer and c.to_version == serving
            ),
            None,
        )
        if change is None:
            self._adopt(serving, reason="serving pointer moved")
            return
        reason = f"{change.kind} by {change.actor}"
        if change.reason:
            reason += f": {change.reason}"
        self._adopt(serving, reason=reason, actor=change.actor, change=change.kind)

    def _adopt(self, version: int, reason: str, **details: str) -> None:
        learner = self.recent_versions.get(version)
        if learner is None:
            try:
                learner = self._load(self.registry.read(version).files)
            except (RegistryError, LearnerStateError) as error:
                # Keep serving what works rather than stop learning. The
                # pointer is read every few seconds, so each version that
                # cannot be loaded is recorded and logged once.
                if isinstance(error, ForeignLearner):
                    self.foreign_version = version
                if version not in self._unloadable:
                    self._unloadable.add(version)
                    self._record("adopt_failed", version=version, error=str(error))
                    logger.error(
                        "cannot load v%d to adopt it: %s. The job serves %s and "
                        "retries at each pointer check",
                        version,
                        error,
                        version_text(self.serving_version),
                    )
                return
        previous = self.serving_version
        # The operator chose this version: versions the job kept in memory
        # must not become automatic rollback targets that would undo it.
        self.recent_versions.clear()
        self._set_serving(version, learner)
        self.learner = self._copy(learner)
        self.drift.reset()
        self._unserved_publish_s = []
        self._adopted_at = (version, self.clock())
        self.account.pointer_changes_adopted += 1
        self._record(
            "adopted", version=version, previous=previous, reason=reason, **details
        )
        logger.info("adopted v%d (was %s): %s", version, version_text(previous), reason)

    def _goodness(self, learner: OnlineLearner) -> float:
        """Return the gate metric on the holdout window, signed so that
        higher is better."""
        metric = self.config.gate_metric
        value = float(getattr(self._holdout_metrics(learner), METRIC_FIELDS[metric]))
        return -value if metric in LOWER_IS_BETTER else value

    def confirm_drop(self, alert: bool = True) -> None:
        """Check the serving version against the earlier ones kept in memory.

        The job rolls back to the best of them when it beats the serving
        version on the holdout window by ``rollback_margin``, and a cooldown
        of ``rollback_cooldown_micro_batches`` follows, so that one incident
        makes one rollback. After a drift alarm (``alert``) with no better
        earlier version the drift is taken as real: the job keeps learning
        and records an alert. Alerts have their own cooldown of the same
        length, which does not hold back a rollback. Every gate also runs
        this check without ``alert``, so a bad version that passed the gate
        on a holdout window that was bad itself is caught once the window
        has moved on.
        """
        if self.serving_learner is None or self.serving_version is None:
            return
        if self._rollback_cooldown > 0:
            return
        if len(self.holdout) < self.config.holdout_min_events:
            return
        if self._promotion_paused():
            # A pause keeps the pointer where the operator left it.
            return
        serving_score = self._goodness(self.serving_learner)
        scores = {
            version: self._goodness(learner)
            for version, learner in self.recent_versions.items()
            if version != self.serving_version
        }
        best = max(scores, key=lambda v: scores[v], default=None)
        metric = self.config.gate_metric
        if best is None or scores[best] < serving_score + self.config.rollback_margin:
            if not alert or self._alert_cooldown > 0:
                return
            self._alert_cooldown = self.config.rollback_cooldown_micro_batches
            self.drift.reset()
            self.account.alerts += 1
            self._record(
                "alert",
                reason="drift without a better earlier version: adapting",
                metric=metric,
                serving_version=self.serving_version,
                serving_value=_unsign(metric, serving_score),
                best_earlier_version=best,
                best_earlier_value=None
                if best is None
                else _unsign(metric, scores[best]),
            )
            logger.warning(
                "drift on v%s and no better earlier version: adapting",
                self.serving_version,
            )
            return
        self._rollback_cooldown = self.config.rollback_cooldown_micro_batches
        self._alert_cooldown = self.config.rollback_cooldown_micro_batches
        self.drift.reset()
        trigger = "drift alarm" if alert else "gate check"
        self._roll_back(
            best, _unsign(metric, serving_score), _unsign(metric, scores[best]), trigger
        )

    def _parent_still_missing(self) -> bool:
        """Return whether the serving version, found missing or damaged at an
        earlier publish, still is; forget it once it is intact or no longer
        serves."""
        if self._missing_parent is None:
            return False
        if self._missing_parent == self.serving_version:
            try:
                self.registry.describe(self._missing_parent)
            except RegistryError:
                return True
        self._missing_parent = None
        return False

    def _pointer_unloadable(self) -> int | None:
        """Return the version the pointer names if the job could not load it."""
        if not self._unloadable:
            return None
        try:
            pointer = self.registry.serving()
        except RegistryError:
            return None
        return pointer if pointer in self._unloadable else None

    def _promotion_paused(self) -> bool:
        try:
            return self.registry.is_paused()
        except RegistryError as error:
            logger.warning("cannot read the pause flag, assuming paused: %s", error)
            return True

    def _roll_back(
        self, target: int, serving_value: float, target_value: float, trigger: str
    ) -> None:
        source = self.serving_version
        metric = self.config.gate_metric
        reason = (
            f"{trigger}: on the holdout window {metric} of v{source} is "
            f"{serving_value:.4f}, of v{target} {target_value:.4f}"
        )
        details = {
            "metric": metric,
            "serving_value": serving_value,
            "target_value": target_value,
        }
        try:
            self.registry.set_serving(
                target,
                ACTOR,
                reason,
                expected=source,
                kind="auto_rollback",
                details=details,
            )
        except RegistryError as error:
            logger.warning("automatic rollback to v%d failed: %s", target, error)
            self.follow_registry()
            return

        self.account.rollbacks_automatic += 1
        learner = self.recent_versions[target]
        self._set_serving(target, learner)
        self.learner = self._copy(learner)
        self._unserved_publish_s = []
        self._record(
            "rollback", from_version=source, to_version=target, reason=reason, **details
        )
        logger.warning(
            "rolled back from %s to v%d: %s", version_text(source), target, reason
        )

    # ------------------------------------------------------------ records

    def _record(self, kind: str, **fields: Any) -> None:
        record = {"time": self.clock(), "kind": kind, **fields}
        if self.decisions is not None:
            self.decisions(record)
        self.metrics.decided(kind, fields, self._latest_event_time_ms())

    def _latest_event_time_ms(self) -> int | None:
        """Return the latest event time learned so far, the decisions' time."""
        return None if self._event_time_range is None else self._event_time_range[1]

    # ------------------------------------------------------------ loading

    def _load(self, files: Mapping[str, bytes]) -> OnlineLearner:
        """Load a learner from a version or checkpoint; raise LearnerStateError
        when it was saved for events other than this job's."""
        with _quiet_learner_setup():
            learner = self.load_learner(files)
        problem = spec_mismatch(learner.spec, self.spec)
        if problem is not None:
            raise ForeignLearner(
                f"the learner was saved for the feature spec {learner.spec.name!r}, "
                f"which does not fit this job's events (spec {self.spec.name!r}): "
                f"{problem}"
            )
        return learner

    def _copy(self, learner: OnlineLearner) -> OnlineLearner:
        return learner.clone()

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> None:
        """Write the whole state as the next checkpoint."""
        self._last_checkpoint = self.clock()
        if self.checkpoints is None:
            return
        self.checkpoint_number += 1
        self.account.checkpoints += 1
        files = {f"learner.{k}": v for k, v in self.learner.to_files().items()}
        files["holdout.avro"] = self._events_to_avro(list(self.holdout))
        files["pending.avro"] = self._events_to_avro(self.pending)
        files["state.json"] = json.dumps(self._state_dict()).encode("utf-8")
        try:
            self.checkpoints.save(self.checkpoint_number, files)
        except CheckpointError as error:
            # The next checkpoint is tried after the usual interval. Raising
            # would make the runner process the input again.
            self.checkpoint_number -= 1
            self.account.checkpoints -= 1
            self.account.checkpoints_failed += 1
            logger.error("%s. The job goes on and tries at the next checkpoint", error)
            self._record("checkpoint_failed", error=str(error))
            return
        self._checkpointed = self._progress()
        self._record("checkpoint", number=self.checkpoint_number, **self._totals())

    def restore(self, number: int) -> None:
        """Load checkpoint ``number`` into this runtime, which must be new."""
        if self.checkpoints is None:
            raise ValueError("restore needs a checkpoint store")
        files = self.checkpoints.load(number)

        learner_files = {
            name.removeprefix("learner."): data
            for name, data in files.items()
            if name.startswith("learner.")
        }
        try:
            self.learner = self._load(learner_files)
        except ForeignLearner as error:
            # Not the registry's fault: the checkpoint is another job's.
            raise LearnerStateError(str(error)) from error
        self.holdout.replace(self._avro_to_events(files["holdout.avro"]))
        self.pending = self._avro_to_events(files["pending.avro"])

        state = json.loads(files["state.json"])
        self.pending_publish_s = [0.0] * len(self.pending)
        self.seen_ids = OrderedDict((event_id, None) for event_id in state["seen_ids"])
        self.account = Account(**state["account"])
        self.checkpoint_number = number
        if state["event_time_range"] is not None:
            low, high = state["event_time_range"]
            self._event_time_range = (low, high)

        serving = state["serving_version"]
        if serving is not None and not self._restore_serving(serving):
            serving = None
        self._record("restored", number=number, **self._totals())
        logger.info(
            "restored checkpoint %d: %d events learned, serving %s",
            number,
            self.account.learned,
            version_text(serving),
        )
        self._checkpointed = self._progress()
        self._skip_pending_in_pointer_version()
        self.follow_registry()
        self._screen_restored_pending()

    def _screen_restored_pending(self) -> None:
        """Dead-letter the restored pending events whose labels no longer fit.

        A run with a higher --max-labels admitted them.
        """
        label_field = self.spec.label_field
        pending = self.pending
        publish_s = self.pending_publish_s
        # Each event is checked as when it was routed: against the learner's
        # labels and those of the held-out events and the events kept so far.
        self.pending, self.pending_publish_s = [], []
        self._labels_counted_at = None
        rejected = 0
        for event, published in zip(pending, publish_s, strict=True):
            if self._over_label_limit(event[label_field]):
                self.account.pending -= 1
                self._reject_label(event, event[label_field])
                # As for an event rejected when routed, so that its dead
                # letter can be published again once the limit is raised.
                self.seen_ids.pop(str(event[self.spec.event_id_field]), None)
                rejected += 1
                continue
            self.pending.append(event)
            self.pending_publish_s.append(published)
        if rejected:
            self.metrics.routed(
                0,
                {DeadLetterReason.LABEL_LIMIT.value: rejected},
                duplicates=0,
                held_out=0,
                requests=0,
            )

    def _restore_serving(self, version: int) -> bool:
        """Serve ``version``, the checkpoint's serving version; return whether
        it could be loaded.

        A version damaged since the checkpoint must not stop the restart: the
        job then follows the registry's pointer, which an operator can move.
        """
        try:
            loaded = self.registry.read(version)
            self._set_serving(version, self._load(loaded.files))
        except (RegistryError, LearnerStateError) as error:
            self._unloadable.add(version)
            self._record("restore_serving_failed", version=version, error=str(error))
            logger.error(
                "cannot load v%d, the checkpoint's serving version: %s. The job "
                "follows the registry's pointer; if it names v%d, serve another "
                "version with rollback --to",
                version,
                error,
                version,
            )
            return False
        return True

    def _skip_pending_in_pointer_version(self) -> None:
        """Drop the restored pending events that the version the pointer names
        has learned already.

        A version published after the checkpoint, before a crash, learned
        the checkpoint's pending events first, in order: its manifest counts
        the events the job had learned when it was published. Adopting it
        and learning them again would count them twice.
        """
        try:
            pointer = self.registry.serving()
            if pointer is None or pointer == self.serving_version:
                return
            learned_then = self.registry.describe(pointer).fields.events_count
        except RegistryError as error:
            logger.warning("cannot read the serving version's manifest: %s", error)
            return
        skipped = min(max(learned_then - self.account.learned, 0), len(self.pending))
        if skipped == 0:
            return
        del self.pending[:skipped]
        del self.pending_publish_s[:skipped]
        self.account.learned += skipped
        self.account.pending = len(self.pending)
        self._record("skipped_pending", version=pointer, events=skipped)
        logger.info(
            "skipped %d restored pending events: v%d, published after the "
            "checkpoint, learned them already",
            skipped,
            pointer,
        )

    def _state_dict(self) -> dict[str, Any]:
        return {
            "serving_version": self.serving_version,
            "seen_ids": list(self.seen_ids),
            "account": self.account.to_dict(),
            "event_time_range": self._event_time_range,
        }

    def _progress(self) -> tuple[Any, ...]:
        """Return what a checkpoint would hold that ticks do not change.

        Every event, dead letter, decision and adoption moves a count of the
        account; ticks and checkpoints move only their own.
        """
        counts = self.account.to_dict()
        for name in ("control_messages", "checkpoints", "checkpoints_failed"):
            counts.pop(name)
        return (self.serving_version, json.dumps(counts, sort_keys=True))

    def _totals(self) -> dict[str, Any]:
        return {
            "events_read": self.account.events_read,
            "learned": self.account.learned,
            "pending": len(self.pending),
        }

    def _events_to_avro(self, events: list[Event]) -> bytes:
        buffer = io.BytesIO()
        fastavro.writer(buffer, fastavro.parse_schema(dict(self.spec.schema)), events)
        return buffer.getvalue()

    def _avro_to_events(self, data: bytes) -> list[Event]:
        records = fastavro.reader(io.BytesIO(data))
        return [cast(Event, record) for record in records]


class _LearnerSetupFilter(logging.Filter):
    """Drop the learner's INFO lines while this thread loads a stored learner.

    Rebuilding a learner from files logs its device and every label of the
    stored vocabulary as new, which would repeat at every adoption of a
    version from the registry. Warnings and errors still pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.quiet = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        loading = getattr(self.quiet, "loading", False)
        return record.levelno >= logging.WARNING or not loading


_LEARNER_SETUP_FILTER = _LearnerSetupFilter()
logging.getLogger(OnlineLearner.__module__).addFilter(_LEARNER_SETUP_FILTER)


@contextmanager
def _quiet_learner_setup() -> Iterator[None]:
    _LEARNER_SETUP_FILTER.quiet.loading = True
    try:
        yield
    finally:
        _LEARNER_SETUP_FILTER.quiet.loading = False


def _unsign(metric: str, score: float) -> float:
    return -score if metric in LOWER_IS_BETTER else score


def _finite(values: Mapping[str, float | int]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and math.isfinite(value)
    }


def _sample(values: Sequence[float], size: int) -> list[float]:
    """Return ``size`` values spread evenly over sorted ``values``, rounded."""
    if len(values) <= size:
        return [round(v, 3) for v in values]
    step = len(values) / size
    return [round(values[int(i * step)], 3) for i in range(size)]


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, int(q * len(values)))
    return values[index]


def _utc(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


class ForeignLearner(LearnerStateError):
    """A learner saved for events other than the job's, by spec_mismatch."""


def spec_mismatch(saved: FeatureSpec, job: FeatureSpec) -> str | None:
    """Return why a learner saved with spec ``saved`` cannot learn the events
    of a job with spec ``job``, or None when it can.

    The learner checks each event against its own Avro schema and rejects
    one that lacks a field of it, even a field no feature uses. So it must
    find its id, time and label fields, and every field of its schema with
    the same Avro type, in the job's events. Feature settings may differ: a
    restarted job keeps the settings its learner was saved with.
    """
    for role, saved_name, job_name in (
        ("id", saved.event_id_field, job.event_id_field),
        ("time", saved.event_time_field, job.event_time_field),
        ("label", saved.label_field, job.label_field),
    ):
        if saved_name != job_name:
            return f"its event {role} field is {saved_name!r}, the job's {job_name!r}"
    differing = [
        name
        for name, avro_field in saved.avro_fields.items()
        if name not in job.avro_fields
        or job.avro_fields[name].base_type != avro_field.base_type
    ]
    if differing:
        return (
            "the job's events lack or type differently the fields "
            + ", ".join(differing[:5])
            + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
        )
    return None
