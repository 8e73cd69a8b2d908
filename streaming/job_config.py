"""Settings of the streaming job, with units in the names, and their options."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field

from online_model.gate import METRIC_FIELDS, GateMetric
from streaming.wire import MAX_DECODED_BYTES, DecodeLimits


@dataclass(frozen=True)
class JobConfig:
    """Decoding, batching, validation, rollback and checkpoint settings of the job.

    ``decode_limits`` bounds what one message may decode to; a message over a
    limit is dead-lettered as ``too-large``.

    A micro-batch closes at ``micro_batch_size`` events or when its oldest
    event has waited ``micro_batch_max_wait_s``. A candidate meets the gate
    every ``gate_every_micro_batches`` micro-batches or ``gate_every_s``
    seconds, whichever comes first, but no sooner than ``gate_min_interval_s``
    after the previous gate, once the holdout window contains
    ``holdout_min_events``. It is promoted when its ``gate_metric`` on the
    holdout window (``log_loss``, ``top1``, ``top5`` or ``macro_f1``, see
    online_model/gate.py) is no worse than the serving version's by more than
    ``gate_tolerance``, in that metric's unit. After a drift alarm the job
    rolls back when an earlier version beats the serving one on the holdout
    window by ``rollback_margin`` or more, in the same metric.
    """

    # 512, not 256: the learn step limits the job's throughput. On the job
    # postings the learner stage alone ran 32,541-33,604 events/s at 256 and
    # 36,755-38,965 at 512 (benchmarks/results/streaming.md), and top-1 was
    # 0.581 and 0.580 (benchmarks/learner_only.py --micro-batch 512). Since new
    # output rows start as unit vectors, top-1 is 0.583 and 0.578.
    micro_batch_size: int = 512
    micro_batch_max_wait_s: float = 2.0
    holdout_fraction: float = 0.1
    holdout_window_size: int = 2000
    holdout_min_events: int = 200
    gate_every_micro_batches: int = 10
    gate_every_s: float = 30.0
    # Under heavy traffic, 10 micro-batches take a fraction of a second. A
    # gate scores the holdout window several times and may publish a version
    # of about 16 MiB (default learner), so gates are spaced this far apart.
    gate_min_interval_s: float = 2.0
    gate_metric: GateMetric = "log_loss"
    gate_tolerance: float = 0.0
    rollback_margin: float = 0.02
    rollback_versions_kept: int = 5
    rollback_cooldown_micro_batches: int = 10
    checkpoint_every_s: float = 5.0
    dedup_window_size: int = 200_000
    # Each label adds an output row to the model and to every version, and
    # work to each micro-batch. At 2,000 labels a learned micro-batch of 512
    # job postings took 39 ms against 10 ms with their 10 labels, and a
    # version was 16.7 MiB against 16.0 (ad-hoc timings on 2 cores). A
    # labelled event whose label would be one more than this is
    # dead-lettered as label-limit.
    max_labels: int = 2000
    # Numeric event fields whose distribution KSWIN watches, none by default.
    # River's KSWIN runs a Kolmogorov-Smirnov test for each value it gets,
    # 0.18 ms on 2 cores and 0.6-0.9 ms on a busy machine
    # (benchmarks/results/drift_detectors.md). So each field gets only every
    # kswin_sample_every-th learned event's value: 21 us per event at 8.
    kswin_features: tuple[str, ...] = ()
    kswin_sample_every: int = 8
    top_k: int = 5
    seed: int = 0
    decode_limits: DecodeLimits = field(default_factory=DecodeLimits)

    def __post_init__(self) -> None:
        _at_least("micro_batch_size", self.micro_batch_size, 1)
        _at_least("holdout_window_size", self.holdout_window_size, 1)
        _at_least("holdout_min_events", self.holdout_min_events, 1)
        _at_least("gate_every_micro_batches", self.gate_every_micro_batches, 1)
        _at_least("rollback_versions_kept", self.rollback_versions_kept, 1)
        _at_least("dedup_window_size", self.dedup_window_size, 1)
        _at_least("max_labels", self.max_labels, 1)
        _at_least("kswin_sample_every", self.kswin_sample_every, 1)
        if isinstance(self.kswin_features, str) or len(set(self.kswin_features)) != len(
            self.kswin_features
        ):
            raise ValueError(
                "kswin_features must be distinct field names, got "
                f"{self.kswin_features!r}"
            )
        _at_least("top_k", self.top_k, 1)
        if self.gate_metric not in METRIC_FIELDS:
            raise ValueError(
                f"gate_metric must be one of {', '.join(METRIC_FIELDS)}, "
                f"got {self.gate_metric!r}"
            )
        # With no holdout events no gate runs, so no version is ever published.
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(
                f"holdout_fraction must be in (0, 1), got {self.holdout_fraction!r}"
            )
        for name in (
            "micro_batch_max_wait_s",
            "gate_every_s",
            "gate_min_interval_s",
            "checkpoint_every_s",
            "gate_tolerance",
            "rollback_margin",
        ):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        # An infinite spacing would stop validation after the first gate, and
        # an infinite tolerance or margin would make the gate meaningless.
        for name in ("gate_min_interval_s", "gate_tolerance", "rollback_margin"):
            if getattr(self, name) == math.inf:
                raise ValueError(f"{name} must be finite, got inf")
        if not isinstance(self.decode_limits, DecodeLimits):
            raise ValueError(
                f"decode_limits must be a DecodeLimits, got {self.decode_limits!r}"
            )
        if self.holdout_min_events > self.holdout_window_size:
            raise ValueError(
                f"holdout_min_events ({self.holdout_min_events}) must not exceed "
                f"holdout_window_size ({self.holdout_window_size})"
            )


def _at_least(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


# IEC binary prefixes: 1 KiB is 1024 bytes.
_BYTE_UNITS = {"": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_BYTE_SIZE = re.compile(r"([0-9]+) ?(KiB|MiB|GiB)?")
_DIGITS = re.compile(r"[0-9]+")


def parse_byte_size(text: str) -> int:
    """Parse a size such as ``4194304`` or ``4MiB`` into bytes.

    Raises ValueError, naming the text and the accepted forms, for anything
    else or for a size of 0.
    """
    match = _BYTE_SIZE.fullmatch(text.strip())
    if match is None:
        size = 0
    else:
        number = _parse_digits(match.group(1))
        unit = _BYTE_UNITS[match.group(2) or ""]
        # Only digits match, so None means too many of them.
        size = MAX_DECODED_BYTES + 1 if number is None else number * unit
    if size < 1:
        raise ValueError(
            f"invalid size {text!r}: expected a whole number of bytes >= 1, "
            "optionally followed by KiB, MiB or GiB, such as 4MiB"
        )
    if size > MAX_DECODED_BYTES:
        raise ValueError(
            f"invalid size {text!r}: the maximum is "
            f"{format_byte_size(MAX_DECODED_BYTES)} ({MAX_DECODED_BYTES} bytes)"
        )
    return size


def _parse_digits(text: str) -> int | None:
    """Parse plain ASCII digits, with no sign or '_', of at most 30 digits.

    Returns None for anything else, so int() never meets Python's limit on
    the number of digits it converts.
    """
    if not _DIGITS.fullmatch(text):
        return None
    digits = text.lstrip("0") or "0"
    return None if len(digits) > 30 else int(digits)


def format_byte_size(size: int) -> str:
    """Return ``size`` in the largest unit of ``parse_byte_size`` that divides it."""
    for unit in ("GiB", "MiB", "KiB"):
        if size % _BYTE_UNITS[unit] == 0:
            return f"{size // _BYTE_UNITS[unit]}{unit}"
    return str(size)


def add_decode_limit_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--max-decoded-bytes`` and ``--max-events-per-message`` to ``parser``."""
    defaults = DecodeLimits()
    parser.add_argument(
        "--max-decoded-bytes",
        metavar="SIZE",
        type=_byte_size_option,
        default=format_byte_size(defaults.max_decoded_bytes),
        help="maximum size of one message's records after decompression, in "
        "bytes or with the suffix KiB, MiB or GiB, such as 4MiB; a larger "
        "message is dead-lettered as too-large (default: %(default)s)",
    )
    parser.add_argument(
        "--max-events-per-message",
        metavar="N",
        type=_count_option,
        default=defaults.max_events_per_message,
        help="maximum number of events in one message, such as 1000; a message "
        "with more is dead-lettered as too-large (default: %(default)s)",
    )


def decode_limits_from(args: argparse.Namespace) -> DecodeLimits:
    """Return the DecodeLimits that ``add_decode_limit_options`` parsed."""
    return DecodeLimits(
        max_decoded_bytes=args.max_decoded_bytes,
        max_events_per_message=args.max_events_per_message,
    )


def _byte_size_option(text: str) -> int:
    try:
        return parse_byte_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _count_option(text: str) -> int:
    value = _parse_digits(text.strip())
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(
            f"invalid count {text!r}: expected a whole number >= 1, such as 1000"
        )
    return value
