"""A contacts CSV checked and mapped before anything is sent: the header's columns to field ids, and the limits.

SDK users guess `field_mappings` ids and learn of a wrong one from an e-mail hours later. Here every
column is mapped by name against GET /v3/marketing/field_definitions: reserved fields (`email` ->
`_rf2_T`) and custom fields case-insensitively, `--map COLUMN=FIELD` (a name or an id) and `--skip
COLUMN` (null) where names differ. An unknown column, a field mapped twice or no identifier column is
refused, and so is a file over the documented limits (1,000,000 rows, 5 GB): the whole check reads only
the file, so a refused file costs no request.

An export's file (restore) maps back the same way: its headers (`EMAIL`, `FIRST_NAME`, `POSTAL_CODE`,
custom field names) match field names case-insensitively, and with `export_file=True` the columns an
import cannot set (read-only fields such as CONTACT_ID, CREATED_AT, UPDATED_AT, and columns the
export adds that are no field at all, such as LIST_IDS) are skipped instead of refused.
Gzip files (as exports are) are read through gzip; `bytes` is then the uncompressed size.

A small gzip file can hold gigabytes, so reading is bounded whatever the file holds: every byte read is
counted (past the byte limit the read stops), a record (a line, or lines joined by quotes) longer than
MAX_RECORD_CHARS is refused before it is held whole, and so are more than MAX_BLANK_LINES blank lines.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

#: The documented import limits (PUT /v3/marketing/contacts/imports): "up to one million contacts or 5GB".
MAX_ROWS = 1_000_000
MAX_BYTES = 5_000_000_000
#: A record (the header, a row) longer than this is refused: no contact is that long, and csv holds it whole.
MAX_RECORD_CHARS = 1 << 20
MAX_HEADER_CHARS = MAX_RECORD_CHARS
#: Blank lines are no contacts, yet each costs a read: a file with more of them is no contacts file.
MAX_BLANK_LINES = MAX_ROWS
#: Fields that identify a contact: an import needs at least one of them.
IDENTIFIERS = ("email", "phone_number_id", "external_id", "anonymous_id")
GZIP_MAGIC = b"\x1f\x8b"
_SHOWN_NAMES = 40  # known field names listed in an unknown-column error


class PlanError(ValueError):
    """The file cannot be imported as it is; the message is one line fit to show."""


@dataclass(frozen=True, slots=True)
class FieldDefinition:
    """One reserved or custom field, as GET /v3/marketing/field_definitions lists it."""

    id: str
    name: str
    field_type: str
    read_only: bool = False
    reserved: bool = False


@dataclass(frozen=True, slots=True)
class FieldDefinitions:
    """The account's fields; names are unique case-insensitively (SendGrid enforces it)."""

    reserved: tuple[FieldDefinition, ...]
    custom: tuple[FieldDefinition, ...]

    @property
    def all(self) -> tuple[FieldDefinition, ...]:
        return self.reserved + self.custom

    def by_name(self, name: str) -> FieldDefinition | None:
        wanted = name.strip().lower()
        return next((f for f in self.all if f.name.lower() == wanted), None)

    def by_id(self, field_id: str) -> FieldDefinition | None:
        return next((f for f in self.all if f.id == field_id), None)


def parse_field_definitions(data: Any) -> FieldDefinitions:
    """The ListFieldDefinition answer; ValueError names what is malformed. A reserved field
    without an `id` (the spec does not require one) cannot be mapped and is left out."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    parsed: dict[str, tuple[FieldDefinition, ...]] = {}
    for key in ("reserved_fields", "custom_fields"):
        items = data.get(key)
        if not isinstance(items, list):
            raise ValueError(f"{key} is missing or not a list")
        fields = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ValueError(f"{key} holds an item without a name")
            field_id = item.get("id")
            if not isinstance(field_id, str) or not field_id:
                if key == "custom_fields":
                    raise ValueError(f"custom field {item['name'][:100]!r} has no id")
                continue
            fields.append(FieldDefinition(
                field_id, item["name"], str(item.get("field_type") or ""),
                read_only=item.get("read_only") is True, reserved=key == "reserved_fields",
            ))
        parsed[key] = tuple(fields)
    return FieldDefinitions(parsed["reserved_fields"], parsed["custom_fields"])


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """What PUT /v3/marketing/contacts/imports is told, and what the file holds."""

    columns: tuple[str, ...]
    field_mappings: tuple[str | None, ...]  # one per column; None skips it
    field_names: tuple[str | None, ...]  # the mapped fields' names, for people
    rows: int
    bytes: int  # uncompressed
    gzipped: bool = False

    def table(self) -> str:
        """The mapping as aligned text lines: column, field id, field name."""
        width = max(len(c) for c in self.columns)
        lines = [
            f"{column:<{width}}  ->  {field_id or 'skipped'}{f' ({name})' if name else ''}"
            for column, field_id, name in zip(self.columns, self.field_mappings, self.field_names, strict=True)
        ]
        return "\n".join(lines)


def open_text(path: Path, max_bytes: int | None = None) -> io.TextIOWrapper:
    """The file as text for the csv module: utf-8 with an optional BOM, gunzipped when it is gzip.

    With `max_bytes`, reading past that many (uncompressed) bytes raises PlanError.
    """
    # gzip.open owns the file it opens: closing the text closes it (a GzipFile over a file object would not).
    binary = gzip.open(path, "rb") if is_gzip(path) else path.open("rb")  # noqa: SIM115 - the text closes it
    counted = io.BufferedReader(_Counted(cast(IO[bytes], binary), path, max_bytes))
    return io.TextIOWrapper(counted, encoding="utf-8-sig", newline="")


def is_gzip(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(2) == GZIP_MAGIC


class _Counted(io.RawIOBase):
    """The bytes of `source` (a file, or a gzip file's content), counted as they are read: `count`;
    a read that brings the count past `limit` raises PlanError, so no bomb is read further."""

    def __init__(self, source: IO[bytes], path: Path, limit: int | None) -> None:
        super().__init__()
        self._source, self._path, self._limit = source, path, limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        got = self._source.readinto(buffer)  # type: ignore[attr-defined]  # every binary file has it
        self.count += got
        if self._limit is not None and self.count > self._limit:
            raise _too_big(self._path, self._limit)
        return int(got)

    def close(self) -> None:
        self._source.close()
        super().close()


class _Records:
    """The text's lines for csv.reader, at most `cap` characters per record (a record may span quoted
    lines): the caller calls `next_record()` after each record. PlanError names the record past the cap,
    `what` (default: the record at line N)."""

    def __init__(self, text: IO[str], cap: int, prefix: str, what: str | None = None) -> None:
        self._text, self._cap, self._prefix, self._what = text, cap, prefix, what
        self._used, self._line, self._start = 0, 0, 1

    def next_record(self) -> None:
        self._used, self._start = 0, self._line + 1

    def __iter__(self) -> Iterator[str]:
        while line := self._text.readline(self._cap + 1 - self._used):
            self._used += len(line)
            self._line += 1
            if self._used > self._cap:
                what = self._what or f"the record at line {self._start:,}"
                raise PlanError(f"{self._prefix}{what} is longer than {self._cap:,} characters: "
                                "is this a contacts CSV?")
            yield line


def read_header(path: Path) -> list[str]:
    """The first record of the CSV; PlanError when missing, unreadable or over MAX_HEADER_CHARS."""
    try:
        with open_text(path) as text:
            header = next(csv.reader(_Records(text, MAX_HEADER_CHARS, "", "the header")), None)
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as exc:  # gzip errors are OSErrors
        raise PlanError(f"{path.name}: cannot read the CSV header: {_one_line(exc)}") from None
    if not header or not any(column.strip() for column in header):
        raise PlanError(f"{path.name}: no header row (the first line must name the columns)")
    return header


def count_rows(path: Path, *, limit: int = MAX_ROWS, max_bytes: int = MAX_BYTES) -> tuple[int, int]:
    """(data rows, uncompressed bytes), streaming; PlanError as soon as a limit is passed: rows, bytes
    (checked on every read), a record's length, blank lines."""
    rows, blank = -1, 0  # the header is no contact
    try:
        with open_text(path, max_bytes) as text:
            lines = _Records(text, MAX_RECORD_CHARS, f"{path.name}: ")
            for record in csv.reader(lines):
                if record:
                    rows += 1
                    if rows > limit:
                        raise PlanError(f"{path.name}: more than {limit:,} rows: SendGrid imports at most "
                                        f"{limit:,} contacts per file; split it")
                else:
                    blank += 1
                    if blank > MAX_BLANK_LINES:
                        raise PlanError(f"{path.name}: more than {MAX_BLANK_LINES:,} blank lines: is this a "
                                        "contacts CSV?")
                lines.next_record()
            size = cast(_Counted, cast(io.BufferedReader, text.buffer).raw).count
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as exc:  # gzip errors are OSErrors
        raise PlanError(f"{path.name}: not a readable CSV: {_one_line(exc)}") from None
    return max(rows, 0), size


def _too_big(path: Path, max_bytes: int) -> PlanError:
    return PlanError(f"{path.name}: larger than {max_bytes / 1e9:g} GB: SendGrid imports at most "
                     f"{max_bytes / 1e9:g} GB per file; split it")


@dataclass(frozen=True, slots=True)
class MeasuredFile:
    """What reading a CSV found, before any field is known: its header, rows and size."""

    header: tuple[str, ...]
    rows: int
    bytes: int  # uncompressed
    gzipped: bool


def measure_csv(path: Path, *, max_rows: int = MAX_ROWS, max_bytes: int = MAX_BYTES) -> MeasuredFile:
    """Read the header and count the rows, checking the documented limits; PlanError when refused.

    A plain file's size is checked by stat first, before a byte of it is read.
    """
    gzipped = is_gzip(path)
    if not gzipped and os.stat(path).st_size > max_bytes:
        raise _too_big(path, max_bytes)
    header = read_header(path)
    rows, size = count_rows(path, limit=max_rows, max_bytes=max_bytes)
    if rows == 0:
        raise PlanError(f"{path.name}: no contacts (only a header)")
    return MeasuredFile(tuple(header), rows, size, gzipped)


def plan_import(
    csv_path: Path,
    definitions: FieldDefinitions,
    *,
    maps: Mapping[str, str] | None = None,
    skips: Sequence[str] = (),
    export_file: bool = False,
    measured: MeasuredFile | None = None,
) -> ImportPlan:
    """Map every column of the file's header to a field id and check the limits; PlanError says what is wrong.

    `maps`: column -> field name or id; `skips`: columns left out; `export_file`: an export's file,
    whose read-only and unknown columns are skipped; `measured`: measure_csv's result, if already read.
    """
    measured = measured or measure_csv(csv_path)
    mappings = _map_columns(measured.header, definitions, maps or {}, skips, export_file=export_file)
    return ImportPlan(
        columns=measured.header,
        field_mappings=tuple(f.id if f else None for f in mappings),
        field_names=tuple(f.name if f else None for f in mappings),
        rows=measured.rows, bytes=measured.bytes, gzipped=measured.gzipped,
    )


def _map_columns(
    header: Sequence[str],
    definitions: FieldDefinitions,
    maps: Mapping[str, str],
    skips: Sequence[str],
    *,
    export_file: bool,
) -> list[FieldDefinition | None]:
    explicit = {_column_index(header, column, "--map"): _field(definitions, field, column)
                for column, field in maps.items()}
    skipped = {_column_index(header, column, "--skip") for column in skips}
    if both := explicit.keys() & skipped:
        raise PlanError(f"column {header[min(both)]!r} is both mapped (--map) and skipped (--skip)")
    mapped: list[FieldDefinition | None] = []
    unknown: list[str] = []
    for index, column in enumerate(header):
        field = explicit.get(index) or (None if index in skipped else definitions.by_name(column))
        if index in skipped or (export_file and (field is None or field.read_only)):
            field = None
        elif field is None:
            unknown.append(column)
        elif field.read_only:
            raise PlanError(f"column {column!r}: field {field.name} is read-only (SendGrid sets it); "
                            f"--skip {column} leaves it out")
        mapped.append(field)
    if unknown:
        names = sorted(f.name for f in definitions.all if not f.read_only)
        shown = ", ".join(names[:_SHOWN_NAMES]) + (f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES
                                                   else "")
        raise PlanError(f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                        f"map with --map COLUMN=FIELD or leave out with --skip COLUMN (fields: {shown})")
    _check_unique(header, mapped)
    if not any(f is not None and f.name.lower() in IDENTIFIERS for f in mapped):
        raise PlanError(f"no identifier column: at least one column must map to {', '.join(IDENTIFIERS)}")
    return mapped


def _check_unique(header: Sequence[str], mapped: Sequence[FieldDefinition | None]) -> None:
    seen: dict[str, str] = {}
    for column, field in zip(header, mapped, strict=True):
        if field is None:
            continue
        if field.id in seen:
            raise PlanError(f"columns {seen[field.id]!r} and {column!r} both map to field {field.name}; "
                            "--skip one of them")
        seen[field.id] = column


def _column_index(header: Sequence[str], column: str, option: str) -> int:
    """The one column named `column`: exactly, else case-insensitively."""
    if column in header:
        return header.index(column)
    folded = [i for i, name in enumerate(header) if name.strip().lower() == column.strip().lower()]
    if len(folded) == 1:
        return folded[0]
    raise PlanError(f"{option} {column}: no such column in the header (columns: {', '.join(header)[:300]})")


def _field(definitions: FieldDefinitions, wanted: str, column: str) -> FieldDefinition:
    field = definitions.by_id(wanted) or definitions.by_name(wanted)
    if field is None:
        raise PlanError(f"--map {column}={wanted}: no field with that name or id")
    return field


def parse_pairs(items: Sequence[str], option: str) -> dict[str, str]:
    """`K=V` arguments (--map, --label) as a dict; PlanError for one without `=` or given twice."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise PlanError(f"{option} expects K=V, got {item!r}")
        if key in parsed:
            raise PlanError(f"{option} {key} given twice")
        parsed[key] = value
    return parsed


def parse_labels(items: Sequence[str], option: str) -> dict[str, str]:
    """`K=V` labels (`--label`, the form's `label` fields), checked as every job's labels are; PlanError."""
    from watcher.sources.base import check_labels

    labels = parse_pairs(items, option)
    try:
        check_labels(labels)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    return labels


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text (save the file as UTF-8)"
    return " ".join(str(exc).split())[:200] or type(exc).__name__
