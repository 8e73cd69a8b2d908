"""``streamlearn predict``: score a file of events with one version, in batch.

A Beam batch pipeline reads events from Avro or CSV files and scores them in
batches with a version from the registry (the serving one by default). It
writes one JSON line per event: its id, the version and the top five roles
with their probabilities. The learner's own ``predict`` does the scoring, so
featurization is the same code as in training. The version's learner state
and the input files are checked before the pipeline starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from online_model.arguments import positive_int

logger = logging.getLogger(__name__)

EXAMPLE = """examples:
  streamlearn predict --registry runs/j1/registry --spec job_postings \\
      --output scores.jsonl events.avro
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
    parser.add_argument(
        "--spec",
        default="job_postings",
        metavar="SPEC",
        help=f"feature spec: a shipped name ({', '.join(_shipped_spec_names())}) "
        "or the path of a .toml file (default: %(default)s)",
    )
    parser.add_argument("--dataset", help="converter for CSV files, e.g. job_postings")
    parser.add_argument("--output", required=True, help="JSON-lines file to write")
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


def _shipped_spec_names() -> list[str]:
    from online_model.spec import SPEC_DIR

    return sorted(path.stem for path in SPEC_DIR.glob("*.toml"))


def _resolve_registry(option: str | None) -> str:
    """Apply the operator's commands' rules for the default registry."""
    import os
    from pathlib import Path

    from rollback.config import load_config

    return load_config(option, None, os.environ, Path.cwd()).registry


def main(argv: list[str]) -> int:
    """Run the batch prediction; return the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from rollback.errors import RegistryError
    from streaming.event_files import InputFileError, check_input_files

    try:
        args.registry = _resolve_registry(args.registry)
        version, learner = load_version(args.registry, args.version)
        check_input_files(args.files, args.dataset, learner.spec.schema)
    except (RegistryError, InputFileError, ValueError) as error:
        print(f"streamlearn predict: {error}", file=sys.stderr)
        return 2

    options = PipelineOptions(flags=[], runner=args.runner)
    with beam.Pipeline(options=options) as pipeline:
        build_predict_pipeline(
            pipeline,
            args.files,
            args.dataset,
            args.registry,
            version,
            args.output,
            args.top_k,
            args.batch_size,
        )
    print(f"wrote predictions of v{version} to {args.output}")
    return 0


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
) -> None:
    """Add the batch prediction transforms to ``pipeline``."""
    _ = (
        pipeline
        | "ListFiles" >> beam.Create(files)
        | "ReadEvents" >> beam.FlatMap(_read_file, dataset)
        | "Batch"
        >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
        | "Score" >> beam.ParDo(ScoreBatch(registry_url, version, top_k))
        | "Write" >> beam.io.WriteToText(output, shard_name_template="")
    )


def _read_file(name: str, dataset: str | None) -> Iterator[dict[str, Any]]:
    from streaming.event_files import read_sources

    yield from read_sources([name], dataset if not name.endswith(".avro") else None)


class ScoreBatch(beam.DoFn):
    """Score a batch of events with one version; emit JSON lines."""

    def __init__(self, registry_url: str, version: int, top_k: int) -> None:
        self.registry_url = registry_url
        self.version = version
        self.top_k = top_k
        self._learner: Any = None
        self._id_field = "event_id"

    def setup(self) -> None:
        from online_model.learner import OnlineLearner
        from rollback.registry import open_registry

        loaded = open_registry(self.registry_url).read(self.version)
        self._learner = OnlineLearner.from_files(loaded.files, device="cpu")
        self._id_field = self._learner.spec.event_id_field

    def process(self, batch: list[dict[str, Any]]) -> Iterator[str]:
        ranked = self._learner.predict(batch, k=self.top_k)
        for event, top in zip(batch, ranked, strict=True):
            yield json.dumps(
                {
                    "event_id": str(event.get(self._id_field)),
                    "model_version": f"v{self.version}",
                    "top": [[label, probability] for label, probability in top],
                }
            )
