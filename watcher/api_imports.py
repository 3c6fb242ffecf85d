"""The API's routes that start contact jobs: POST /imports (multipart: the CSV plus the import's options)
and POST /exports (JSON), registered by WatcherServer; both answer 202 with the tracked job's view.

POST /imports streams the file part to a temporary file under a size cap (413 past it), at most
MAX_UPLOADS at a time (503 `busy` past it) and only when the temporary directory has room for the declared
body and a margin (507 otherwise; a disk that fills anyway is a 507 too), then does what
`import-watcher import` does: checks the limits and maps the columns (400 with one line when they do
not fit), starts the import, uploads the file and tracks the job. The other parts are the command's
options as text fields: `list`, `map` (COLUMN=FIELD), `skip`, `label` (K=V), each repeatable, and
`batch`, `account`. Temporary files a killed daemon left (older than a day) are removed when the
routes are built. A multipart body is what an HTML form can send without a CORS preflight, so on top
of the server's guard (token, Origin) a request that a browser marks as cross-site is refused here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from watcher.api_jobs import RunningDaemon, json_answer
from watcher.csvimport import MAX_BYTES, PlanError, measure_csv, parse_labels, parse_pairs, plan_import
from watcher.errors import KeyRefused, TryLater
from watcher.httpinput import ApiError
from watcher.lifecycle import AccountLike, Lifecycle, LifecycleError, SendGridRefused, import_csv
from watcher.models import JobKind, JobRef
from watcher.net import OutboundRefused
from watcher.sources.base import check_labels
from watcher.status import job_views
from watcher.strictjson import strict_json

#: Text parts of POST /imports and their most: a form is small; the file is the one big part.
MAX_FIELD_BYTES = 4096
MAX_PARTS = 1000
MAX_EXPORT_BODY = 64 << 10
#: Uploads received (and imported) at once: each may hold up to max_upload bytes of temporary disk.
MAX_UPLOADS = 4
#: Free space kept in the temporary directory beyond an upload's declared length.
FREE_MARGIN = 64 << 20
#: A temporary upload older than this belongs to no request (a killed daemon's): removed at start.
STALE_UPLOAD_SECONDS = 86400.0
UPLOAD_PREFIX = "import-watcher-upload-"
_UPLOAD_NAME = re.compile(re.escape(UPLOAD_PREFIX) + r"[A-Za-z0-9_]+\.csv", re.ASCII)
_LISTED = ("list", "map", "skip", "label")
_SINGLE = ("batch", "account")


class ImportAccounts(Protocol):
    """The configured SendGrid accounts (watcher.accounts.Accounts)."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def get(self, name: str | None) -> AccountLike: ...


class StartingDaemon(RunningDaemon, Protocol):
    """The part of a running daemon these routes use."""

    @property
    def accounts(self) -> ImportAccounts | None: ...


class ImportRoutes:
    """POST /imports and POST /exports; `require_write` refuses a request without write access."""

    def __init__(self, daemon: StartingDaemon, *, require_write: Callable[[web.Request], None],
                 max_upload: int = MAX_BYTES, temp_dir: Path | None = None, max_uploads: int = MAX_UPLOADS) -> None:
        self._daemon = daemon
        self._require_write = require_write
        self._max_upload = max_upload
        self._temp_dir = temp_dir or Path(tempfile.gettempdir())
        self._max_uploads = max_uploads
        self._uploads = 0  # requests holding a temporary file now; at most max_uploads
        remove_stale_uploads(self._temp_dir, now=time.time())

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post("/imports", self.post_import)
        router.add_post("/exports", self.post_export)

    async def post_import(self, request: web.Request) -> web.Response:
        """POST /imports: 202 with the job once its file is uploaded."""
        self._require_write(request)
        _refuse_cross_site(request)
        if request.content_type != "multipart/form-data":
            raise ApiError(415, "unsupported_media_type", "POST /imports needs multipart/form-data (the CSV as `file`)")
        if self._uploads >= self._max_uploads:
            raise ApiError(503, "busy", f"{self._max_uploads} imports are being uploaded; try again later",
                           {"Retry-After": "30"})
        self._check_room(request.content_length)
        self._uploads += 1
        path: Path | None = None
        try:
            fd, name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=".csv", dir=self._temp_dir)
            os.close(fd)
            path = Path(name)
            try:
                fields = await self._receive(request, path)
            except (ValueError, HttpProcessingError) as exc:  # aiohttp's word on a malformed body
                raise ApiError(400, "invalid_form", f"malformed multipart body: {_problem(exc)}") from None
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                raise ApiError(507, "no_space", f"cannot store the upload: {exc.strerror or exc}") from None
            return await self._import(path, fields)
        finally:
            self._uploads -= 1
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _check_room(self, declared: int | None) -> None:
        """507 when the temporary directory cannot hold the declared body and FREE_MARGIN."""
        try:
            found = os.statvfs(self._temp_dir)
        except OSError as exc:
            raise ApiError(507, "no_space", f"cannot use the temporary directory: {exc.strerror or exc}") from None
        free = found.f_bavail * found.f_frsize
        if free < min(declared or 0, self._max_upload) + FREE_MARGIN:
            raise ApiError(507, "no_space", f"not enough free space for the upload ({free:,} bytes free in the "
                                            "temporary directory)")

    async def _receive(self, request: web.Request, path: Path) -> dict[str, list[str]]:
        """The text parts by name; the `file` part streamed into `path` under the size cap."""
        fields: dict[str, list[str]] = {}
        got_file = False
        reader = await request.multipart()
        for _ in range(MAX_PARTS):
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "invalid_form", "nested multipart parts are not taken")
            if part.name == "file" and not got_file:
                got_file = True
                await self._save(part, path)
            elif part.name in _LISTED or (part.name in _SINGLE and part.name not in fields):
                raw = await _read_field(part)
                try:
                    fields.setdefault(part.name, []).append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise ApiError(400, "invalid_form", f"field {part.name} is not UTF-8") from None
            else:
                raise ApiError(400, "invalid_form", f"unexpected part {str(part.name)[:40]!r} (known: file, "
                               f"{', '.join(_LISTED + _SINGLE)}; batch and account once)")
        else:
            raise ApiError(400, "invalid_form", f"more than {MAX_PARTS} parts")
        if not got_file:
            raise ApiError(400, "invalid_form", "no `file` part: send the CSV as the form's `file`")
        return fields

    async def _save(self, part: BodyPartReader, path: Path) -> None:
        size = 0
        with path.open("wb") as out:
            while chunk := await part.read_chunk(256 << 10):
                size += len(chunk)
                if size > self._max_upload:
                    raise ApiError(413, "file_too_large", f"the file is larger than {self._max_upload:,} bytes")
                await asyncio.to_thread(out.write, chunk)

    async def _import(self, path: Path, fields: Mapping[str, list[str]]) -> web.Response:
        try:
            maps = parse_pairs(fields.get("map", []), "map")
            labels = parse_labels(fields.get("label", []), "label")
            ref_batch = fields.get("batch", [None])[0]
            measured = await asyncio.to_thread(measure_csv, path, max_bytes=self._max_upload)
        except PlanError as exc:
            raise ApiError(400, "invalid_csv", str(exc).replace(path.name, "file")) from None
        async with _sendgrid_errors():
            account = self._account(fields.get("account", [None])[0])
            lifecycle = Lifecycle(account, clock=self._daemon.clock)
            definitions = await lifecycle.field_definitions()
            try:
                plan = plan_import(path, definitions, maps=maps, skips=fields.get("skip", []), measured=measured)
            except PlanError as exc:
                raise ApiError(400, "invalid_csv", str(exc)) from None
            ref = _ref(None, labels, ref_batch, JobKind.IMPORT, account.name)  # checked before anything starts
            started = await import_csv(lifecycle, path, plan, list_ids=fields.get("list", []))
        return await self._track(_ref(started.job_id, labels, ref.batch, JobKind.IMPORT, account.name))

    async def post_export(self, request: web.Request) -> web.Response:
        """POST /exports {list_ids?, segment_ids?, file_type?, account?, labels?}: 202 with the export job."""
        self._require_write(request)
        raw = await request.content.read(MAX_EXPORT_BODY + 1)
        if len(raw) > MAX_EXPORT_BODY:
            raise ApiError(413, "body_too_large", f"the body must be at most {MAX_EXPORT_BODY} bytes")
        try:
            body = strict_json(raw or b"{}")
        except ValueError as exc:
            raise ApiError(400, "invalid_json", f"the body must be a JSON object: {exc}") from None
        if not isinstance(body, dict) or set(body) - {"list_ids", "segment_ids", "file_type", "account", "labels"}:
            raise ApiError(400, "invalid_export", "expected an object with list_ids, segment_ids, file_type, "
                                                  "account, labels")
        lists, segments = _strings(body, "list_ids"), _strings(body, "segment_ids")
        file_type = body.get("file_type", "csv")
        if file_type not in ("csv", "json"):
            raise ApiError(400, "invalid_export", "file_type must be csv or json")
        labels = body.get("labels")
        labels = {} if labels is None else labels
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ApiError(400, "invalid_export", "labels must be an object of strings")
        async with _sendgrid_errors():
            try:
                check_labels(labels)
            except ValueError as exc:
                raise ApiError(400, "invalid_export", str(exc)) from None
            account = self._account(body.get("account"))
            export_id = await Lifecycle(account, clock=self._daemon.clock).start_export(
                list_ids=lists, segment_ids=segments, file_type=file_type)
        return await self._track(_ref(export_id, labels, None, JobKind.EXPORT, account.name))

    def _account(self, name: Any) -> AccountLike:
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "unknown_account", "account must be a string")
        accounts = self._daemon.accounts
        if accounts is None:  # pragma: no cover - the server starts after the accounts
            raise ApiError(503, "starting", "the daemon is starting; try again")
        try:
            return accounts.get(name)
        except ValueError as exc:
            raise ApiError(400, "unknown_account", str(exc)) from None

    async def _track(self, ref: JobRef) -> web.Response:
        intake = self._daemon.intake
        if intake is None:  # pragma: no cover - the server starts after the intake
            raise ApiError(503, "starting", "the daemon is starting; try again")
        await intake.add(ref)
        store = self._daemon.store
        job = await store.get_job(ref.id)
        view = (await job_views(store, [job]))[0] if job is not None else {"id": ref.id, "state": "watching"}
        return json_answer(view, status=202, headers={"Location": f"/jobs/{ref.id}"})


async def _read_field(part: BodyPartReader) -> bytes:
    """A text part whole, at most MAX_FIELD_BYTES; 400 when it is longer or the body ends inside it."""
    raw = b""
    while not part.at_eof():
        chunk = await part.read_chunk(MAX_FIELD_BYTES + 1 - len(raw))
        if not chunk and not part.at_eof():
            raise ApiError(400, "invalid_form", f"the body ends inside field {part.name} (no closing boundary)")
        raw += chunk
        if len(raw) > MAX_FIELD_BYTES:
            raise ApiError(400, "invalid_form", f"field {part.name} is longer than {MAX_FIELD_BYTES} bytes")
    return raw


@contextlib.asynccontextmanager
async def _sendgrid_errors() -> Any:
    """SendGrid's and the upload's failures as API errors, one line each."""
    try:
        yield
    except SendGridRefused as exc:
        raise ApiError(400 if exc.status in (400, 404) else 502, "sendgrid_refused", str(exc)) from None
    except KeyRefused as exc:
        raise ApiError(502, "sendgrid_key_refused", str(exc)) from None
    except TryLater as exc:
        raise ApiError(503, "sendgrid_unavailable", str(exc), {"Retry-After": "30"}) from None
    except (LifecycleError, OutboundRefused) as exc:
        raise ApiError(502, "upload_failed", str(exc)) from None


def remove_stale_uploads(directory: Path, *, now: float) -> list[Path]:
    """Delete this user's temporary uploads in `directory` older than STALE_UPLOAD_SECONDS: the ones removed."""
    gone = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if (_UPLOAD_NAME.fullmatch(entry.name) and stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid()
                        and now - info.st_mtime > STALE_UPLOAD_SECONDS):
                    os.unlink(entry.path)
                    gone.append(Path(entry.path))
    return gone


def _problem(exc: ValueError | HttpProcessingError) -> str:
    """aiohttp's words on a malformed body, one line (an HttpProcessingError's str() starts with its status)."""
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    return " ".join(str(text).split())[:160] or type(exc).__name__


def _refuse_cross_site(request: web.Request) -> None:
    """A form another site posts: browsers say so in Sec-Fetch-Site (and in Origin, which the guard checks)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise ApiError(403, "cross_origin", "requests from another site may not start imports")


def _ref(job_id: str | None, labels: dict[str, str], batch: str | None, kind: JobKind, account: str) -> JobRef:
    try:
        return JobRef(job_id or "pending", labels, None, batch, kind=kind, account=account)
    except ValueError as exc:
        raise ApiError(400, "invalid_job", str(exc)) from None


def _strings(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or len(value) > 100:
        raise ApiError(400, "invalid_export", f"{key} must be a list of at most 100 ids")
    return value
