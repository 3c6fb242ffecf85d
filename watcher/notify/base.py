"""The notifier seam: what a notifier is, and what the outbox expects of it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import aiohttp

from watcher.models import Delivery
from watcher.schema import Field, Secret

DEFAULT_DELIVERY_DEADLINE = 24 * 3600.0


@runtime_checkable
class Notifier(Protocol):
    """Sends one rendered event somewhere.

    `send` returns on success and raises `RetryableDeliveryError` (with an
    optional `retry_after`) or `PermanentDeliveryError` otherwise: never a bool.
    """

    type_name: ClassVar[str]
    fields: ClassVar[tuple[Field, ...]]
    name: str
    delivery_deadline: float

    async def start(self, session: aiohttp.ClientSession) -> None: ...

    async def close(self) -> None: ...

    async def send(self, delivery: Delivery) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Cross-field problems as (setting name, message); config reports them with lines."""
        ...


class BaseNotifier(ABC):
    """Common plumbing: settings, the shared HTTP session, masked `describe()`."""

    type_name: ClassVar[str] = ""
    fields: ClassVar[tuple[Field, ...]] = ()

    def __init__(
        self,
        name: str,
        settings: Mapping[str, Any],
        *,
        delivery_deadline: float = DEFAULT_DELIVERY_DEADLINE,
        templates: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.settings = dict(settings)
        self.delivery_deadline = delivery_deadline
        self.templates = dict(templates or {})
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"notifier {self.name} used before start()")
        return self._session

    async def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def close(self) -> None:
        self._session = None

    @abstractmethod
    async def send(self, delivery: Delivery) -> None:
        """Deliver, or raise RetryableDeliveryError / PermanentDeliveryError (see Notifier)."""

    def describe(self) -> dict[str, Any]:
        """Settings fit for logs and `status`: secret fields masked."""
        secret_names = {f.name for f in self.fields if f.secret}
        shown: dict[str, Any] = {"name": self.name, "type": self.type_name}
        for key, value in self.settings.items():
            if key in secret_names or isinstance(value, Secret):
                shown[key] = "********" if value else None
            else:
                shown[key] = value
        return shown

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Cross-field problems as (setting name, message); none by default."""
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
