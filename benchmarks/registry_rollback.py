"""Time ``rollback --to vN`` and ``streamlearn versions list`` on a large registry.

Builds a local registry with N versions (default 1,000) through the Python
API, with a rollback every 50 versions so that the history has both kinds
of entries. Then runs each command as a new subprocess, as an operator
does, and reports the median and p95 wall time. The time of ``rollback --to`` runs
from process start to process exit, so it bounds the time to the pointer
change from above by the interpreter's shutdown.

    .venv/bin/python benchmarks/registry_rollback.py --versions 1000 --repeats 30 \
        --output benchmarks/results/registry.md
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rollback.manifest import ManifestFields
from rollback.registry import Registry, open_registry

BIN = Path(sys.executable).parent
EXAMPLES = """\
examples, from the repository root:
  # the run recorded in benchmarks/results/registry.md
  .venv/bin/python benchmarks/registry_rollback.py --versions 1000 --repeats 30 \\
      --output benchmarks/results/registry.md
  # a quick run on a small registry that only prints its table
  .venv/bin/python benchmarks/registry_rollback.py --versions 100 --repeats 5
"""


def build_registry(path: Path, versions: int, weights_bytes: int) -> Registry:
    """Publish ``versions`` versions; roll back after every 50th."""
    registry = open_registry(path, create=True)
    fields = ManifestFields(
        fingerprint="sha256:benchmark",
        events_count=4096,
        holdout_metrics={"accuracy": 0.9, "log_loss": 0.3},
        champion_metrics={"accuracy": 0.89, "log_loss": 0.31},
        label_vocabulary=("buy", "browse", "leave"),
        code_version="benchmark",
    )
    for index in range(versions):
        files = {
            "weights.safetensors": index.to_bytes(4, "big") * (weights_bytes // 4),
            "learner.json": b'{"step": %d}' % index,
        }
        version = registry.publish(files, fields, "job", "validated")
        if version % 50 == 0:
            registry.set_serving(version - 1, "job", "drift", kind="auto_rollback")
    return registry


def time_command(
    arguments: list[str], environment: dict[str, str]
) -> tuple[float, float]:
    """Run one command; return its wall time and CPU time in milliseconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(arguments, capture_output=True, text=True, env=environment)
    wall_ms = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(arguments)} failed: {result.stderr.strip()}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall_ms, cpu_s * 1000


def percentile_95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summarize(name: str, samples: list[tuple[float, float]]) -> str:
    wall = [sample[0] for sample in samples]
    cpu = [sample[1] for sample in samples]
    return (
        f"| `{name}` | {len(samples)} | {statistics.median(wall):.0f} | "
        f"{percentile_95(wall):.0f} | {statistics.median(cpu):.0f} | "
        f"{percentile_95(cpu):.0f} |"
    )


def run(arguments: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(dir=arguments.workdir) as folder:
        path = Path(folder) / "registry"
        started = time.perf_counter()
        registry = build_registry(path, arguments.versions, arguments.weights_bytes)
        build_s = time.perf_counter() - started
        environment = {**os.environ, "STREAMLEARN_REGISTRY": str(path)}
        first, last = registry.versions()[0], registry.versions()[-1]
        targets = [first + (last - first) // 2, first + (last - first) // 3]

        repeats = range(arguments.repeats)
        baseline = [sys.executable, "-c", "pass"]
        baseline_ms = [time_command(baseline, environment) for _ in repeats]
        rollback_ms = []
        for repeat in repeats:
            target = f"v{targets[repeat % 2]}"
            command = [str(BIN / "rollback"), "--to", target, "--reason", "bench"]
            rollback_ms.append(time_command(command, environment))
        list_command = [str(BIN / "streamlearn"), "versions", "list"]
        list_ms = [time_command(list_command, environment) for _ in repeats]
        json_command = [*list_command, "--format", "json"]
        json_ms = [time_command(json_command, environment) for _ in repeats]
        history = len(registry.history())

    rows = [
        summarize("python -c pass (interpreter start, for scale)", baseline_ms),
        summarize("rollback --to vN", rollback_ms),
        summarize("streamlearn versions list", list_ms),
        summarize("streamlearn versions list --format json", json_ms),
    ]
    invocation = shlex.join(
        ["python", "benchmarks/registry_rollback.py", *sys.argv[1:]]
    )
    return "\n".join(
        [
            "# Registry command latency",
            "",
            f"Command: `{invocation}`",
            "",
            f"Registry: local folder, {arguments.versions} versions of "
            f"{arguments.weights_bytes} + ~14 bytes, {history} history entries "
            f"(built in {build_s:.1f} s). Each command runs as a new process; "
            "wall time runs from process start to exit, and CPU time is the "
            "process's user plus system time, both in ms. CPU time varies less "
            "when other jobs share the machine.",
            "",
            "| command | runs | wall median | wall p95 | CPU median | CPU p95 |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Machine: {platform.platform()}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the "
            f"end (other jobs shared the CPUs); measured "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--versions",
        type=int,
        default=1000,
        help="versions to publish to the temporary registry, with a rollback "
        "after every 50th (default: 1000)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=30,
        help="runs of each timed command (default: 30)",
    )
    parser.add_argument(
        "--weights-bytes",
        type=int,
        default=65536,
        help="size in bytes of each version's weights file, which rollback "
        "hashes for its target (default: 65536)",
    )
    parser.add_argument(
        "--workdir",
        help="folder for the temporary registry (default: the system's "
        "temporary folder)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="also write the Markdown report to this file (default: print only)",
    )
    arguments = parser.parse_args()
    report = run(arguments)
    print(report)
    if arguments.output is not None:
        arguments.output.write_text(report)


if __name__ == "__main__":
    main()
