"""Console: one readable line per event, for `demo`, cron jobs and container logs."""

from __future__ import annotations

import sys
from typing import ClassVar

from watcher.errors import RetryableDeliveryError
from watcher.models import Delivery
from watcher.notify import render
from watcher.notify.base import BaseNotifier
from watcher.schema import Field, choice


class ConsoleNotifier(BaseNotifier):
    """Prints `render.console_line(event)` (or the `text` template) to stdout or stderr."""

    type_name: ClassVar[str] = "console"
    fields: ClassVar[tuple[Field, ...]] = (Field("stream", choice("stdout", "stderr"), default="stdout"),)

    async def send(self, delivery: Delivery) -> None:
        """Write the line; a closed or broken stream is worth another try later."""
        line = render.rendered(self.templates, "text", delivery.event, render.console_line, notifier=self.name)
        # Looked up at send time, so a redirected sys.stdout (tests, demo) is honoured.
        stream = sys.stderr if self.settings.get("stream") == "stderr" else sys.stdout
        try:
            print(line.rstrip("\n"), file=stream, flush=True)
        except (OSError, ValueError) as exc:  # ValueError: write to a closed file
            raise RetryableDeliveryError(f"console: cannot write: {exc}") from None
