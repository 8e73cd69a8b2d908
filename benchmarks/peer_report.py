"""Tables of the side-by-side benchmark: Markdown, CSV and JSON.

The Markdown page has one section per stream with a whole-stream table and a
common-prefix table, then checks streamlearn's targets against the peers.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

OURS = "streamlearn"
COMMAND_LINE_PEER = "vw-cli"
# A top-5 hit rate is 1 by construction on a stream with five labels or fewer,
# so the tables leave it out there.
TOP_K = 5
# Throughput targets against Vowpal Wabbit's command-line learner.
SPEEDUP_WITH_FEATURIZATION = 2.0
SPEEDUP_MODEL_STEP = 4.0

COLUMNS = (
    "learner",
    "events",
    "top-1",
    "top-5",
    "log loss",
    "ex/s",
    "ex/s model step",
    "ex/CPU s",
    "peak RSS MiB",
    "learner MiB",
    "RSS growth MiB",
)

EXPLANATION = """\
Every learner reads the same decoded events (`online_model.datasets`), in
the same order, and scores each event before it learns from it
(test-then-train). Each (stream, learner) pair runs in its own process, one
after another.

- top-1, top-5: share of events whose true label is the first, or among the
  first five, of the learner's ranked labels. log loss: mean of -ln p(true
  label), p clipped at 1e-15, so a label the learner has never seen costs
  about 34.5. Metrics come from `online_model.evaluation`.
- ex/s: events per second from decoded event dicts to scored-and-learned,
  featurization for that learner included (River dicts, VW text lines,
  streamlearn's own encoder). ex/s model step: the same without the
  featurization from event dicts. For VW that step still parses VW's text
  format, which is part of how VW learns. For vw-cli it is the C++ driver's
  single pass over the file (`--oaa K --probabilities -p`), run in-process
  through the binding as `python -m vowpalwabbit -d FILE` does, because the
  pip package (9.11.9) ships no `vw` executable and Debian 12's apt
  repositories have no Vowpal Wabbit package. For
  streamlearn it is `learn` minus the time spent in its featurizer's
  `encode`, so event validation, token hashing and the scoring pass count
  as model step. ex/CPU s: events per CPU second of the process (all its
  threads), featurization included, which depends less on what else runs
  on the machine than the wall-clock rates do.
- peak RSS MiB: peak resident memory of the learner's process (VmHWM, reset
  after the events were loaded and the learner's library imported). learner
  MiB: peak minus the resident memory at that reset. RSS growth MiB: resident
  memory at the end minus after the first quarter of the run (not measured
  for vw-cli, whose model runs after its input file is written).
- VW needs the number of classes up front (`--oaa K`): K is the number of
  labels in the whole stream, counted before the run, which a live stream
  could not do. River's learners and streamlearn's grow their label sets.
- `-q` rows add VW's quadratic interactions between every pair of feature
  namespaces (categorical, multi-valued, numeric), each with itself
  included (`-q ::`).
- The peers get the spec's fields and numeric transforms (log1p), but not
  streamlearn's numeric buckets or feature crosses. River's linear models
  standardize the numeric fields with running statistics. Multinomial
  naive Bayes gets the indicator features only, and Gaussian naive Bayes is
  used on all-numeric streams. Trees and forests use River's defaults.
"""


def _number(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table_row(result: dict[str, Any], scope: str) -> dict[str, str]:
    """Return one table row for a learner's ``full`` or ``prefix`` scope."""
    part = result[scope]
    metrics = part["metrics"]
    top_k = (
        _number(metrics["top_k_hit_rate"], 3) if result["labels_total"] > TOP_K else "-"
    )
    learner_mib = part["peak_rss_mib"] - result["baseline_rss_mib"]
    growth = result["rss_growth_mib"] if scope == "full" else None
    return {
        "learner": result["peer"],
        "events": f"{part['events']:,}",
        "top-1": _number(metrics["top1_accuracy"], 3),
        "top-5": top_k,
        "log loss": _number(metrics["log_loss"], 3),
        "ex/s": _number(part["examples_per_s"], 0),
        "ex/s model step": _number(part["model_examples_per_s"], 0),
        "ex/CPU s": _number(part.get("examples_per_cpu_s"), 0),
        "peak RSS MiB": _number(part["peak_rss_mib"], 0),
        "learner MiB": _number(learner_mib, 0),
        "RSS growth MiB": _number(growth, 1),
    }


def markdown_table(rows: list[dict[str, str]]) -> list[str]:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c == "learner" else "---:" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
    return lines


def stream_section(stream: str, results: list[dict[str, Any]]) -> list[str]:
    """Return the Markdown lines of one stream's two tables."""
    done = [r for r in results if "error" not in r]
    failed = [r["peer"] for r in results if "error" in r]
    if not done:
        return [f"## {stream}", "", f"Every learner failed: {', '.join(failed)}.", ""]

    first = done[0]
    prefix = first["prefix"]["events"]
    lines = [
        f"## {stream}",
        "",
        f"{first['events_total']:,} events, {first['labels_total']} labels.",
        "",
        "Whole stream:",
        "",
    ]
    whole = [r for r in done if r["full"] is not None]
    lines += markdown_table([table_row(r, "full") for r in whole])
    stopped = [r for r in done if r["full"] is None]
    if stopped:
        names = ", ".join(
            f"{r['peer']} (after {r['events_run']:,} events)" for r in stopped
        )
        lines += [
            "",
            "Stopped because the whole stream would have taken longer than the "
            f"time limit, so reported on the prefix only: {names}.",
        ]

    lines += ["", f"First {prefix:,} events, every learner:", ""]
    lines += markdown_table([table_row(r, "prefix") for r in done])
    lines += source_lines(done)
    rejecting = [r for r in done if r.get("rejected_events")]
    for result in rejecting:
        lines += [
            "",
            f"{result['peer']} rejected {result['rejected_events']:,} events as "
            "invalid. They count as misses with probability 0.",
        ]
    if failed:
        lines += ["", f"Failed (see the run's log): {', '.join(failed)}."]
    return [*lines, ""]


def source_lines(results: list[dict[str, Any]]) -> list[str]:
    """Say which code streamlearn's rows ran, as recorded by the worker."""
    ours = next((r for r in results if r["peer"] == OURS), None)
    if ours is None:
        return []
    source = ours.get("source")
    if not source:
        return ["", "streamlearn's code version was not recorded for this run."]
    uncommitted = source["online_model_uncommitted"]
    state = (
        f"with uncommitted changes to {', '.join(uncommitted)}"
        if uncommitted
        else "with no uncommitted changes in online_model"
    )
    return ["", f"streamlearn ran the code of commit {source['commit']}, {state}."]


def _best_peer(
    results: list[dict[str, Any]], scope: str, metric: str, higher_is_better: bool
) -> tuple[str, float] | None:
    candidates = [
        (r["peer"], r[scope]["metrics"][metric])
        for r in results
        if r["peer"] != OURS and r.get(scope) is not None
    ]
    candidates = [(name, value) for name, value in candidates if not math.isnan(value)]
    if not candidates:
        return None
    sign = 1.0 if higher_is_better else -1.0
    return max(candidates, key=lambda pair: sign * pair[1])


def quality_checks(results: list[dict[str, Any]], scope: str) -> list[str]:
    """Compare streamlearn with the best peer on each quality metric."""
    ours = next((r for r in results if r["peer"] == OURS and r.get(scope)), None)
    if ours is None:
        return []
    metrics = [("top1_accuracy", "top-1", True), ("log_loss", "log loss", False)]
    if ours["labels_total"] > TOP_K:
        metrics.insert(1, ("top_k_hit_rate", "top-5", True))
    lines = []
    for key, label, higher_is_better in metrics:
        best = _best_peer(results, scope, key, higher_is_better)
        if best is None:
            continue
        value = ours[scope]["metrics"][key]
        met = value >= best[1] if higher_is_better else value <= best[1]
        lines.append(
            f"{label} {value:.3f} vs best peer {best[0]} {best[1]:.3f}: "
            f"{'met' if met else 'NOT met'} ({value - best[1]:+.3f})"
        )
    return lines


def speed_checks(results: list[dict[str, Any]]) -> list[str]:
    """Compare streamlearn's throughput with Vowpal Wabbit's command line."""
    ours = next((r for r in results if r["peer"] == OURS and r.get("full")), None)
    peer = next(
        (r for r in results if r["peer"] == COMMAND_LINE_PEER and r.get("full")), None
    )
    if ours is None or peer is None:
        return []
    lines = []
    for key, label, target in (
        ("examples_per_s", "with featurization", SPEEDUP_WITH_FEATURIZATION),
        ("model_examples_per_s", "model step", SPEEDUP_MODEL_STEP),
    ):
        if not ours["full"][key] or not peer["full"][key]:
            continue
        ratio = ours["full"][key] / peer["full"][key]
        lines.append(
            f"ex/s {label} {ours['full'][key]:,.0f} vs vw-cli "
            f"{peer['full'][key]:,.0f}: {ratio:.2f}x, target {target:g}x: "
            f"{'met' if ratio >= target else 'NOT met'}"
        )
    growth = ours["rss_growth_mib"]
    if growth is not None:
        lines.append(
            f"RSS growth after the first quarter of the stream: {growth:+.1f} MiB; "
            f"RSS above the start, by events: {rss_profile(ours['rss_samples_mib'])}"
        )
    return lines


def rss_profile(samples: list[list[float]], points: int = 5) -> str:
    """Return a few evenly spaced (events, MiB) samples as text."""
    if not samples:
        return "-"
    step = max(1, (len(samples) - 1) // (points - 1))
    chosen = samples[::step]
    if chosen[-1] != samples[-1]:
        chosen.append(samples[-1])
    return ", ".join(f"{int(events):,}: {mib:.0f}" for events, mib in chosen)


def targets_section(by_stream: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "## streamlearn's targets",
        "",
        "Quality against the best peer on each metric (the most-frequent and "
        "no-change baselines count as peers), whole stream and common prefix; "
        "throughput against "
        "vw-cli over the whole stream.",
        "",
    ]
    for stream, results in by_stream.items():
        done = [r for r in results if "error" not in r]
        checks = [
            *(f"whole stream, {c}" for c in quality_checks(done, "full")),
            *(f"prefix, {c}" for c in quality_checks(done, "prefix")),
            *speed_checks(done),
        ]
        if not checks:
            lines += [f"- {stream}: streamlearn did not run", ""]
            continue
        lines += [f"- {stream}:", *(f"  - {check}" for check in checks)]
    return [*lines, ""]


def write_reports(
    results: list[dict[str, Any]], settings: dict[str, Any], out: Path
) -> dict[str, Path]:
    """Write peers.md, peers.csv and peers.json to ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_stream.setdefault(result["stream"], []).append(result)

    machine = settings["machine"]
    loads = [load for result in results for load in result.get("load_average_1m", [])]
    load_text = (
        f" The 1-minute load average during the runs was {min(loads):.1f} to "
        f"{max(loads):.1f}, so other processes shared the CPUs."
        if loads
        else ""
    )
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    lines = [
        "# streamlearn side by side with River and Vowpal Wabbit",
        "",
        "Produced by:",
        "",
        "```",
        settings["command"],
        "```",
        "",
        f"Started {settings['started_utc']} UTC, {settings['wall_s']:.0f} s in all, "
        f"on {machine['cpu_count']} CPUs ({machine['platform']}), Python "
        f"{machine['python']}, {packages}. A learner whose rate over the "
        f"{settings['prefix']:,}-event prefix projects a whole stream past "
        f"{settings['time_limit_s']:g} s stops at the prefix, except "
        f"{', '.join(settings['whole_stream_peers']) or 'none'}. streamlearn's "
        "micro-batch is "
        f"{settings['micro_batch']} events.{load_text}",
        "",
        EXPLANATION,
    ]
    for merge in settings.get("merged", []):
        lines += [
            f"Then these results were replaced by a later run "
            f"(finished {merge['finished_utc']} UTC): {', '.join(merge['pairs'])}, "
            "by:",
            "",
            "```",
            merge["command"],
            "```",
            "",
        ]
    if settings.get("note"):
        lines += [settings["note"], ""]
    for stream, results_of_stream in by_stream.items():
        lines += stream_section(stream, results_of_stream)
    lines += targets_section(by_stream)

    paths = {
        "markdown": out / "peers.md",
        "csv": out / "peers.csv",
        "json": out / "peers.json",
    }
    paths["markdown"].write_text("\n".join(lines), encoding="utf-8")
    _write_csv(results, paths["csv"])
    paths["json"].write_text(
        json.dumps({"settings": settings, "results": results}, indent=1),
        encoding="utf-8",
    )
    return paths


def _write_csv(results: list[dict[str, Any]], path: Path) -> None:
    fields = (
        "stream",
        "learner",
        "scope",
        "events",
        "top1_accuracy",
        "top_k_hit_rate",
        "log_loss",
        "macro_f1",
        "examples_per_s",
        "model_examples_per_s",
        "examples_per_cpu_s",
        "peak_rss_mib",
        "learner_mib",
        "rss_growth_mib",
    )
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(fields)
        for result in results:
            for scope in ("full", "prefix"):
                part = result.get(scope)
                if not part:
                    continue
                metrics = part["metrics"]
                writer.writerow(
                    (
                        result["stream"],
                        result["peer"],
                        scope,
                        part["events"],
                        metrics["top1_accuracy"],
                        metrics["top_k_hit_rate"],
                        metrics["log_loss"],
                        metrics["macro_f1"],
                        part["examples_per_s"],
                        part["model_examples_per_s"],
                        part.get("examples_per_cpu_s"),
                        part["peak_rss_mib"],
                        round(part["peak_rss_mib"] - result["baseline_rss_mib"], 1),
                        result["rss_growth_mib"] if scope == "full" else "",
                    )
                )
