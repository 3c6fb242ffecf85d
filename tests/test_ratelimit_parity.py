"""The Lua script on the real Redis and the Python window rule give the same answers to the same events."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.ratelimit import _lua
from watcher.ratelimit.shared import _text, script_args
from watcher.ratelimit.window import Answer, Observation, Params, WindowState, step

START = 1_800_000_000.0
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Step:
    """One call of the script: time moves on, answers and releases arrive, maybe an acquire."""

    advance: float
    observations: tuple[Observation, ...]
    finished: tuple[int | None, ...]
    acquire: int  # slots wanted; 0: no acquire


def _maybe(strategy: st.SearchStrategy[float]) -> st.SearchStrategy[float | None]:
    return st.none() | strategy


def _ahead(low: float, high: float) -> st.SearchStrategy[float]:
    """Seconds from now, in steps of 1/8 so that answers often fall on window edges."""
    return st.integers(int(low * 8), int(high * 8)).map(lambda n: n / 8)


observations = st.builds(
    Observation,
    limit=_maybe(st.integers(1, 8).map(float)),
    blocked_until=_maybe(_ahead(-1, 3)),  # offsets; made absolute in the test
    remaining=_maybe(st.integers(0, 8).map(float)),
    reset_at=_maybe(_ahead(-1, 4)),
    seq=st.none() | st.integers(-1, 25),
    later=st.integers(0, 3),
    probe=st.booleans(),
)
steps = st.builds(
    Step,
    advance=_ahead(0, 2.5),
    observations=st.lists(observations, max_size=3).map(tuple),
    finished=st.lists(st.none() | st.integers(0, 25), max_size=3).map(tuple),
    acquire=st.integers(0, 1) | st.just(1) | st.integers(2, 5),
)


def _absolute(seen: Observation, now: float) -> Observation:
    blocked = None if seen.blocked_until is None else now + seen.blocked_until
    reset = None if seen.reset_at is None else now + seen.reset_at
    return Observation(seen.limit, blocked, seen.remaining, reset, seen.seq, seen.later, seen.probe)


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis(socket_connect_timeout=2.0, socket_timeout=5.0)
    try:
        connection.ping()
    except (OSError, redis.ConnectionError):
        pytest.skip("no Redis at 127.0.0.1:6379")
    yield connection
    connection.close()


def _stored(client: redis.Redis, key: str) -> dict[str, float | None]:
    raw = {_text(name): float(value) for name, value in client.hgetall(key).items()}
    return {name: raw.get(name) for name in _lua.FIELDS}


def _expected(state: WindowState) -> dict[str, float | None]:
    values = state._asdict()
    return {name: None if value is None else float(value) for name, value in values.items()}


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=0, abs_tol=TOLERANCE)


Reply = tuple[bool, float, bool, int, float | None, int, float | None]


def _replied(reply: list[bytes]) -> Reply:
    granted, wait, probe_out, seq, shown, count, reset_at = (part.decode() for part in reply)
    return (granted == "1", float(wait), probe_out == "1", int(float(seq)), float(shown) if shown else None,
            int(count), float(reset_at) if reset_at else None)  # fmt: skip


def _python_reply(answer: Answer | None, state: WindowState) -> Reply:
    if answer is None:
        return False, 0.0, False, 0, state.remaining, 0, state.reset_at
    return answer.granted, answer.wait, answer.probe_out, answer.seq, state.remaining, answer.slots, state.reset_at


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(steps, min_size=1, max_size=25), max_rate=st.sampled_from([None, 2.0, 8.0]))
def test_lua_and_python_rule_agree(client: redis.Redis, script: list[Step], max_rate: float | None) -> None:
    """Every acquire answer and every stored field of the Lua script equals the Python rule's, step by step."""
    interval = 1.0 / max_rate if max_rate else 0.0
    params = Params(interval=interval, early=min(interval, 0.05))
    run_lua = client.register_script(_lua.SCRIPT)
    key = f"test:import-watcher:parity:{uuid.uuid4().hex}"
    state, now = WindowState(), START
    try:
        for number, event in enumerate(script):
            now += event.advance
            seen = tuple(_absolute(o, now) for o in event.observations)
            state, answer = step(state, now, params, seen, event.finished, acquire=event.acquire)
            args = script_args(
                now, interval=params.interval, early=params.early, acquire=event.acquire,
                observations=list(seen), finished=list(event.finished),
            )  # fmt: skip
            lua = _replied(run_lua(keys=[key], args=args))
            python = _python_reply(answer, state)
            assert all(_close(a, b) for a, b in zip(python, lua, strict=True)), (number, python, lua)
            stored, expected = _stored(client, key), _expected(state)
            differ = {name for name in expected if not _close(expected[name], stored[name])}
            assert set() == differ, (number, expected, stored)
    finally:
        client.delete(key)
