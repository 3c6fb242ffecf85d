"""``python -m benchmarks [--quick|--full] [--only NAME[,NAME...]] [--output DIR]``.

Full mode (the default) writes results.json, RESULTS.md and policy.png into
benchmarks/; quick mode (CI: small sizes, under a minute, no speed asserted) writes
them into --output, or a fresh temporary directory, never over the committed results.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._harness import Figure, Mode
from benchmarks._report import write

#: Figure name -> module; the order of the report.
BENCHMARKS = {
    "poll_cost": "benchmarks.poll_cost",
    "scale": "benchmarks.scale",
    "restart": "benchmarks.restart",
    "delivery": "benchmarks.delivery",
    "delivery_throughput": "benchmarks.delivery_throughput",
    "page_load": "benchmarks.page_load",
    "rate_limits": "benchmarks.rate_limits",
    "redis_cost": "benchmarks.redis_cost",
    "policy": "benchmarks.policy_sim",
    "policy_limit": "benchmarks.policy_limit",
    "policy_budget": "benchmarks.policy_budget",
    "policy_daemon": "benchmarks.policy_daemon",
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Benchmarks of the watcher, each figure beside its baseline."
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, seconds per figure (CI)")
    size.add_argument("--full", action="store_true", help="the committed sizes (default)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--output", type=Path, default=None, help="where results go (full: benchmarks/)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")
    args.chosen = chosen
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    quick = bool(args.quick)
    output: Path = args.output or (
        Path(tempfile.mkdtemp(prefix="bench-quick-")) if quick else Path(__file__).resolve().parent
    )
    output.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-work-"))
    mode = Mode(quick=quick, workdir=workdir, output=output)
    figures: list[Figure] = []
    began = time.monotonic()
    try:
        for name in args.chosen:
            started = time.monotonic()
            print(f"[{name}] running ({'quick' if quick else 'full'})...", flush=True)
            figure: Figure = importlib.import_module(BENCHMARKS[name]).run(mode)
            met = {True: "target met", False: "TARGET MISSED", None: "no target in quick mode"}[figure.met]
            print(f"[{name}] {figure.summary}; ratio {figure.ratio} ({met}) in {time.monotonic() - started:.1f} s",
                  flush=True)
            figures.append(figure)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    json_path, md_path = write(output, "quick" if quick else "full", figures)
    print(f"wrote {json_path} and {md_path} in {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
