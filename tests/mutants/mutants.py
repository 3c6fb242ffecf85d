"""The deliberate breaks: each one removes what keeps an invariant, and names the tests that must notice.

An entry is (name, file, exact old text, new text, pytest arguments, why). The old text must occur
exactly once in the file; when the code it names is rewritten, `python -m tests.mutants` reports
the entry STALE and it is updated here. Keep each break to the one line or clause that holds the
invariant, so that only the invariant changes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    """One deliberate break and the tests that guard against it."""

    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "masking-exceptions",
        "watcher/logs.py",
        '        return _clean(f"{type(value).__name__}: {value}")',
        '        return f"{type(value).__name__}: {value}"',
        ("tests/test_logs_redaction.py::test_exception_values_and_nested_fields_are_masked",),
        "a secret inside an exception value is logged as is",
    ),
    Mutant(
        "masking-nested",
        "watcher/logs.py",
        "        return {k: _redact_nested(v) for k, v in value.items()}",
        "        return dict(value)",
        ("tests/test_logs_redaction.py::test_exception_values_and_nested_fields_are_masked",),
        "a secret inside a nested dict is logged as is",
    ),
    Mutant(
        "drain-zero",
        "watcher/daemon.py",
        "engine.drain(grace), outbox.drain(grace),",
        "engine.drain(0.0), outbox.drain(0.0),",
        ("tests/test_shutdown.py", "tests/test_crash.py::test_sigterm_finishes_in_flight_work_and_exits_0"),
        "shutdown cuts in-flight polls and deliveries at once instead of giving them shutdown_grace",
    ),
    Mutant(
        "record-without-token",
        "watcher/store/sqlite.py",
        '_HELD = "id = ? AND outcome IS NULL AND lease_owner = ? AND lease_until > ?"',
        '_HELD = "id = ? AND outcome IS NULL AND (lease_owner = ? OR 1) AND lease_until > ?"',
        ("tests/contract/test_store_leases.py", "tests/contract/test_store.py", "-k", "sqlite"),
        "a poll or outcome is recorded by whoever asks, not only the holder of the lease's token",
    ),
    Mutant(
        "record-after-lease-expiry",
        "watcher/store/sqlite.py",
        '_HELD = "id = ? AND outcome IS NULL AND lease_owner = ? AND lease_until > ?"',
        '_HELD = "id = ? AND outcome IS NULL AND lease_owner = ? AND (lease_until > ? OR 1)"',
        ("tests/contract/test_store_leases.py", "-k", "sqlite"),
        "a holder whose lease expired (another replica may hold the job now) still records",
    ),
    Mutant(
        "api-without-token",
        "watcher/server.py",
        '        if scheme.lower() == "bearer" and _same(given.strip(), self._token):',
        "        if True:",
        ("tests/test_server.py", "tests/test_api_security.py"),
        "the API accepts any request, or none, as if it carried the token",
    ),
    Mutant(
        "tombstone-ignored",
        "watcher/store/sqlite.py",
        '" WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE id = ?)"',
        '" WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE id = ? AND 0)"',
        ("tests/contract/test_store_tombstones.py", "-k", "sqlite"),
        "a removed or purged job comes back when a source lists it again",
    ),
    Mutant(
        "rate-window-ignored",
        "watcher/ratelimit/window.py",
        "    if s.remaining is not None and s.remaining < 1 and s.reset_at is not None:",
        "    if False:",
        ("tests/test_ratelimit.py", "tests/test_ratelimit_windows.py", "tests/test_ratelimit_parity.py"),
        "requests leave although the window is used up, until SendGrid answers 429",
    ),
    Mutant(
        "outcome-two-transactions",
        "watcher/store/sqlite.py",
        """            changed = conn.execute(_RECORD_OUTCOME, params).rowcount == 1
            if changed:
                conn.executemany(""",
        """            changed = conn.execute(_RECORD_OUTCOME, params).rowcount == 1
        if changed:
            with self._write() as conn:
                conn.executemany(""",
        ("tests/test_promises.py::test_an_outcome_whose_deliveries_fail_to_insert_is_not_written",),
        "an outcome is committed before its deliveries: a failure between loses the notifications",
    ),
    Mutant(
        "replicas-double-claim",
        "watcher/store/redis_scripts.py",
        """    elseif not live(v[2], v[3]) then
      local token = prefix..':'..(#out + 1)
      redis.call('HSET', key, 'owner', token, 'lease_until', until_s)
      setdue(id, v[4], until_s)""",
        """    else
      local token = prefix..':'..(#out + 1)
      redis.call('HSET', key, 'owner', token, 'lease_until', until_s)""",
        ("tests/test_replicas.py::test_three_replicas_one_killed_share_the_work_exactly_once",),
        "a claimed job stays due, so another replica polls it while the first one still does",
    ),
    Mutant(
        "unknown-status-every-poll",
        "watcher/engine_observe.py",
        "        if (job_id, status) not in self._unknown_logged:",
        "        if True:",
        ("tests/test_promises.py::test_an_unknown_status_is_logged_once_per_job",),
        "an unknown status is logged on every poll instead of once",
    ),
    Mutant(
        "store-down-at-start-fatal",
        "watcher/supervise.py",
        """            await store.open()
        except StoreUnavailable as exc:""",
        """            await store.open()
        except StoreUnavailable as exc:
            raise""",
        ("tests/test_promises.py::test_the_daemon_waits_for_a_store_that_is_down_at_start",),
        "a store unreachable at start stops the daemon instead of being retried",
    ),
    Mutant(
        "yaml-python-tags",
        "watcher/yamlloc.py",
        "        return yaml.compose(text, Loader=_LOADER)\n",
        "        return (yaml.unsafe_load(text), yaml.compose(text, Loader=_LOADER))[1]\n",
        ("tests/test_config.py::test_python_tags_construct_nothing",),
        "a config's !!python tags run code while it is read",
    ),
)
