"""results.json and RESULTS.md from the figures of one run."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._harness import Figure

ORDER = ("poll_cost", "scale", "restart", "delivery", "delivery_throughput", "page_load", "rate_limits", "redis_cost",
         "policy", "policy_limit", "policy_budget", "policy_daemon")


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def merge(path: Path, mode: str, figures: Sequence[Figure]) -> dict[str, Any]:
    """This run's figures, over those of an earlier run of the same mode kept in `path`."""
    kept: dict[str, dict[str, Any]] = {}
    if path.exists():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
            if earlier.get("mode") == mode:
                kept = {f["key"]: f for f in earlier.get("figures", [])}
        except (ValueError, AttributeError):
            kept = {}
    for figure in figures:
        kept[figure.key] = figure.as_json()
    ordered = sorted(kept.values(), key=lambda f: ORDER.index(f["key"]) if f["key"] in ORDER else len(ORDER))
    return {
        "mode": mode,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "figures": ordered,
    }


def markdown(results: dict[str, Any]) -> str:
    """The results as a markdown page: one table, then each figure's details."""
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"`python -m benchmarks` ({results['mode']} mode), {results['generated_at']}, Python {m['python']},"
        f" {m['cpus']} CPUs, {m['platform']}. Each figure is measured in the same run as its baseline;"
        " the machine is shared, so compare ratios, not absolute numbers, across runs.",
        "",
        "| # | figure | watcher | baseline | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for number, f in enumerate(results["figures"], 1):
        met = {True: "yes", False: "**no**", None: "n/a (quick)"}[f["met"]]
        ratio = "" if f["ratio"] is None else f"{f['ratio']:g}×"
        lines.append(
            f"| {number} | {f['title']} | {f['value']:g} {f['unit']} | {f['baseline']:g} ({f['baseline_label']}) |"
            f" {ratio} | {f['target']} | {met} |"
        )
    lines.append("")
    for f in results["figures"]:
        lines += [f"## {f['title']}", "", f["summary"], ""]
        lines += _details(f)
    return "\n".join(lines).rstrip() + "\n"


def _details(figure: dict[str, Any]) -> list[str]:
    details = figure["details"]
    if figure["key"] == "policy":
        return _policy_details(details)
    flat = {k: v for k, v in details.items() if not isinstance(v, dict | list)}
    return [f"- {key}: {value}" for key, value in flat.items()] + [""]


def _policy_details(details: dict[str, Any]) -> list[str]:
    lines = [
        "| policy | polls/job mean | polls/job p95 | delay mean | delay p50 | delay p95 | delay/run time p50 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in details["policies"].items():
        lines.append(
            f"| {name} | {s['polls_mean']:.2f} | {s['polls_p95']:g} | {s['delay_mean_s']:.1f} s |"
            f" {s['delay_p50_s']:.1f} s | {s['delay_p95_s']:.1f} s | {s['relative_delay_p50']:.2f} |"
        )
    lines += [
        "",
        f"![polls vs delay]({details['plot']})",
        "",
        "Sweep of the watcher's constants (`growth`, `jitter`) and `initial_delay`:",
        "",
        "| growth | jitter | initial_delay | polls/job | delay mean | delay p95 | meets target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    meeting = {(r["growth"], r["jitter"], r["initial_delay_s"]) for r in details["sweep_meeting_target"]}
    for r in details["sweep"]:
        ok = "yes" if (r["growth"], r["jitter"], r["initial_delay_s"]) in meeting else ""
        lines.append(
            f"| {r['growth']:g} | {r['jitter']:g} | {r['initial_delay_s']:g} s | {r['polls_mean']:.2f} |"
            f" {r['delay_mean_s']:.1f} s | {r['delay_p95_s']:.1f} s | {ok} |"
        )
    return [*lines, ""]


def write(output: Path, mode: str, figures: Sequence[Figure]) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output / "results.json", output / "RESULTS.md"
    results = merge(json_path, mode, figures)
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown(results), encoding="utf-8")
    return json_path, md_path
