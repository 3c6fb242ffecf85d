"""The fake SendGrid's contact store: what imports and upserts wrote, so exports can return it.

Contacts are keyed by their first identifier (email, lower-cased, else
phone_number_id, external_id or anonymous_id). A job's contacts land when the
job finishes, as on SendGrid: `stage` holds them until then and `settle(now)`
applies every batch that is due. Memory stays bounded: past `limit` stored and
staged contacts, a job's further contacts are only counted (`dropped`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from watcher.testing.fake_fields import IDENTIFIERS, WRITABLE_RESERVED
from watcher.testing.jobs import iso

DEFAULT_CONTACT_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Contact:
    """One stored contact; replaced, never changed, so an export's snapshot stays as it was."""

    id: str
    fields: Mapping[str, str]  # reserved field name -> value
    custom: Mapping[str, str]  # custom field id -> value
    list_ids: frozenset[str]
    created_at: float
    updated_at: float

    def document(self) -> dict[str, Any]:
        """The contact as JSON (the ContactDetails3 names)."""
        return {**self.fields, "id": self.id, "custom_fields": dict(self.custom),
                "list_ids": sorted(self.list_ids), "segment_ids": [],
                "created_at": iso(self.created_at), "updated_at": iso(self.updated_at)}


@dataclass(frozen=True, slots=True)
class ContactRow:
    """What one accepted import row or upserted contact writes."""

    key: str
    fields: Mapping[str, str]
    custom: Mapping[str, str]

    @classmethod
    def of(cls, fields: dict[str, str], custom: Mapping[str, str]) -> ContactRow:
        """The row of these values; SendGrid keeps e-mail addresses lower-cased."""
        if "email" in fields:
            fields["email"] = fields["email"].strip().lower()
        return cls(identity(fields) or "", fields, custom)


def identity(fields: Mapping[str, str]) -> str | None:
    """The store key of a contact with these reserved fields, or None without an identifier."""
    for name in IDENTIFIERS:
        value = fields.get(name, "").strip()
        if value:
            return f"{name}:{value}"
    return None


def identifier_problem(fields: Mapping[str, str]) -> str | None:
    """Why SendGrid would reject a contact with these reserved fields, or None."""
    email = fields.get("email", "").strip()
    if email and "@" not in email:
        return "invalid email"
    if identity(fields) is None:
        return "email is required"
    return None


def row_from_json(contact: Mapping[str, Any]) -> ContactRow | None:
    """The row a PUT /v3/marketing/contacts item writes, or None when it has no identifier."""
    fields = {name: str(value) for name, value in contact.items()
              if name in WRITABLE_RESERVED and isinstance(value, str | int | float) and str(value)}
    if isinstance(contact.get("alternate_emails"), list):
        fields["alternate_emails"] = ",".join(map(str, contact["alternate_emails"]))
    custom_raw = contact.get("custom_fields")
    custom = {str(k): str(v) for k, v in custom_raw.items()} if isinstance(custom_raw, dict) else {}
    row = ContactRow.of(fields, custom)
    return None if identifier_problem(row.fields) else row


@dataclass(slots=True)
class _Batch:
    """A job's contacts, waiting for the job to finish."""

    due: float
    rows: list[ContactRow]
    list_ids: frozenset[str]
    keys: set[str] = field(default_factory=set)


class ContactStore:
    """Contacts by identifier key, plus batches staged until their job finishes."""

    __slots__ = ("_batches", "_contacts", "_staged", "dropped", "limit")

    def __init__(self, limit: int = DEFAULT_CONTACT_LIMIT) -> None:
        self.limit = limit
        self.dropped = 0  # contacts counted but not kept, past the limit
        self._contacts: dict[str, Contact] = {}
        self._batches: list[_Batch] = []
        self._staged = 0

    def room(self) -> int:
        """How many more contacts may be kept (stored or staged)."""
        return max(0, self.limit - len(self._contacts) - self._staged)

    def knows(self, key: str) -> bool:
        """Whether a contact with this key is stored or staged (so a new row would update it)."""
        return key in self._contacts or any(key in batch.keys for batch in self._batches)

    def stage(self, rows: list[ContactRow], due: float, list_ids: Iterable[str] = ()) -> None:
        """Keep `rows` until `due`, then write them (the caller keeps within `room`)."""
        if rows:
            batch = _Batch(due, rows, frozenset(list_ids), {row.key for row in rows})
            self._batches.append(batch)
            self._staged += len(rows)

    def settle(self, now: float) -> None:
        """Write every staged batch that is due, oldest first."""
        due = [batch for batch in self._batches if batch.due <= now]
        if not due:
            return
        self._batches = [batch for batch in self._batches if batch.due > now]
        for batch in sorted(due, key=lambda b: b.due):
            self._staged -= len(batch.rows)
            for row in batch.rows:
                self._write(row, batch.list_ids, batch.due)

    def _write(self, row: ContactRow, list_ids: frozenset[str], at: float) -> None:
        """Create or merge one contact; past the limit it is only counted."""
        old = self._contacts.get(row.key)
        if old is None:
            if len(self._contacts) >= self.limit:
                self.dropped += 1
                return
            self._contacts[row.key] = Contact(str(uuid.uuid4()), dict(row.fields), dict(row.custom),
                                              list_ids, at, at)
            return
        self._contacts[row.key] = Contact(old.id, {**old.fields, **row.fields}, {**old.custom, **row.custom},
                                          old.list_ids | list_ids, old.created_at, at)

    def snapshot(self, now: float, list_ids: Iterable[str] = ()) -> list[Contact]:
        """The contacts as of `now`, in any of `list_ids` when given."""
        self.settle(now)
        wanted = frozenset(list_ids)
        contacts = self._contacts.values()
        return [c for c in contacts if c.list_ids & wanted] if wanted else list(contacts)

    def delete(self, now: float, contact_ids: Iterable[str] | None) -> int:
        """Delete these contact ids (None: all); returns how many went."""
        self.settle(now)
        if contact_ids is None:
            gone = len(self._contacts)
            self._contacts.clear()
            return gone
        ids = frozenset(contact_ids)
        keys = [key for key, contact in self._contacts.items() if contact.id in ids]
        for key in keys:
            del self._contacts[key]
        return len(keys)

    def clear(self) -> None:
        """Forget every contact, batch and count."""
        self._contacts.clear()
        self._batches.clear()
        self._staged = self.dropped = 0
