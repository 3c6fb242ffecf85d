"""Apply each deliberate break to a scratch copy of the repository and run the tests that guard it.

A mutant is killed when its guard tests fail (pytest exit 1), and SURVIVED when they pass: then
the invariant it breaks has no test that notices. An entry whose old text is no longer in its
file (exactly once) is STALE and must be updated in tests/mutants/mutants.py. Before the mutants,
the guard tests run once unchanged (the baseline): a failure there means the tree itself is
broken, and no mutant result would mean anything.

    python -m tests.mutants               # every mutant
    python -m tests.mutants drain-zero    # some, by name
    python -m tests.mutants --list
    python -m tests.mutants --check       # only: is every entry's old text still there?

Exit 0 when every mutant was killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.mutants.mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 600.0  # seconds per pytest run: a hang counts as an error, not a kill


def repo_files(root: Path) -> list[str]:
    """The working tree as it is now: tracked and untracked files, without what .gitignore names."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (root / name).is_file()]


def scratch_copy(root: Path, into: Path) -> Path:
    """Copy the working tree (uncommitted changes included) into `into`/repo."""
    copy = into / "repo"
    for name in repo_files(root):
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return copy


def pytest(copy: Path, tests: Iterable[str], *, first_failure: bool) -> tuple[int, str, float]:
    """Run pytest on `tests` inside the copy, importing the copy's watcher; (exit code, output tail, seconds)."""
    # PYTHONPATH puts the copy ahead of the editable install, for the daemons the tests start too.
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("COVERAGE_PROCESS_CONFIG", None)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    if first_failure:
        args.insert(4, "-x")
    started = time.monotonic()
    try:
        done = subprocess.run(args, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT:g}s", time.monotonic() - started
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    return done.returncode, tail, time.monotonic() - started


def apply(copy: Path, mutant: Mutant) -> str | None:
    """Write the mutant into the copy; the original text to restore, or None when the entry is stale."""
    path = copy / mutant.file
    original = path.read_text(encoding="utf-8")
    if original.count(mutant.old) != 1:
        return None
    path.write_text(original.replace(mutant.old, mutant.new), encoding="utf-8")
    return original


def run_one(copy: Path, mutant: Mutant, *, show: bool = False) -> str:
    """KILLED, SURVIVED, STALE or ERROR for one mutant, printed with what the tests said."""
    original = apply(copy, mutant)
    if original is None:
        print(f"STALE     {mutant.name}: its old text is not in {mutant.file} exactly once; update tests/mutants/mutants.py")
        return "STALE"
    try:
        code, tail, seconds = pytest(copy, mutant.tests, first_failure=True)
    finally:
        (copy / mutant.file).write_text(original, encoding="utf-8")
    verdict = {0: "SURVIVED", 1: "KILLED"}.get(code, "ERROR")
    print(f"{verdict:<9} {mutant.name} ({seconds:.0f}s): {mutant.why}")
    if show or verdict != "KILLED":
        print("    " + tail.replace("\n", "\n    "))
    return verdict


def baseline(copy: Path, mutants: Sequence[Mutant]) -> bool:
    """Run each distinct set of guard tests once, unchanged; True when every set passes."""
    ok = True
    for tests in dict.fromkeys(mutant.tests for mutant in mutants):  # each keeps its own -k
        code, tail, seconds = pytest(copy, tests, first_failure=False)
        print(f"baseline  {' '.join(tests)}: exit {code} ({seconds:.0f}s)")
        if code != 0:
            print("    " + tail.replace("\n", "\n    "))
            ok = False
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their guard tests")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unchanged run of the guard tests")
    parser.add_argument("--check", action="store_true", help="only check that every entry still applies")
    parser.add_argument("--show", action="store_true", help="print how the tests failed for killed mutants too")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    if unknown := set(args.names) - {m.name for m in MUTANTS}:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name}: {mutant.file} -> {' '.join(mutant.tests)}\n    {mutant.why}")
        return 0
    if args.check:
        stale = [m.name for m in chosen if (ROOT / m.file).read_text(encoding="utf-8").count(m.old) != 1]
        print(f"stale entries: {', '.join(stale)}" if stale else f"all {len(chosen)} entries apply")
        return 1 if stale else 0
    with tempfile.TemporaryDirectory(prefix="iw-mutants-") as tmp:
        copy = scratch_copy(ROOT, Path(tmp))
        if not args.no_baseline and not baseline(copy, chosen):
            print("the guard tests fail without any mutant: fix the tree first")
            return 1
        verdicts = [run_one(copy, mutant, show=args.show) for mutant in chosen]
    killed = verdicts.count("KILLED")
    print(f"{killed} of {len(verdicts)} mutants killed")
    return 0 if killed == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
