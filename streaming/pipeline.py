"""The Beam streaming pipeline: Pub/Sub events in, predictions and versions out.

::

    ReadEvents -> DecodeEvents --dead letters--> MergeDeadLetters -> WriteDeadLetters
                       |                                ^
    (ReadTicks) -------+--> MergeLearnerInputs          | events over the
    (ReadPointerChanges)+   -> KeyForLearner -> Learn --+ label limit
                                                  |
                                 WritePredictions <+

Decoding runs in parallel. Everything after it goes to one key, because one
logical model learns from the whole stream. ``Learn`` hands the inputs to a
``JobRuntime`` (streaming/runtime.py) kept per process, because the
DirectRunner creates new DoFn instances for nearly every bundle.

On the DirectRunner, every Pub/Sub read of an empty subscription blocks the
whole runner for up to 30 s (its pull has a 30 s timeout), and
processing-time timers fire only when a read returns. So locally the job
has one source: ticks (every half second) and notices of pointer changes
travel on the events topic as control messages, which ``streamlearn run``
publishes with no data and the run's control token. A message with the
control attribute but another token (neither this run's nor that of an
earlier run in the same run folder), data or value is dead-lettered as
``invalid-control``. On Dataflow (``control="separate"``) ticks come from Beam's
PeriodicImpulse and notices from the model-versions subscription. The
transform names are stable, so that a running Dataflow job can be replaced
with ``--update``.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.io.gcp.pubsub import PubsubMessage, ReadFromPubSub, WriteToPubSub
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from streaming.decisions import DecisionLog
from streaming.job_config import JobConfig
from streaming.topics import JobTopics

logger = logging.getLogger(__name__)

LEARNER_KEY = "learner"
DEAD_LETTER_TAG = "dead_letter"
# Attribute that marks a control message on the events topic, and its values.
CONTROL_ATTRIBUTE = "streamlearn-control"
CONTROL_TICK = "tick"
CONTROL_POINTER = "pointer"
# Attribute with the token of the run that sent a control message. A message
# with CONTROL_ATTRIBUTE that is not a control message of this run is
# dead-lettered with INVALID_CONTROL_REASON.
CONTROL_TOKEN_ATTRIBUTE = "streamlearn-control-token"
INVALID_CONTROL_REASON = "invalid-control"
VERSION_ATTRIBUTE = "model_version"


@dataclass(frozen=True)
class JobSettings:
    """Everything a worker needs to build the job's stages; picklable."""

    job_name: str
    project: str
    spec_name: str
    registry_url: str
    run_dir: str
    config: JobConfig = field(default_factory=JobConfig)
    schema_folder: str | None = None
    device: str = "cpu"
    announce: bool = True
    metrics_file: bool = True
    # The value of CONTROL_TOKEN_ATTRIBUTE in this run's control messages. It
    # is empty when no control message may arrive on the events topic.
    control_token: str = ""
    # A local folder or gs://bucket/prefix; empty means RUN_DIR/checkpoints.
    checkpoint_location: str = ""
    # Control tokens of earlier runs in the same run folder. Their ticks and
    # notices, still on the topic after a restart, are taken as control
    # messages rather than dead-lettered.
    earlier_control_tokens: tuple[str, ...] = ()

    @property
    def topics(self) -> JobTopics:
        return JobTopics(self.project, self.job_name)


@dataclass(frozen=True)
class Tick:
    """A clock signal for the learner stage; carries nothing."""


@dataclass(frozen=True)
class PointerNotice:
    """A message on the model-versions topic: the serving pointer may have moved."""


# ---------------------------------------------------------------- decoding


class DecodeEvents(beam.DoFn):
    """Decode one Pub/Sub message into an EventBatch and dead letters."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        self._decoder: Any = None

    def setup(self) -> None:
        self._decoder = shared_decoder(self.settings)

    def process(self, message: PubsubMessage) -> Iterator[Any]:
        from streaming.runtime import EventBatch

        attributes = message.attributes or {}
        if CONTROL_ATTRIBUTE in attributes:
            problem = control_problem(
                message,
                self.settings.control_token,
                self.settings.earlier_control_tokens,
            )
            if problem is None:
                control = attributes[CONTROL_ATTRIBUTE]
                yield Tick() if control == CONTROL_TICK else PointerNotice()
                return
            logger.warning("dead-lettered message %s: %s", message.message_id, problem)
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER_TAG, _invalid_control_letter(message, problem)
            )
            yield EventBatch([], {INVALID_CONTROL_REASON: 1}, 1, _publish_s(message))
            return
        try:
            decoded = self._decoder.decode(message.data, message.attributes or {})
        except Exception as error:  # a bug must not stop the stream either
            logger.exception("decoder failed on message %s", message.message_id)
            decoded = _failed_decode(message, error)
        reasons: dict[str, int] = {}
        for letter in decoded.dead_letters:
            reasons[letter.reason.value] = reasons.get(letter.reason.value, 0) + 1
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER_TAG, PubsubMessage(letter.data, letter.to_attributes())
            )
        yield EventBatch(decoded.events, reasons, 1, _publish_s(message))


def _publish_s(message: PubsubMessage) -> float:
    publish_time = message.publish_time
    return publish_time.timestamp() if publish_time else time.time()


def control_problem(
    message: PubsubMessage, token: str, earlier_tokens: tuple[str, ...] = ()
) -> str | None:
    """Return why a message with the control attribute is not a control
    message of this run or of an earlier run in its folder, or None when it
    is one."""
    attributes = message.attributes or {}
    control = attributes.get(CONTROL_ATTRIBUTE)
    if control not in (CONTROL_TICK, CONTROL_POINTER):
        return (
            f"invalid {CONTROL_ATTRIBUTE} {control!r}: expected "
            f"{CONTROL_TICK!r} or {CONTROL_POINTER!r}"
        )
    if not token:
        return "this job takes no control messages on its events topic"
    if attributes.get(CONTROL_TOKEN_ATTRIBUTE) not in (token, *earlier_tokens):
        return f"missing or wrong {CONTROL_TOKEN_ATTRIBUTE}: not sent by this run"
    if message.data:
        return f"a control message carries no data, got {len(message.data)} bytes"
    return None


def _invalid_control_letter(message: PubsubMessage, problem: str) -> PubsubMessage:
    from streaming.wire import DETAIL_ATTRIBUTE, REASON_ATTRIBUTE

    attributes = dict(message.attributes or {})
    attributes[REASON_ATTRIBUTE] = INVALID_CONTROL_REASON
    attributes[DETAIL_ATTRIBUTE] = problem
    return PubsubMessage(message.data, attributes)


def _failed_decode(message: PubsubMessage, error: Exception) -> Any:
    from streaming.wire import DeadLetter, DeadLetterReason, DecodedMessage

    letter = DeadLetter(
        DeadLetterReason.UNDECODABLE,
        f"decoder failed: {type(error).__name__}: {error}",
        message.data,
        dict(message.attributes or {}),
    )
    return DecodedMessage([], [letter])


_DECODERS: dict[tuple[str, str | None, Any], Any] = {}
_DECODERS_LOCK = threading.Lock()


def shared_decoder(settings: JobSettings) -> Any:
    """Return this process's decoder for the job's spec, schema folder and limits.

    The runner sets up a new DecodeEvents for nearly every bundle, so the
    decoder (and the reading of the schema folder) is built once per process.
    """
    key = (settings.spec_name, settings.schema_folder, settings.config.decode_limits)
    with _DECODERS_LOCK:
        decoder = _DECODERS.get(key)
        if decoder is None:
            decoder = build_decoder(settings)
            _DECODERS[key] = decoder
        return decoder


def build_decoder(settings: JobSettings) -> Any:
    """Return the MessageDecoder for the job's spec, with its validator."""
    from online_model.events import NEEDS_CHECK, EventScreen, check_event, rejecting
    from online_model.spec import load_spec
    from streaming.schema_registry import SchemaRegistry
    from streaming.wire import MessageDecoder

    spec = load_spec(settings.spec_name)
    registry = (
        SchemaRegistry.from_folder(settings.schema_folder)
        if settings.schema_folder
        else SchemaRegistry()
    )

    def validate(event: dict[str, Any]) -> list[str]:
        problem = rejecting(check_event(event, spec))
        return [] if problem is None else [f"{problem.field}: {problem.detail}"]

    # The screen passes, column by column, the events that nothing rejects,
    # the same test the learner applies before it learns.
    screen = EventScreen(spec)

    def prescreen(events: list[dict[str, Any]]) -> list[bool]:
        return [status != NEEDS_CHECK for status in screen.screen_batch(events)]

    return MessageDecoder(
        spec.schema,
        registry,
        validate,
        limits=settings.config.decode_limits,
        prescreen=prescreen,
    )


# ---------------------------------------------------------------- learning


class _RuntimeSlot:
    """A process's JobRuntime, with the lock that serialises access to it."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.lock = threading.Lock()


_SLOTS: dict[str, _RuntimeSlot] = {}
_SLOTS_LOCK = threading.Lock()


def runtime_slot(settings: JobSettings) -> _RuntimeSlot:
    """Return this process's runtime for the job, building it on first use."""
    with _SLOTS_LOCK:
        slot = _SLOTS.get(settings.job_name)
        if slot is None:
            slot = _RuntimeSlot(build_runtime(settings))
            _SLOTS[settings.job_name] = slot
            freeze_long_lived_objects()
        return slot


def freeze_long_lived_objects() -> None:
    """Collect garbage, then hide every object alive now from the collector.

    After start-up the process contains about 460,000 long-lived objects (Beam,
    gRPC, torch, the runtime), and every full collection walked all of them.
    It took 0.26 to 0.35 s in benchmarks/streaming_throughput.py on a 2-core
    machine, while the learner stage waited. Frozen objects are still freed
    by reference counting, but a reference cycle among them is never
    collected, hence the collection first.
    """
    gc.collect()
    gc.freeze()


def build_runtime(settings: JobSettings) -> Any:
    """Build the job's JobRuntime and restore its newest checkpoint, if any."""
    from online_model.learner import STATE_FORMAT_NAME, OnlineLearner
    from online_model.spec import load_spec
    from rollback.announce import PubSubAnnouncer
    from rollback.registry import open_registry
    from streaming import monitoring as mon
    from streaming.checkpoint import CheckpointStore
    from streaming.runtime import ForeignLearner, JobRuntime

    spec = load_spec(settings.spec_name)
    announcer = (
        PubSubAnnouncer(settings.topics.model_versions_topic)
        if settings.announce
        else None
    )
    registry = open_registry(settings.registry_url, create=True, announcer=announcer)
    run_dir = Path(settings.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(settings.checkpoint_location or run_dir / "checkpoints")
    decisions = DecisionLog(run_dir / "decisions.jsonl")
    telemetry = mon.shared_telemetry(
        mon.TelemetryConfig(
            job=settings.job_name,
            model=settings.spec_name,
            run_dir=run_dir if settings.metrics_file else None,
            beam=True,
            resource_interval_s=5.0,
        )
    )
    device = settings.device
    seed = settings.config.seed

    runtime = JobRuntime(
        spec,
        settings.config,
        registry,
        new_learner=lambda: OnlineLearner(spec, seed=seed, device=device),
        load_learner=lambda files: OnlineLearner.from_files(files, device=device),
        checkpoints=store,
        decisions=decisions,
        telemetry=telemetry,
    )
    latest = store.latest()
    if latest is not None:
        runtime.restore(latest)
    else:
        runtime.follow_registry()
    if runtime.foreign_version is not None:
        # Another job's registry: recording this job's fingerprint would make
        # that job's rollbacks fail its compatibility check.
        raise ForeignLearner(
            f"the registry {settings.registry_url} serves "
            f"v{runtime.foreign_version}, a learner saved for other events "
            "(see the adopt_failed line above); give this job its own --registry"
        )
    # Recorded after the restore: a learner from a checkpoint or a version
    # keeps the settings it was saved with, which may differ from the defaults.
    registry.set_running_fingerprint(
        runtime.learner.fingerprint, actor="job", state_format=STATE_FORMAT_NAME
    )
    # A run killed before its first checkpoint has named candidates too.
    runtime.last_candidate_number = decisions.last_candidate_number()
    return runtime


class Learn(beam.DoFn):
    """Feed the learner stage; emit one prediction message per request, and a
    dead letter per event the runtime rejected (tagged DEAD_LETTER_TAG)."""

    CHECKPOINT = ReadModifyWriteStateSpec("checkpoint_number", VarIntCoder())

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def process(
        self,
        keyed: tuple[str, Any],
        checkpoint: Any = beam.DoFn.StateParam(CHECKPOINT),  # noqa: B008 (Beam API)
    ) -> Iterator[Any]:
        from streaming.runtime import EventBatch

        _, item = keyed
        slot = runtime_slot(self.settings)
        with slot.lock:
            stored = checkpoint.read()
            if stored is not None and stored > slot.runtime.checkpoint_number:
                # Another worker advanced the checkpoint, so this process's
                # learner is behind: rebuild it from the newest checkpoint.
                logger.info("reloading: checkpoint %d is newer than ours", stored)
                slot.runtime = build_runtime(self.settings)
                freeze_long_lived_objects()
            runtime = slot.runtime
            predictions = []
            rejected = []
            if runtime.finished:
                # The run printed its account and is stopping: events go back
                # to the topic, and ticks and pointer notices are ignored.
                if isinstance(item, EventBatch):
                    try:
                        return_to_topic(self.settings, runtime.spec.schema, item)
                    except Exception as error:  # the process exits right after
                        logger.error(
                            "failed to return %d events that arrived after the "
                            "run finished to %s, so they are lost: %s",
                            len(item.events),
                            self.settings.topics.events_topic,
                            error,
                        )
                return
            try:
                if isinstance(item, EventBatch):
                    predictions = runtime.handle_batch(item)
                elif isinstance(item, PointerNotice):
                    runtime.handle_pointer_notice()
                else:
                    runtime.handle_tick()
            except Exception as error:
                # The runner would process the input again after an error and
                # count its events twice, while the runtime has handled part
                # of it already. So the error is counted and logged instead.
                runtime.account.stage_errors += 1
                _log_stage_error(error, runtime.account.stage_errors)
            rejected = runtime.take_rejected()
            schema = runtime.spec.schema
            checkpoint.write(runtime.checkpoint_number)
            try:
                write_account(self.settings, runtime)
            except OSError as error:
                logger.warning("failed to write the account file: %s", error)
        for prediction in predictions:
            yield _prediction_message(prediction)
        for event in rejected:
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER_TAG, _rejected_event_letter(event, schema)
            )


def _rejected_event_letter(rejected: Any, schema: Any) -> PubsubMessage:
    """Return the dead letter of an event the runtime rejected: the event
    alone in an Avro container, with the reason and detail attributes."""
    from streaming.wire import (
        ENCODING_ATTRIBUTE,
        DeadLetter,
        DeadLetterReason,
        Encoding,
        encode_container,
    )

    letter = DeadLetter(
        DeadLetterReason(rejected.reason),
        rejected.detail,
        encode_container([rejected.event], schema),
        {ENCODING_ATTRIBUTE: Encoding.CONTAINER.value},
        record_index=0,
    )
    return PubsubMessage(letter.data, letter.to_attributes())


# Errors of these types have been logged with their traceback in this process.
_LOGGED_ERRORS: set[type[BaseException]] = set()


def _log_stage_error(error: Exception, count: int) -> None:
    """Log an error of the learner stage: the first of each type with its
    traceback, later ones in one line."""
    if type(error) in _LOGGED_ERRORS:
        logger.error("error in the learner stage (%d so far): %s", count, error)
        return
    _LOGGED_ERRORS.add(type(error))
    logger.error(
        "error in the learner stage (%d so far). The job goes on, and the "
        "events of this input may be only partly handled",
        count,
        exc_info=error,
    )


def return_to_topic(
    settings: JobSettings, schema: Any, batch: Any, timeout_s: float = 30.0
) -> None:
    """Publish the events of a batch that arrived after the run finished back
    to the events topic, so that the next run reads them.

    The DirectRunner acknowledges a message when it pulls it, so the messages
    pulled while the run stops would be lost otherwise.
    """
    from google.cloud.pubsub_v1 import PublisherClient

    from streaming.wire import ENCODING_ATTRIBUTE, Encoding, encode_container

    if not batch.events:
        return
    payload = encode_container(batch.events, schema)
    future = PublisherClient().publish(
        settings.topics.events_topic,
        payload,
        **{ENCODING_ATTRIBUTE: Encoding.CONTAINER.value},
    )
    future.result(timeout=timeout_s)
    logger.warning(
        "returned %d events that arrived after the run finished to %s",
        len(batch.events),
        settings.topics.events_topic,
    )


_ACCOUNT_WRITES: dict[str, float] = {}


def write_account(settings: JobSettings, runtime: Any, force: bool = False) -> None:
    """Write ``RUN_DIR/account.json`` at most twice a second (always with force)."""
    now = time.monotonic()
    if not force and now - _ACCOUNT_WRITES.get(settings.job_name, 0.0) < 0.5:
        return
    _ACCOUNT_WRITES[settings.job_name] = now
    path = Path(settings.run_dir) / "account.json"
    body = {
        "time": time.time(),
        "serving_version": runtime.serving_version,
        "checkpoint": runtime.checkpoint_number,
        **runtime.account.to_dict(),
    }
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(body), encoding="utf-8")
    staging.replace(path)


def _prediction_message(prediction: Any) -> PubsubMessage:
    version = "" if prediction.version is None else f"v{prediction.version}"
    body = {
        "event_id": prediction.event_id,
        "model_version": version or None,
        "top": [[label, probability] for label, probability in prediction.ranked],
    }
    attributes = {"event_id": prediction.event_id, VERSION_ATTRIBUTE: version}
    return PubsubMessage(json.dumps(body).encode("utf-8"), attributes)


# ---------------------------------------------------------------- the graph


def build_pipeline(
    pipeline: beam.Pipeline, settings: JobSettings, control: str = "events"
) -> None:
    """Add the job's transforms to ``pipeline``.

    ``control`` is ``events`` (ticks and pointer notices arrive as control
    messages on the events topic, for the DirectRunner) or ``separate``
    (PeriodicImpulse and the model-versions subscription, for Dataflow).
    """
    if control not in ("events", "separate"):
        raise ValueError(f"invalid control {control!r}: expected events or separate")
    topics = settings.topics
    decoded = (
        pipeline
        | "ReadEvents"
        >> ReadFromPubSub(subscription=topics.events_subscription, with_attributes=True)
        | "DecodeEvents"
        >> beam.ParDo(DecodeEvents(settings)).with_outputs(
            DEAD_LETTER_TAG, main="events"
        )
    )
    inputs = [decoded["events"]]
    if control == "separate":
        from apache_beam.transforms.periodicsequence import PeriodicImpulse

        inputs.append(
            pipeline
            | "ReadTicks" >> PeriodicImpulse(fire_interval=1.0)
            | "AsTicks" >> beam.Map(lambda _: Tick())
        )
        inputs.append(
            pipeline
            | "ReadPointerChanges"
            >> ReadFromPubSub(subscription=topics.model_versions_subscription)
            | "AsPointerNotices" >> beam.Map(lambda _: PointerNotice())
        )
    learned = (
        tuple(inputs)
        | "MergeLearnerInputs" >> beam.Flatten()
        | "KeyForLearner" >> beam.Map(lambda item: (LEARNER_KEY, item))
        | "Learn"
        >> beam.ParDo(Learn(settings)).with_outputs(DEAD_LETTER_TAG, main="predictions")
    )
    _ = learned["predictions"] | "WritePredictions" >> WriteToPubSub(
        topics.predictions_topic, with_attributes=True
    )
    _ = (
        (decoded[DEAD_LETTER_TAG], learned[DEAD_LETTER_TAG])
        | "MergeDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters"
        >> WriteToPubSub(topics.dead_letter_topic, with_attributes=True)
    )
