"""``streamlearn predict``: score a file of events with one version, in batch.

A Beam batch pipeline reads events from Avro or CSV files and scores them in
batches with a version from the registry (the serving one by default). It
writes one JSON line per event: its id, the version and the top five roles
with their probabilities, or, for an event the model cannot score, the
reason in ``rejected``. The learner's own ``predict`` does the scoring, so
featurization is the same code as in training. The version's learner state,
the input files and the output path are checked before the pipeline starts,
and the command ends with counts of the events read, scored and rejected
and of the CSV rows skipped, by reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from online_model.arguments import positive_int

logger = logging.getLogger(__name__)

EXAMPLE = """examples:
  streamlearn predict --registry runs/j1/registry --output scores.jsonl events.avro
  streamlearn predict --registry runs/j1/registry --version v3 \\
      --dataset job_postings --output scores.jsonl data/data_jobs_2023_salaried.csv.gz
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="streamlearn predict",
        description="Score events from Avro or CSV files with one model version "
        "(a Beam batch pipeline); write one JSON line per event.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files", nargs="+", help=".avro, or .csv/.csv.gz with --dataset"
    )
    parser.add_argument(
        "--registry",
        help="registry path or gs:// URL (default: $STREAMLEARN_REGISTRY, else "
        "the [registry] url of streamlearn.toml, else ./runs/registry)",
    )
    parser.add_argument("--version", help="version to score with (default: serving)")
    from online_model.datasets import DATASETS

    parser.add_argument(
        "--dataset", choices=sorted(DATASETS), help="converter for the CSV files"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="JSON-lines file to write, replaced if it exists. The feature "
        "spec comes with the version.",
    )
    parser.add_argument(
        "--top-k",
        type=positive_int,
        default=5,
        help="roles written per event, most probable first (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=512,
        help="events scored per call of the learner (default: %(default)s)",
    )
    parser.add_argument(
        "--runner", default="DirectRunner", help="Beam runner (default: %(default)s)"
    )
    return parser.parse_args(argv)


def _resolve_registry(option: str | None) -> str:
    """Apply the operator's commands' rules for the default registry."""
    import os
    from pathlib import Path

    from rollback.config import load_config

    return load_config(option, None, os.environ, Path.cwd()).registry


# Beam metric namespace of the counts the command prints at the end.
COUNTS = "streamlearn_predict"


def main(argv: list[str]) -> int:
    """Run the batch prediction; return the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Beam logs a failing step's traceback at ERROR level. The command prints
    # the cause in one line instead, so only Beam's critical messages show.
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    from online_model.event_files import InputFileError, check_input_files
    from rollback.errors import RegistryError

    try:
        check_output(args.output, args.files)
        args.registry = _resolve_registry(args.registry)
        version, learner = load_version(args.registry, args.version)
        check_input_files(args.files, args.dataset, learner.spec.schema)
        _check_dataset(args.dataset, args.files, learner.spec.schema)
    except (RegistryError, InputFileError, ValueError) as error:
        print(f"streamlearn predict: {error}", file=sys.stderr)
        return 2

    options = PipelineOptions(flags=[], runner=args.runner)
    try:
        pipeline = beam.Pipeline(options=options)
    except ValueError as error:  # an unknown runner name
        print(f"streamlearn predict: invalid --runner: {error}", file=sys.stderr)
        return 2
    build_predict_pipeline(
        pipeline,
        args.files,
        args.dataset,
        args.registry,
        version,
        args.output,
        args.top_k,
        args.batch_size,
        learner.spec.schema,
    )
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except (KeyboardInterrupt, Exception) as error:
        # Beam wraps the cause (a bad input row, a full disk, Ctrl-C in a
        # worker thread) in its own errors.
        _remove_partial_output(args.output)
        cause = _cause(error)
        if isinstance(error, KeyboardInterrupt) or "KeyboardInterrupt" in cause:
            print(
                f"streamlearn predict: interrupted; {args.output} was not written",
                file=sys.stderr,
            )
            return 130
        logger.debug("the prediction pipeline failed", exc_info=True)
        print(f"streamlearn predict: failed: {cause}", file=sys.stderr)
        return 1
    counts = _counts(result)
    print(describe_counts(counts, version, args.output))
    return 0


def check_output(output: str, files: list[str]) -> None:
    """Raise ValueError for an output path the pipeline must not write.

    Beam's text sink treats the path as a pattern and deletes what it
    matches, so a folder or glob characters would delete files.
    """
    if not output:
        raise ValueError("invalid --output '': pass a file name")
    if any(character in output for character in "*?[]"):
        raise ValueError(
            f"invalid --output {output!r}: glob characters (* ? [ ]) are not "
            "allowed in the file name"
        )
    if "://" in output:
        return
    path = Path(output)
    if path.is_dir():
        raise ValueError(
            f"invalid --output {output!r}: it is a folder, so name a file in it"
        )
    if (
        output.endswith("/")
        or path.is_symlink()
        or (path.exists() and not path.is_file())
    ):
        # Beam's text sink would replace a link, pipe or device with a file.
        raise ValueError(
            f"invalid --output {output!r}: it is not a regular file, so name a file"
        )
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(
            f"invalid --output {output!r}: folder {str(folder)!r} not found"
        )
    if not os.access(folder, os.W_OK):
        raise ValueError(
            f"invalid --output {output!r}: folder {str(folder)!r} is not writable"
        )
    target = path.resolve()
    for name in files:
        if Path(name).resolve() == target:
            raise ValueError(
                f"invalid --output {output!r}: it is also an input file; "
                "write the predictions elsewhere"
            )


def _check_dataset(
    dataset: str | None, files: list[str], schema: Mapping[str, Any]
) -> None:
    """Raise ValueError when CSV files would convert to events of another schema."""
    if dataset is None or all(name.endswith(".avro") for name in files):
        return
    from online_model.spec import load_schema

    converted = load_schema(dataset)["name"]
    if converted != schema.get("name"):
        raise ValueError(
            f"--dataset {dataset} converts CSV rows to {converted!r} events, but "
            f"the version reads {schema.get('name')!r} events; pass the dataset "
            "of the version's spec"
        )


def describe_counts(counts: dict[str, int], version: int, output: str) -> str:
    """Return the closing lines: predictions written, events rejected, rows skipped."""
    rejected = {
        key.removeprefix("rejected."): value
        for key, value in counts.items()
        if key.startswith("rejected.")
    }
    skipped = {
        key.removeprefix("skipped_rows."): value
        for key, value in counts.items()
        if key.startswith("skipped_rows.")
    }
    lines = [
        f"wrote predictions of v{version} to {output}: "
        f"{counts.get('events_read', 0)} events read, "
        f"{counts.get('scored', 0)} scored, "
        f"{sum(rejected.values())} rejected"
    ]
    if rejected:
        lines.append(f"  rejected events (their lines say why): {_by_reason(rejected)}")
    if skipped:
        lines.append(
            f"  CSV rows skipped before scoring, by reason: {_by_reason(skipped)}"
        )
    return "\n".join(lines)


def _by_reason(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items()))


def _counts(result: Any) -> dict[str, int]:
    query = result.metrics().query(MetricsFilter().with_namespace(COUNTS))
    counts: Counter[str] = Counter()
    for counter in query["counters"]:
        counts[counter.key.metric.name] += counter.committed or 0
    return dict(counts)


def _cause(error: BaseException) -> str:
    """Return the last line of the innermost error, without Beam's step names."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1].split(" [while running")[0].strip()
    return last or type(error).__name__


def _remove_partial_output(output: str) -> None:
    """Remove the temporary folders Beam's text sink leaves when a run stops."""
    if "://" in output:
        return
    path = Path(output)
    for leftover in path.parent.glob(f"beam-temp-{path.name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def load_version(registry_url: str, requested: str | None) -> tuple[int, Any]:
    """Load a version's learner; return the version number and the learner.

    Raises RegistryError when the version cannot be read, and ValueError when
    its files are not learner state.

    ``requested`` is a version name, or None for the serving version.
    """
    from online_model.learner import LearnerStateError, OnlineLearner
    from rollback.errors import RegistryError
    from rollback.names import parse_version
    from rollback.registry import open_registry

    registry = open_registry(registry_url)
    version = registry.serving() if requested is None else parse_version(requested)
    if version is None:
        raise RegistryError(f"no version serves in {registry_url}; pass --version")
    files = registry.read(version).files
    try:
        learner = OnlineLearner.from_files(files, device="cpu")
    except LearnerStateError as error:
        raise ValueError(
            f"version v{version} in {registry_url} is not a readable learner state "
            f"({', '.join(sorted(files))}): {error}"
        ) from error
    return version, learner


def build_predict_pipeline(
    pipeline: beam.Pipeline,
    files: list[str],
    dataset: str | None,
    registry_url: str,
    version: int,
    output: str,
    top_k: int,
    batch_size: int,
    schema: Mapping[str, Any] | None = None,
) -> None:
    """Add the batch prediction transforms to ``pipeline``.

    ``schema`` is the version's event schema, whose defaults fill fields that
    an Avro file's writer schema lacks.
    """
    _ = (
        pipeline
        | "ListFiles" >> beam.Create(files)
        | "ReadEvents" >> beam.FlatMap(_read_file, dataset, schema)
        | "Batch"
        >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
        | "Score" >> beam.ParDo(ScoreBatch(registry_url, version, top_k))
        | "Write" >> beam.io.WriteToText(output, shard_name_template="")
    )


def _read_file(
    name: str, dataset: str | None, schema: Mapping[str, Any] | None
) -> Iterator[dict[str, Any]]:
    from online_model.datasets import ConversionReport
    from online_model.event_files import read_sources

    reports: list[ConversionReport] = []
    read = Metrics.counter(COUNTS, "events_read")
    converter = dataset if not name.endswith(".avro") else None
    events = read_sources([name], converter, reports, True, schema)
    for event in events:
        read.inc()
        yield event
    for report in reports:
        for reason, count in report.skipped.items():
            Metrics.counter(COUNTS, f"skipped_rows.{reason}").inc(count)


class ScoreBatch(beam.DoFn):
    """Score a batch of events with one version; emit JSON lines."""

    def __init__(self, registry_url: str, version: int, top_k: int) -> None:
        self.registry_url = registry_url
        self.version = version
        self.top_k = top_k
        self._learner: Any = None
        self._spec: Any = None
        self._id_field = "event_id"

    def setup(self) -> None:
        from online_model.learner import OnlineLearner
        from rollback.registry import open_registry

        loaded = open_registry(self.registry_url).read(self.version)
        self._learner = OnlineLearner.from_files(loaded.files, device="cpu")
        self._spec = self._learner.spec
        self._id_field = self._spec.event_id_field

    def process(self, batch: list[dict[str, Any]]) -> Iterator[str]:
        from online_model.events import check_event, rejecting

        ranked = self._learner.predict(batch, k=self.top_k)
        for event, top in zip(batch, ranked, strict=True):
            line: dict[str, Any] = {
                "event_id": str(event.get(self._id_field)),
                "model_version": f"v{self.version}",
                "top": [[label, probability] for label, probability in top],
            }
            problem = None if top else rejecting(check_event(event, self._spec))
            if problem is None:
                Metrics.counter(COUNTS, "scored").inc()
            else:
                line["rejected"] = f"{problem.reason}: {problem.detail}"
                Metrics.counter(COUNTS, f"rejected.{problem.reason}").inc()
            yield json.dumps(line)
