"""Incremental CSV parsing for the fake's upload URL: bytes in, complete records out.

An upload may be hundreds of megabytes, so it is parsed as it arrives and
never held whole. `CsvStream.feed` takes the next chunk of the (already
decompressed) body and returns the records it completes. A record may span
lines inside quotes, so lines are handed to the `csv` reader only in groups
that end on a record boundary: a line end where the quotes seen so far are
balanced. Memory is one chunk plus the longest record, which is capped.
"""

from __future__ import annotations

import codecs
import csv
from collections import deque
from collections.abc import Iterator

MAX_RECORD_CHARS = 1 << 20


class _Lines:
    """The reader's input: lines queued by the stream; empty means wait for more."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: deque[str] = deque()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if not self.queue:
            raise StopIteration
        return self.queue.popleft()


class CsvStream:
    """Feed UTF-8 bytes (a BOM is dropped), get the non-blank records they complete."""

    __slots__ = ("_decoder", "_group", "_group_chars", "_lines", "_odd_quotes", "_partial", "_reader")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._partial = ""  # text after the last line end
        self._group: list[str] = []  # lines of a record still open inside quotes
        self._group_chars = 0
        self._odd_quotes = False
        self._lines = _Lines()
        self._reader = csv.reader(self._lines)

    def feed(self, data: bytes, *, final: bool = False) -> list[list[str]]:
        """The records completed by `data` (all the rest when `final`); ValueError on bad input."""
        text = self._partial + self._decoder.decode(data, final)
        end = text.rfind("\n")
        if final:
            self._partial, complete = "", text if text.endswith("\n") or not text else text + "\n"
        else:
            self._partial, complete = text[end + 1:], text[:end + 1]
        if len(self._partial) > MAX_RECORD_CHARS:
            raise ValueError(f"a line is longer than {MAX_RECORD_CHARS} characters")
        records: list[list[str]] = []
        if complete and not self._odd_quotes and '"' not in complete:  # fast path: every line ends a record
            self._lines.queue.extend(line + "\n" for line in complete[:-1].split("\n"))
            self._drain(records)
        elif complete:
            for line in complete[:-1].split("\n"):
                self._take(line + "\n", records)
        if final and self._group:  # an unterminated quote: the reader closes the field
            self._release(records)
        return records

    def _take(self, line: str, records: list[list[str]]) -> None:
        """Add one line; release the group when it ends a record."""
        self._group.append(line)
        self._group_chars += len(line)
        if line.count('"') % 2:
            self._odd_quotes = not self._odd_quotes
        if not self._odd_quotes:
            self._release(records)
        elif self._group_chars > MAX_RECORD_CHARS:
            raise ValueError(f"a record is longer than {MAX_RECORD_CHARS} characters")

    def _release(self, records: list[list[str]]) -> None:
        """Parse the grouped lines into records, skipping blank ones."""
        self._lines.queue.extend(self._group)
        self._group.clear()
        self._group_chars = 0
        self._odd_quotes = False
        self._drain(records)

    def _drain(self, records: list[list[str]]) -> None:
        """Parse every queued line (they end on a record boundary) into `records`."""
        try:
            records.extend(record for record in self._reader if any(record))
        except csv.Error as exc:
            raise ValueError(str(exc)) from exc
