"""Drift detection on the scored stream and on event features.

``base`` states the contract (``DriftDetector``, ``DriftAlarm``),
``detectors`` wraps River's ADWIN, Page-Hinkley and KSWIN behind it, and
``monitor`` feeds them from micro-batches of Scored records and raw events.
"""

from online_model.drift.base import DriftAlarm, DriftDetector
from online_model.drift.detectors import (
    AdwinConfig,
    AdwinDetector,
    KswinConfig,
    KswinDetector,
    PageHinkleyConfig,
    PageHinkleyDetector,
)
from online_model.drift.monitor import DriftMonitor, DriftMonitorConfig

__all__ = [
    "AdwinConfig",
    "AdwinDetector",
    "DriftAlarm",
    "DriftDetector",
    "DriftMonitor",
    "DriftMonitorConfig",
    "KswinConfig",
    "KswinDetector",
    "PageHinkleyConfig",
    "PageHinkleyDetector",
]
