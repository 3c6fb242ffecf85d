"""import-watcher: watch Twilio SendGrid contact import jobs until they end, then tell people."""

from watcher.clock import Clock, ManualClock, SystemClock
from watcher.errors import (
    ConfigError,
    InvalidJobId,
    PermanentDeliveryError,
    RetryableDeliveryError,
    WatcherError,
)
from watcher.models import Delivery, DeliveryState, JobRef, JobState, Outcome, Snapshot, validate_job_id
from watcher.notify.base import BaseNotifier, Notifier
from watcher.schema import Field, Secret

__all__ = [
    "BaseNotifier",
    "Clock",
    "ConfigError",
    "Delivery",
    "DeliveryState",
    "Field",
    "InvalidJobId",
    "JobRef",
    "JobState",
    "ManualClock",
    "Notifier",
    "Outcome",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
    "Secret",
    "Snapshot",
    "SystemClock",
    "WatcherError",
    "validate_job_id",
]
