"""Notifications: the notifier seam, the registry, default wording and errors files.

Notifier classes (console, webhook, slack, email and third-party ones) are
reached through `load_notifier_types()`, the entry-point group
`import_watcher.notifiers`, never imported by name: built-ins get no shortcut.
"""

from watcher.notify.base import BaseNotifier, Notifier
from watcher.notify.errors_file import ErrorsSummary, summarize_errors_file
from watcher.notify.registry import load_notifier_types
from watcher.notify.render import sample_event, validate_templates

__all__ = [
    "BaseNotifier",
    "ErrorsSummary",
    "Notifier",
    "load_notifier_types",
    "sample_event",
    "summarize_errors_file",
    "validate_templates",
]
