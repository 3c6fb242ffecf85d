"""Apprise: the long tail of services (100+) through Apprise URLs, best effort.

An optional extra (`pip install 'import-watcher[apprise]'`): apprise is imported only when a
notifier is checked or started, so the registry loads without it. Apprise sends with blocking
calls (the requests library, SMTP, ...) and reports one bool per URL, with no reason and no
delivery guarantee of its own. So each notifier runs Apprise in a worker thread of its own
under `timeout`, and a False, an exception or no answer in time is a RetryableDeliveryError:
the outbox's retries, deadlines and dead letters apply around it as for every notifier.

Apprise builds its own requests, so watcher/net.py cannot check where they go: not the
redirects it follows (we ask it not to, where the installed version lets us), not the
addresses a name resolves to. `allow_insecure` and `allow_private` apply to what the URL
itself says, and only for services whose URL names the server (json://, form://, ntfy://,
mailto://, ...): a plain-text transport to a non-loopback host needs `allow_insecure`, a
private IP literal needs `allow_private`. Hosted services (discord://, tgram://) are sent
where Apprise knows them to be.

Apprise URLs carry tokens anywhere (user, password, host, path, query), so a URL is shown
as its scheme (and its host when that is a host name), and Apprise's own log lines are
kept at warning and above with every part of every configured URL masked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qsl

import aiohttp
import structlog

from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.models import Delivery
from watcher.net import address_problem, is_loopback_host, mask_urls_in_text
from watcher.notify import render
from watcher.notify.base import BaseNotifier
from watcher.notify.chat import clip
from watcher.notify.message import GOOD_STATUSES, Message, Severity, message_from_event
from watcher.notify.text import summary_lines
from watcher.notify.webhook import reveal
from watcher.schema import Field, Secret, boolean, duration

INSTALL_HINT = "install the extra: pip install 'import-watcher[apprise]'"
#: Apprise splits or truncates per service (its `overflow` URL option); this only bounds our side.
MAX_BODY = 32_000
#: Deliveries whose URLs partly succeeded, remembered so a retry skips the URLs already sent.
MAX_REMEMBERED = 1024

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_HOST_NAME = re.compile(r"^(?:localhost|(?:[a-z0-9-]+\.)+[a-z]{2,}|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:.]+\])$")
_MASK = "***"
# Apprise URLs put credentials anywhere; every piece of this length or more is masked in its logs.
_MIN_PIECE = 4

_log = structlog.get_logger("watcher.notify")
# Apprise's debug lines carry request URLs and payloads: dropped. urllib3 (under requests) logs
# each request's path at debug: masked, as other users of urllib3 may want its lines.
_SCRUBBED_LOGGERS = {
    "apprise": logging.WARNING,
    **dict.fromkeys(("urllib3.connectionpool", "urllib3.connection", "urllib3.poolmanager", "urllib3.util.retry"), 0),
}
_pieces: tuple[str, ...] = ()
_pieces_lock = threading.Lock()


class _Service(Protocol):
    """The part of an `apprise.Apprise` object holding one URL that we use."""

    def notify(self, *, body: str, title: str, notify_type: Any, body_format: Any) -> object: ...


# --- settings ---------------------------------------------------------------------


def apprise_urls(value: Any) -> tuple[Secret, ...]:
    """A list of Apprise URLs, or text with one per line (`urls_file`; blank and # lines skipped)."""
    if isinstance(value, str):
        value = [line.strip() for line in value.splitlines()]
        value = [line for line in value if line and not line.startswith("#")]
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of Apprise URLs (or a urls_file with one per line)")
    found: list[Secret] = []
    for index, item in enumerate(value, start=1):
        # Never echo the entry: it is a credential even when it is malformed.
        if not isinstance(item, str) or not _SCHEME.match(item.strip()):
            raise ValueError(f"entry {index} is not an Apprise URL (expected scheme://...)")
        if any(char.isspace() for char in item.strip()):
            raise ValueError(f"entry {index} holds white space: give one URL per entry")
        found.append(Secret(item.strip()))
    return tuple(found)


def revealed_urls(value: Any) -> list[str]:
    """The configured URLs as text: a tuple of Secrets, plain strings (tests), or nothing."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    return [text for item in items if (text := reveal(item))]


def shown(target: str) -> str:
    """`scheme://host/…` when the host is a host name, else `scheme://…`: never a credential."""
    scheme, _, rest = target.partition("://")
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    host = netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
    return f"{scheme}://{host}/…" if _HOST_NAME.match(host.lower()) else f"{scheme}://…"


# --- Apprise's logs ------------------------------------------------------------------


def secret_pieces(target: str) -> set[str]:
    """Every part of an Apprise URL that may be a credential (all but the scheme and a host name)."""
    _, _, rest = target.partition("://")
    main, _, query = rest.partition("?")
    main, _, fragment = main.partition("#")
    pieces = {rest, main, fragment, *re.split(r"[/@:]", main)}
    pieces.update(value for _, value in parse_qsl(query, keep_blank_values=True))
    host = shown(target).partition("://")[2].removesuffix("/…")
    # A port is no credential, and masking it would mask every number in Apprise's lines.
    return {p for p in pieces if len(p) >= _MIN_PIECE and p != host and not (p.isdigit() and len(p) <= 5)}


def remember_secrets(targets: Sequence[str]) -> None:
    """Add the URLs' pieces to what Apprise's log lines are scrubbed of; install the scrubber once."""
    global _pieces
    with _pieces_lock:
        known = set(_pieces)
        for target in targets:
            known |= secret_pieces(target)
        _pieces = tuple(sorted(known, key=len, reverse=True))  # longest first: no half-masked token
    for name, minimum in _SCRUBBED_LOGGERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(item, _ScrubLogs) for item in logger.filters):
            logger.addFilter(_ScrubLogs(minimum))


def scrub(text: str) -> str:
    """Text from Apprise (a log line, an exception) without any piece of a configured URL."""
    for piece in _pieces:
        text = text.replace(piece, _MASK)
    return mask_urls_in_text(text)


class _ScrubLogs(logging.Filter):
    """Drops a logger's lines below `minimum`, masks the rest (filters see only their own logger's lines)."""

    def __init__(self, minimum: int) -> None:
        super().__init__()
        self.minimum = minimum

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.minimum:
            return False
        record.msg, record.args = scrub(record.getMessage()), None
        return True


# --- rendering -----------------------------------------------------------------------


def notify_type_name(message: Message) -> str:
    """Apprise's NotifyType member for a message: SUCCESS, INFO, WARNING or FAILURE."""
    if message.severity is Severity.INFO:
        return "SUCCESS" if message.status in GOOD_STATUSES else "INFO"
    return "WARNING" if message.severity is Severity.WARNING else "FAILURE"


def render_parts(message: Message, *, title: str | None = None, text: str | None = None) -> tuple[str, str]:
    """Title and plain-text body; a `text` template replaces the whole body."""
    if text is None:
        text = "\n".join([message.summary, "", *summary_lines(message), "", message.footer]).strip()
    return clip(title or message.heading, 250), clip(text, MAX_BODY)


# --- loading Apprise -------------------------------------------------------------------


def load_apprise() -> ModuleType | None:
    """The apprise module, or None when the extra is not installed."""
    try:
        return importlib.import_module("apprise")
    except ImportError:
        return None


def make_asset(module: ModuleType) -> Any:
    """Our name on what Apprise sends, and no redirects where the installed version allows it."""
    options = {"app_id": "import-watcher", "app_desc": "import-watcher notifications",
               "app_url": "https://github.com/import-watcher/import-watcher", "http_redirects": False}  # fmt: skip
    known = {key: value for key, value in options.items() if hasattr(module.AppriseAsset, key)}
    return module.AppriseAsset(**known)


def load_service(module: ModuleType, target: str, asset: Any) -> Any:
    """An Apprise object holding just `target`, or None when Apprise does not understand it."""
    service = module.Apprise(asset=asset)
    if not service.add(target) or len(service) != 1:
        return None
    return service


def url_problem(module: ModuleType, target: str, settings: Mapping[str, Any]) -> str | None:
    """Why Apprise cannot, or we may not, send to `target` (None: fine)."""
    service = load_service(module, target, make_asset(module))
    if service is None:
        return "Apprise does not understand this URL (an unknown scheme, or parts missing)"
    plugin = service[0]
    if not getattr(plugin, "protocol", None) or not getattr(plugin, "secure_protocol", None):
        return None  # a hosted service: Apprise knows where it is and sends there over https
    host = str(getattr(plugin, "host", "") or "")
    if not host or is_loopback_host(host):
        return None  # no host: the service's public instance (ntfy://topic); loopback: local fakes
    if getattr(plugin, "secure", None) is False and not settings.get("allow_insecure"):
        secure = plugin.secure_protocol if isinstance(plugin.secure_protocol, str) else plugin.secure_protocol[0]
        return f"sends in plain text: use {secure}:// or set allow_insecure: true"
    literal = ":" in host or host.replace(".", "").isdigit()
    kind = address_problem(host) if literal else None
    if kind is not None and not settings.get("allow_private"):
        return f"a {kind} address (set allow_private: true to send there)"
    return None


# --- the notifier ----------------------------------------------------------------------


class AppriseNotifier(BaseNotifier):
    """Sends each message to every configured Apprise URL, best effort, in a worker thread."""

    type_name: ClassVar[str] = "apprise"
    fields: ClassVar[tuple[Field, ...]] = (
        Field("urls", apprise_urls, required=True, secret=True, doc="Apprise URLs (urls_file: one per line)"),
        Field("timeout", duration(0.001), default=30.0, doc="for one send to every URL"),
        Field("allow_insecure", boolean, default=False, doc="allow a plain-text scheme (json://) to a remote host"),
        Field("allow_private", boolean, default=False, doc="allow a private IP literal as a self-hosted server"),
    )

    def __init__(self, name: str, settings: Mapping[str, Any], **options: Any) -> None:
        super().__init__(name, settings, **options)
        self.targets = revealed_urls(self.settings.get("urls"))
        remember_secrets(self.targets)
        self._services: list[_Service | None] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._sent: OrderedDict[str, set[int]] = OrderedDict()
        self._sent_lock = threading.Lock()

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The extra is installed, Apprise understands every URL, plain text and private hosts allowed."""
        module = load_apprise()
        if module is None:
            return [("type", INSTALL_HINT)]
        targets = revealed_urls(settings.get("urls"))
        remember_secrets(targets)  # Apprise logs a URL it cannot parse
        problems = []
        for index, target in enumerate(targets, start=1):
            if (problem := url_problem(module, target, settings)) is not None:
                problems.append(("urls", f"entry {index} ({shown(target)}): {problem}"))
        return problems

    def describe(self) -> dict[str, Any]:
        """Settings for logs: each URL as its scheme (and host name), nothing more."""
        return {**super().describe(), "urls": [shown(target) for target in self.targets]}

    async def start(self, session: aiohttp.ClientSession) -> None:
        """Load Apprise and one service per URL; its own thread, so a hung send stalls nothing else."""
        await super().start(session)
        module = load_apprise()
        if module is None:
            _log.error("notify.apprise_missing", notifier=self.name, error=INSTALL_HINT)
        else:
            asset = make_asset(module)
            self._services = [load_service(module, target, asset) for target in self.targets]
        # One thread: sends to one notifier queue up, and a call that outlives its timeout
        # holds this thread rather than one the event loop's resolver needs.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"apprise-{self.name}")

    async def close(self) -> None:
        """Stop taking sends; a call still running ends on Apprise's own socket timeouts."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        await super().close()

    async def send(self, delivery: Delivery) -> None:
        """Every URL not yet sent for this delivery; any failure is retryable, the reason logged."""
        if self._executor is None or not self._services:
            raise PermanentDeliveryError(f"apprise: not started or not installed ({INSTALL_HINT})")
        event = delivery.event
        message = message_from_event(event)
        title, body = render_parts(
            message,
            title=render.render_override(self.templates, "title", event, notifier=self.name),
            text=render.render_override(self.templates, "text", event, notifier=self.name),
        )
        log = _log.bind(notifier=self.name, delivery=delivery.id)
        seconds = float(self.settings.get("timeout") or 30.0)
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._executor, self._deliver, delivery.id, title, body, notify_type_name(message))
        try:
            failures = await asyncio.wait_for(call, seconds)
        except TimeoutError:
            pending = ", ".join(shown(t) for i, t in enumerate(self.targets) if not self._was_sent(delivery.id, i))
            log.info("notify.apprise_timed_out", seconds=seconds, pending=pending)
            raise RetryableDeliveryError(f"apprise: no result within {seconds:g}s from {pending}") from None
        self._raise_for(failures, log)
        log.debug("notify.apprise_delivered", urls=len(self.targets))

    def _raise_for(self, failures: list[tuple[int, str]], log: Any) -> None:
        if not failures:
            return
        what = "; ".join(f"{shown(self.targets[index])}: {why}" for index, why in failures)
        message = f"apprise: {len(failures)} of {len(self.targets)} URLs failed ({what})"
        if all(self._services[index] is None for index, _ in failures):
            log.warning("notify.apprise_rejected", error=message)
            raise PermanentDeliveryError(message)
        log.info("notify.apprise_failed", error=message)
        raise RetryableDeliveryError(message)

    def _deliver(self, delivery_id: str, title: str, body: str, type_name: str) -> list[tuple[int, str]]:
        """In the worker thread: each URL not yet sent for this delivery; (index, why) of those that failed."""
        module = load_apprise()
        if module is None:  # start() loads services only when it can import apprise
            return [(index, INSTALL_HINT) for index in range(len(self._services))]
        notify_type, body_format = getattr(module.NotifyType, type_name), module.NotifyFormat.TEXT
        failures: list[tuple[int, str]] = []
        for index, service in enumerate(self._services):
            if self._was_sent(delivery_id, index):
                continue
            if service is None:
                failures.append((index, "Apprise does not understand this URL"))
                continue
            try:
                result = service.notify(body=body, title=title, notify_type=notify_type, body_format=body_format)
            except Exception as exc:  # a plugin's bug must not pass for our own; the outbox retries
                failures.append((index, scrub(f"{type(exc).__name__}: {exc}")))
                continue
            if result:
                self._mark_sent(delivery_id, index)
            else:
                failures.append((index, "Apprise reported a failure (its warning in the log says why)"))
        if not failures:
            with self._sent_lock:
                self._sent.pop(delivery_id, None)
        return failures

    def _was_sent(self, delivery_id: str, index: int) -> bool:
        with self._sent_lock:
            return index in self._sent.get(delivery_id, ())

    def _mark_sent(self, delivery_id: str, index: int) -> None:
        with self._sent_lock:
            self._sent.setdefault(delivery_id, set()).add(index)
            self._sent.move_to_end(delivery_id)
            while len(self._sent) > MAX_REMEMBERED:
                self._sent.popitem(last=False)
