"""The SendGrid accounts one process talks to, each with its own session, rate budget and client.

SendGrid limits requests per account (API key), so each account has its own budget: in
memory, or shared by every replica through Redis when the state store is Redis. Two accounts
never share a rate window: account `name` keeps its shared window under `<prefix>:ratelimit:<name>`.
The daemon, the CLI commands and the API open them the same way:
`async with Accounts.open(config, clock=SystemClock()) as accounts: accounts.get(name).client`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import cast

import aiohttp

from watcher.clock import Clock
from watcher.config import Config
from watcher.config_accounts import check_account
from watcher.net import configured_session
from watcher.ratelimit import LocalRateBudget, RateBudget
from watcher.sendgrid import SendGridClient, SendGridSettings
from watcher.store import open_store
from watcher.store.base import StateStore


@dataclass
class Account:
    """One configured account, opened."""

    name: str
    settings: SendGridSettings
    session: aiohttp.ClientSession
    budget: RateBudget
    client: SendGridClient

    @property
    def budget_is_shared(self) -> bool:
        """A Redis window all replicas draw from (else this process's own)."""
        return not isinstance(self.budget, LocalRateBudget)


class Accounts:
    """Every configured account, opened together on enter and closed together on exit."""

    def __init__(self, config: Config, *, clock: Clock, store: StateStore | None = None) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        self.names: tuple[str, ...] = tuple(config.accounts)
        self.default: str = config.default_account
        self._open: dict[str, Account] = {}
        self._stack: contextlib.AsyncExitStack | None = None

    @classmethod
    def open(
        cls, config: Config, *, clock: Clock, store_url: str | None = None, store: StateStore | None = None
    ) -> Accounts:
        """The accounts of `config`, to enter with `async with`; their budgets are shared through
        Redis when the state store (`store`, else the one `store_url` names) is Redis."""
        return cls(config, clock=clock, store=store or (open_store(store_url) if store_url else None))

    async def __aenter__(self) -> Accounts:
        async with contextlib.AsyncExitStack() as stack:
            for name, settings in self.config.accounts.items():
                self._open[name] = self._start(stack, name, settings)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every session and shared budget (once; later calls do nothing)."""
        stack, self._stack = self._stack, None
        self._open = {}
        if stack is not None:
            await stack.aclose()

    def get(self, name: str | None) -> Account:
        """The account `name` (None: the default); ValueError naming the configured ones if unknown."""
        check_account(name, self.names)
        if not self._open:
            raise RuntimeError("accounts used before they were opened")
        return self._open[self.default if name is None else name]

    def __iter__(self) -> Iterator[Account]:
        """The opened accounts, the default first."""
        return iter(self._open.values())

    @property
    def clients(self) -> Mapping[str, SendGridClient]:
        """Each opened account's client by name, as the engine polls them."""
        return {name: account.client for name, account in self._open.items()}

    def _start(self, stack: contextlib.AsyncExitStack, name: str, settings: SendGridSettings) -> Account:
        session = configured_session()
        stack.push_async_callback(session.close)
        budget = self._budget(stack, name, settings)
        client = SendGridClient(settings, session=session, budget=budget, clock=self.clock)
        return Account(name, settings, session, budget, client)

    def _budget(self, stack: contextlib.AsyncExitStack, name: str, settings: SendGridSettings) -> RateBudget:
        # The state URL may carry `?prefix=`, which redis-py rejects on connect: use the URL and
        # prefix the store parsed, so the budget lives in the store's namespace.
        max_rate, max_wait = settings.max_rate, self.config.polling.max_interval
        if type(self.store).__module__ == "watcher.store.redis":  # redis-py is imported only for Redis state
            from watcher.ratelimit.shared import RedisRateBudget
            from watcher.store.redis import RedisStore

            store = cast(RedisStore, self.store)
            shared = RedisRateBudget(
                store.url, key=f"{store.prefix}:ratelimit:{name}", max_rate=max_rate, clock=self.clock,
                max_wait=max_wait,
            )
            stack.push_async_callback(shared.aclose)
            return shared
        return LocalRateBudget(max_rate=max_rate, clock=self.clock, max_wait=max_wait)
