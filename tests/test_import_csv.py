"""Mapping a contacts CSV to field ids, and refusing a file before any request is sent."""

from __future__ import annotations

import gc
import gzip
import os
import time
import tracemalloc
import warnings
from pathlib import Path

import pytest

from tests.helpers import config_text
from watcher import cli, csvimport
from watcher.csvimport import (
    MAX_BYTES,
    MAX_HEADER_CHARS,
    PlanError,
    measure_csv,
    parse_field_definitions,
    plan_import,
)
from watcher.testing.fake_sendgrid import FakeSendGrid

# The field_definitions example of the official spec (tsg_mc_custom_fields_v3.yaml), cut down, plus the
# identifier fields real accounts have.
DEFINITIONS = parse_field_definitions({
    "custom_fields": [
        {"id": "w1", "name": "num_orders", "field_type": "Number"},
        {"id": "w2", "name": "dob", "field_type": "Date"},
    ],
    "reserved_fields": [
        {"id": "_rf0_T", "name": "first_name", "field_type": "Text"},
        {"id": "_rf1_T", "name": "last_name", "field_type": "Text"},
        {"id": "_rf2_T", "name": "email", "field_type": "Text"},
        {"id": "_rf8_T", "name": "postal_code", "field_type": "Text"},
        {"id": "_rf21_D", "name": "created_at", "field_type": "Date", "read_only": True},
        {"id": "_rf22_D", "name": "updated_at", "field_type": "Date", "read_only": True},
        {"id": "_rf23_T", "name": "contact_id", "field_type": "Text", "read_only": True},
        {"id": "_rf24_T", "name": "external_id", "field_type": "Text"},
        {"name": "no_id_here", "field_type": "Text"},  # the spec does not require a reserved field's id
    ],
})


def write(tmp_path: Path, text: str, name: str = "contacts.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reserved_and_custom_fields_map_by_name_case_insensitively(tmp_path: Path) -> None:
    """Reserved (email -> _rf2_T) and custom fields are found by name, whatever the case."""
    path = write(tmp_path, "\ufeffEmail,first_name,NUM_ORDERS,dob\na@example.com,Ann,3,2020-01-01\nb@example.com,,1,\n")
    plan = plan_import(path, DEFINITIONS)
    assert ("_rf2_T", "_rf0_T", "w1", "w2") == plan.field_mappings
    assert ("Email", "first_name", "NUM_ORDERS", "dob") == plan.columns  # the BOM is not part of the name
    assert (2, path.stat().st_size) == (plan.rows, plan.bytes)


def test_map_by_name_or_id_and_skip(tmp_path: Path) -> None:
    """--map takes a field name or id; --skip maps the column to null."""
    path = write(tmp_path, "mail,orders,notes,given\na@example.com,1,x,Ann\n")
    plan = plan_import(path, DEFINITIONS, maps={"mail": "email", "orders": "w1", "given": "FIRST_NAME"},
                       skips=["notes"])
    assert ("_rf2_T", "w1", None, "_rf0_T") == plan.field_mappings
    assert "notes   ->  skipped" in plan.table().splitlines()


def test_unknown_column_is_refused_listing_the_known_fields(tmp_path: Path) -> None:
    """An unknown column names itself, the way out, and the writable fields (not read-only ones)."""
    path = write(tmp_path, "email,shoe_size\na@example.com,42\n")
    with pytest.raises(PlanError) as caught:
        plan_import(path, DEFINITIONS)
    message = str(caught.value)
    assert "unknown column 'shoe_size'" in message
    assert "--skip COLUMN" in message and "num_orders" in message and "postal_code" in message
    assert "contact_id" not in message and "\n" not in message


@pytest.mark.parametrize(("header", "options", "expected"), [
    ("first_name,num_orders", {}, "no identifier column"),
    ("email,e_mail", {"maps": {"e_mail": "email"}}, "both map to field email"),
    ("email,notes", {"maps": {"notes": "nope"}}, "--map notes=nope: no field"),
    ("email", {"skips": ["missing"]}, "--skip missing: no such column"),
    ("email,contact_id", {}, "field contact_id is read-only"),
    ("email,dob", {"maps": {"dob": "w2"}, "skips": ["dob"]}, "both mapped (--map) and skipped"),
])
def test_bad_mappings_are_refused(tmp_path: Path, header: str, options: dict, expected: str) -> None:
    """Each mapping mistake is one line saying what is wrong."""
    path = write(tmp_path, f"{header}\n{','.join('x' for _ in header.split(','))}\n")
    with pytest.raises(PlanError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        plan_import(path, DEFINITIONS, **options)


def test_an_export_file_maps_back_skipping_what_an_import_cannot_set(tmp_path: Path) -> None:
    """EMAIL, FIRST_NAME, POSTAL_CODE and custom names map back; CONTACT_ID, CREATED_AT and unknown columns skip."""
    header = "EMAIL,FIRST_NAME,POSTAL_CODE,CREATED_AT,UPDATED_AT,CONTACT_ID,num_orders,EXTERNAL_ID,ANONYMOUS_ID"
    path = tmp_path / "export.csv.gz"
    path.write_bytes(gzip.compress(f"{header}\na@example.com,Ann,12345,2025-01-01,2025-01-02,abc,3,x1,\n".encode()))
    plan = plan_import(path, DEFINITIONS, export_file=True)
    assert ("_rf2_T", "_rf0_T", "_rf8_T", None, None, None, "w1", "_rf24_T", None) == plan.field_mappings
    assert plan.gzipped and 1 == plan.rows
    with pytest.raises(PlanError, match=r"CREATED_AT.*read-only"):
        plan_import(path, DEFINITIONS)  # not as a user's own file


def test_too_many_rows_is_refused_while_counting(tmp_path: Path) -> None:
    """Rows past the limit are refused; quoted newlines do not count as rows."""
    path = write(tmp_path, 'email,first_name\na@example.com,"two\nlines"\nb@example.com,x\n\nc@example.com,y\n')
    assert 3 == measure_csv(path, max_rows=3).rows
    with pytest.raises(PlanError, match="more than 2 rows"):
        measure_csv(path, max_rows=2)


def test_too_big_is_refused_by_its_size_alone(tmp_path: Path) -> None:
    """A file over 5 GB (sparse here) is refused from its size, before its header is read."""
    path = tmp_path / "huge.csv"
    with path.open("wb") as file:
        file.write(b"\xff\xfe not even a CSV")
        file.truncate(MAX_BYTES + 1)
    with pytest.raises(PlanError, match="larger than 5 GB"):
        measure_csv(path)


def test_a_gzip_file_is_limited_by_its_uncompressed_size(tmp_path: Path) -> None:
    """A small .gz holding more than the byte limit is refused while it is read."""
    path = tmp_path / "contacts.csv.gz"
    path.write_bytes(gzip.compress(b"email\n" + b"a@example.com\n" * 10_000))
    with pytest.raises(PlanError, match="larger than"):
        measure_csv(path, max_bytes=50_000)


def test_a_header_over_one_megabyte_is_refused(tmp_path: Path) -> None:
    """A first record longer than 1 MB is no contacts header, and is not read whole."""
    path = write(tmp_path, "email," + "x" * MAX_HEADER_CHARS + "\na@example.com,1\n")
    with pytest.raises(PlanError, match="header is longer than"):
        measure_csv(path)


def gzip_bomb(tmp_path: Path, filler: bytes, megabytes: int, start: bytes = b"") -> Path:
    """A small .csv.gz holding a header, `start`, `megabytes` MB of `filler` repeated, and one contact."""
    path = tmp_path / "bomb.csv.gz"
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(b"email\n" + start)
        for _ in range(megabytes):
            out.write(filler * ((1 << 20) // len(filler)))
        out.write(b"\na@example.com\n")
    return path


@pytest.mark.parametrize(("start", "filler", "refusal"), [
    (b"", b",", "record at line 2 is longer than 1,048,576 characters"),  # one wide line
    (b'a@example.com,"', b'x",' + b"," * 1000 + b'"\n', "record at line 2 is longer than"),  # over quoted lines
    (b"", b"\n", "more than 100,000 blank lines"),
])
def test_a_gzip_bomb_is_refused_in_bounded_memory_and_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: bytes, filler: bytes, refusal: str
) -> None:
    """8 MB of commas, of quoted lines or of blank lines in a few kB of gzip: refused early, in little memory
    (the blank line cap is lowered here: a million lines under tracemalloc take seconds)."""
    monkeypatch.setattr(csvimport, "MAX_BLANK_LINES", 100_000)
    path = gzip_bomb(tmp_path, filler, 8, start)
    started = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(PlanError, match=refusal):
            measure_csv(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20 and time.monotonic() - started < 10, (peak, time.monotonic() - started)


def test_a_gzip_bomb_of_blank_lines_is_refused_by_its_size(tmp_path: Path) -> None:
    """Blank lines count towards the byte limit like any line: the size is checked on every read."""
    with pytest.raises(PlanError, match=r"larger than 0\.0001 GB"):
        measure_csv(gzip_bomb(tmp_path, b"\n", 1), max_bytes=100_000)


def test_not_utf8_and_empty_files_are_one_line_errors(tmp_path: Path) -> None:
    """Latin-1 bytes and a header-only file are refused with a message, not a traceback."""
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"email,first_name\na@example.com,J\xe9r\xf4me\n")
    with pytest.raises(PlanError, match="not UTF-8 text"):
        measure_csv(latin)
    with pytest.raises(PlanError, match="no contacts"):
        measure_csv(write(tmp_path, "email\n"))


# --- through the command: nothing reaches SendGrid -----------------------------------------------------


async def run_import(tmp_path: Path, fake: FakeSendGrid, *argv: str) -> int:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(fake.base_url, f"sqlite:///{tmp_path / 'state.db'}"), encoding="utf-8")
    import asyncio

    return await asyncio.to_thread(cli.main, ["import", "-c", str(config), *argv])


async def test_refused_files_send_no_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Too many rows, too big, or no identifier: exit 2 with one line, and the fake saw no request."""
    many = tmp_path / "many.csv"
    with many.open("w") as file:
        file.write("email\n")
        file.writelines(f"u{i}@example.com\n" for i in range(1_000_001))
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as file:
        file.write(b"email\na@example.com\n")
        file.truncate(MAX_BYTES + 1)
    async with FakeSendGrid() as fake:
        assert 2 == await run_import(tmp_path, fake, str(many))
        assert "more than 1,000,000 rows" in capsys.readouterr().err
        assert 2 == await run_import(tmp_path, fake, str(huge))
        assert "larger than 5 GB" in capsys.readouterr().err
        assert 0 == fake.requests_total
        # A mapping problem needs the field definitions (one GET), and nothing else.
        assert 2 == await run_import(tmp_path, fake, str(write(tmp_path, "first_name\nAnn\n", "anon.csv")))
        assert "no identifier column" in capsys.readouterr().err
        assert {"GET /v3/marketing/field_definitions": 1} == dict(fake.requests_by_route)
    os.unlink(many)


async def test_dry_run_prints_the_mapping_and_request_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run shows the table and the PUT body, reads the definitions only, and tracks nothing."""
    path = write(tmp_path, "email,first_name,favorite_color\na@example.com,Ann,red\n")
    async with FakeSendGrid() as fake:
        assert 0 == await run_import(tmp_path, fake, str(path), "--dry-run", "--list", "l1")
        assert {"GET /v3/marketing/field_definitions": 1} == dict(fake.requests_by_route)
    out = capsys.readouterr().out
    assert "favorite_color  ->  e1_T (favorite_color)" in out
    assert "PUT " + fake.base_url + "/v3/marketing/contacts/imports" in out
    assert '"field_mappings": [\n    "_rf2_T",\n    "_rf0_T",\n    "e1_T"\n  ]' in out and '"l1"' in out
    assert not (tmp_path / "state.db").exists()


def test_a_gzip_file_is_closed_once_measured(tmp_path: Path) -> None:
    """Reading an export's .csv.gz closes the file under the gzip stream too (no ResourceWarning)."""
    path = tmp_path / "contacts.csv.gz"
    path.write_bytes(gzip.compress(b"email\na@example.com\n"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert 1 == measure_csv(path).rows
        gc.collect()
    assert [] == [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
