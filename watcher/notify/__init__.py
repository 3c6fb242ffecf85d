"""Notifications: the notifier seam, the registry, default wording and errors files.

Notifier classes (console, webhook, slack, email and third-party ones) are
reached through `load_notifier_types()`, the entry-point group
`import_watcher.notifiers`, never imported by name: built-ins get no shortcut.
The wording (`render`, with Jinja2) and the errors-file reader are imported when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from watcher.notify.base import BaseNotifier, Notifier

if TYPE_CHECKING:
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

_LAZY = {
    "ErrorsSummary": "watcher.notify.errors_file",
    "summarize_errors_file": "watcher.notify.errors_file",
    "load_notifier_types": "watcher.notify.registry",
    "sample_event": "watcher.notify.render",
    "validate_templates": "watcher.notify.render",
}


def __getattr__(name: str) -> Any:
    """A name of a module imported on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
