"""The fake SendGrid's field definitions: reserved fields, per-fake custom fields, export columns.

The reserved fields and their ids are the ones SendGrid publishes in the
`GET /v3/marketing/field_definitions` example of the official spec
(twilio/sendgrid-oai `spec/yaml/tsg_mc_custom_fields_v3.yaml`): `_rf0_T`
first_name ... `_rf23_T` contact_id, the last nine read-only. That list has no
ids for phone_number_id, external_id or anonymous_id, so the fake does not
invent any: a test that needs them passes its own `reserved` list.

The export columns follow a real SendGrid contacts export header: the
upper-cased reserved fields, CREATED_AT, UPDATED_AT, CONTACT_ID, the custom
fields by name, then PHONE_NUMBER_ID, EXTERNAL_ID, ANONYMOUS_ID.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

FIELD_TYPES = ("Text", "Number", "Date")
IDENTIFIERS = ("email", "phone_number_id", "external_id", "anonymous_id")


@dataclass(frozen=True, slots=True)
class FieldDefinition:
    """One reserved or custom field, as field_definitions lists it."""

    id: str
    name: str
    field_type: str
    read_only: bool = False

    def __post_init__(self) -> None:
        if self.field_type not in FIELD_TYPES:
            raise ValueError(f"field_type must be one of {FIELD_TYPES}, not {self.field_type!r}")
        if not self.id or not self.name:
            raise ValueError("a field needs an id and a name")

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> FieldDefinition:
        """A field from JSON ({"id", "name", "field_type", "read_only"?})."""
        return cls(str(raw["id"]), str(raw["name"]), str(raw["field_type"]), bool(raw.get("read_only", False)))


def _reserved(index: int, name: str, kind: str = "T", read_only: bool = False) -> FieldDefinition:
    return FieldDefinition(f"_rf{index}_{kind}", name, {"T": "Text", "D": "Date"}[kind], read_only)


RESERVED_FIELDS: tuple[FieldDefinition, ...] = (
    *(_reserved(i, name) for i, name in enumerate((
        "first_name", "last_name", "email", "alternate_emails", "address_line_1", "address_line_2", "city",
        "state_province_region", "postal_code", "country", "phone_number", "whatsapp", "line", "facebook",
        "unique_name"))),
    _reserved(15, "email_domains", read_only=True),
    _reserved(16, "last_clicked", "D", True),
    _reserved(17, "last_opened", "D", True),
    _reserved(18, "last_emailed", "D", True),
    _reserved(19, "singlesend_id", read_only=True),
    _reserved(20, "automation_id", read_only=True),
    _reserved(21, "created_at", "D", True),
    _reserved(22, "updated_at", "D", True),
    _reserved(23, "contact_id", read_only=True),
)

DEFAULT_CUSTOM_FIELDS: tuple[FieldDefinition, ...] = (
    FieldDefinition("e1_T", "favorite_color", "Text"),
    FieldDefinition("e2_N", "loyalty_points", "Number"),
    FieldDefinition("e3_D", "signup_date", "Date"),
)

# Reserved fields an export writes before CREATED_AT, UPDATED_AT, CONTACT_ID, in this order.
_EXPORTED_RESERVED = ("email", "first_name", "last_name", "address_line_1", "address_line_2", "city",
                      "state_province_region", "postal_code", "country", "alternate_emails", "phone_number",
                      "whatsapp", "line", "facebook", "unique_name")
WRITABLE_RESERVED = frozenset((*_EXPORTED_RESERVED, "phone_number_id", "external_id", "anonymous_id"))


class Fields:
    """A fake account's field definitions; `resolve` turns a field_mappings id into what it writes."""

    __slots__ = ("custom", "reserved")

    def __init__(self, custom: Iterable[FieldDefinition] = DEFAULT_CUSTOM_FIELDS,
                 reserved: Iterable[FieldDefinition] = RESERVED_FIELDS) -> None:
        self.reserved = tuple(reserved)
        self.custom = tuple(custom)
        ids = [field.id for field in (*self.reserved, *self.custom)]
        if len(set(ids)) != len(ids):
            raise ValueError("field ids must be unique")

    def document(self, link_base: str) -> dict[str, Any]:
        """The field_definitions answer."""
        return {
            "custom_fields": [{"id": f.id, "name": f.name, "field_type": f.field_type} for f in self.custom],
            "reserved_fields": [{"id": f.id, "name": f.name, "field_type": f.field_type, "read_only": f.read_only}
                                for f in self.reserved],
            "_metadata": {"self": f"{link_base}/v3/marketing/field_definitions"},
        }

    def resolve(self, field_id: str) -> tuple[str, str]:
        """("reserved", name) or ("custom", id) for a writable field id; ValueError says why not."""
        for field in self.reserved:
            if field.id == field_id:
                if field.read_only or field.name not in WRITABLE_RESERVED:
                    raise ValueError(f"field {field_id!r} ({field.name}) is read-only")
                return "reserved", field.name
        if any(field.id == field_id for field in self.custom):
            return "custom", field_id
        raise ValueError(f"no field definition has the id {field_id!r}")

    def export_columns(self) -> list[tuple[str, str, str]]:
        """(column header, "reserved"|"meta"|"custom", key) in a SendGrid export's order."""
        columns = [(name.upper(), "reserved", name) for name in _EXPORTED_RESERVED]
        columns += [("CREATED_AT", "meta", "created_at"), ("UPDATED_AT", "meta", "updated_at"),
                    ("CONTACT_ID", "meta", "id")]
        columns += [(field.name, "custom", field.id) for field in self.custom]
        columns += [(name.upper(), "reserved", name) for name in IDENTIFIERS[1:]]
        return columns
