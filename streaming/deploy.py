"""``streamlearn deploy``: the streaming job on Dataflow.

Builds the DataflowRunner options (project, region, temp location,
streaming, a worker GPU through Dataflow service options, the worker
container image built from ``docker/worker.Dockerfile``) and submits the
same pipeline the local job runs, with separate tick and model-versions
sources. The transform names are stable, so ``--update`` replaces a running
job in place. ``--dry-run`` builds and validates the job without contacting
Google Cloud. Checkpoints go to a gs:// folder, by default
TEMP_LOCATION/checkpoints/JOB_NAME, because a worker's local disk is lost
with the worker.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import TYPE_CHECKING, Any

from online_model.arguments import positive_int
from streaming.job_config import JobConfig, add_decode_limit_options, decode_limits_from

if TYPE_CHECKING:
    from streaming.pipeline import JobSettings

logger = logging.getLogger(__name__)

# A Cloud Storage path as Beam's option validator accepts it. When Beam
# rejects a path it creates a default bucket in the project instead, which is
# a call to Google Cloud even in a dry run, so paths are checked here first.
_GCS_PATH = re.compile(r"gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/.*)?")

EXAMPLE = """example:
  streamlearn deploy --project my-project --region us-central1 \\
      --temp-location gs://my-bucket/tmp --registry gs://my-bucket/models \\
      --job-name roles --worker-gpu nvidia-l4 \\
      --image us-docker.pkg.dev/my-project/streamlearn/worker:0.1.0
  # check everything without Google Cloud:
  streamlearn deploy ... --dry-run
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="streamlearn deploy",
        description="Submit the streaming job to Dataflow.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument("--region", required=True, help="Dataflow region")
    parser.add_argument("--temp-location", required=True, help="gs:// folder")
    parser.add_argument("--registry", required=True, help="gs://bucket/prefix")
    parser.add_argument(
        "--checkpoint-location",
        metavar="GS_URL",
        help="gs:// folder for the learner's checkpoints, which must outlive any "
        "worker because a worker's local disk is lost with it (default: "
        "TEMP_LOCATION/checkpoints/JOB_NAME)",
    )
    parser.add_argument("--job-name", default="streamlearn", help="Dataflow job name")
    parser.add_argument("--spec", default="job_postings", help="feature spec name")
    parser.add_argument(
        "--image", help="worker container image (built from docker/worker.Dockerfile)"
    )
    parser.add_argument(
        "--worker-gpu",
        metavar="TYPE",
        help="GPU type per worker, e.g. nvidia-l4 or nvidia-tesla-t4 (none: CPU)",
    )
    parser.add_argument(
        "--gpu-count",
        type=positive_int,
        default=1,
        help="GPUs per worker, with --worker-gpu (default: 1)",
    )
    parser.add_argument(
        "--machine-type", default=None, help="worker machine type, e.g. g2-standard-4"
    )
    parser.add_argument(
        "--max-workers",
        type=positive_int,
        default=1,
        help="most workers Dataflow may start (default: 1; the learner trains "
        "on one key, so more workers only spread decoding)",
    )
    add_decode_limit_options(parser)
    parser.add_argument(
        "--update", action="store_true", help="replace the running job of this name"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="build and validate, submit nothing"
    )
    return parser.parse_args(argv)


def dataflow_options(args: argparse.Namespace) -> dict[str, Any]:
    """Return the DataflowRunner options as keyword arguments."""
    options: dict[str, Any] = {
        "runner": "DataflowRunner",
        "streaming": True,
        "project": args.project,
        "region": args.region,
        "temp_location": args.temp_location,
        "staging_location": args.temp_location.rstrip("/") + "/staging",
        "job_name": args.job_name,
        "max_num_workers": args.max_workers,
        "experiments": ["use_runner_v2"],
        "save_main_session": False,
    }
    if args.image:
        options["sdk_container_image"] = args.image
        options["sdk_location"] = "container"
    if args.machine_type:
        options["machine_type"] = args.machine_type
    if args.worker_gpu:
        options["dataflow_service_options"] = [
            f"worker_accelerator=type:{args.worker_gpu};count:{args.gpu_count};"
            "install-nvidia-driver"
        ]
    if args.update:
        options["update"] = True
    if args.dry_run:
        options["dry_run"] = True
        options["no_auth"] = True
    return options


def main(argv: list[str]) -> int:
    """Build and submit (or with --dry-run validate) the Dataflow job."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not _GCS_PATH.fullmatch(args.temp_location):
        print(
            f"streamlearn deploy: invalid --temp-location {args.temp_location!r}: "
            "expected gs://BUCKET/PATH with a bucket name of 3-63 characters",
            file=sys.stderr,
        )
        return 2
    problem = _checkpoint_location_problem(checkpoint_location(args))
    if problem is not None:
        print(
            f"streamlearn deploy: invalid --checkpoint-location "
            f"{args.checkpoint_location!r}: {problem}",
            file=sys.stderr,
        )
        return 2
    if not _GCS_PATH.fullmatch(args.registry) and not args.dry_run:
        print(
            f"streamlearn deploy: invalid --registry {args.registry!r}: workers "
            "need a shared store, use gs://bucket/prefix",
            file=sys.stderr,
        )
        return 2

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from streaming.pipeline import build_pipeline

    options = PipelineOptions(flags=[], **dataflow_options(args))
    try:
        pipeline = beam.Pipeline(options=options)
    except ValueError as error:
        # Beam's checks of the options, such as the form of a project id,
        # come as several lines.
        print(f"streamlearn deploy: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    build_pipeline(pipeline, job_settings(args), control="separate")
    result = pipeline.run()
    if args.dry_run:
        print(f"dry run: the Dataflow job {args.job_name!r} is valid; nothing sent")
    else:
        print(f"submitted Dataflow job {args.job_name!r}: state {result.state}")
    return 0


def job_settings(args: argparse.Namespace) -> JobSettings:
    """Return the settings the Dataflow workers build the job's stages from."""
    from streaming.pipeline import JobSettings

    return JobSettings(
        job_name=args.job_name,
        project=args.project,
        spec_name=args.spec,
        registry_url=args.registry,
        run_dir="/tmp/streamlearn",
        config=JobConfig(decode_limits=decode_limits_from(args)),
        device="cuda" if args.worker_gpu else "cpu",
        metrics_file=False,
        checkpoint_location=checkpoint_location(args),
    )


def checkpoint_location(args: argparse.Namespace) -> str:
    """Return ``--checkpoint-location``, by default a folder under the temp location."""
    if args.checkpoint_location is not None:
        return str(args.checkpoint_location)
    return f"{args.temp_location.rstrip('/')}/checkpoints/{args.job_name}"


def _checkpoint_location_problem(location: str) -> str | None:
    from streaming.checkpoint import location_problem

    if not location.strip():
        return "expected gs://BUCKET/PATH"
    if not location.startswith("gs://"):
        return (
            "a Dataflow worker's local disk is lost with the worker, "
            "so use gs://BUCKET/PATH"
        )
    return location_problem(location)
