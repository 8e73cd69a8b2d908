"""``streamlearn report RUN_DIR``: one self-contained HTML page of a run.

The page reads ``RUN_DIR/metrics.jsonl`` (written by
``streaming.monitoring``) and ``RUN_DIR/decisions.jsonl`` (the job's
decision log), and needs no network to view: the charts are
inline SVG and the page has no scripts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from online_model.arguments import positive_int
from streaming.report.page import render_page
from streaming.report.records import read_run

logger = logging.getLogger(__name__)

REPORT_FILE_NAME = "report.html"


def write_report(
    run_dir: Path, output: Path | None = None, top_roles: int = 10
) -> Path:
    """Write the report of ``run_dir`` and return its path.

    Raises FileNotFoundError when ``run_dir/metrics.jsonl`` is missing.
    """
    records = read_run(run_dir)
    path = output or Path(run_dir) / REPORT_FILE_NAME
    path.write_text(render_page(records, Path(run_dir), top_roles), encoding="utf-8")
    logger.info("wrote report %s", path)
    return path


def main(argv: Sequence[str]) -> int:
    """Run ``streamlearn report``; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="streamlearn report",
        description="Write one self-contained HTML page with the charts of a run: "
        "prequential accuracy and loss with promotions, rejections, rollbacks and "
        "drift alarms marked; holdout metrics per version; a confusion matrix; "
        "events per second and resource use; the job's other records, such as "
        "candidates kept while promotion is paused.",
        epilog="example: streamlearn report runs/r1  (writes runs/r1/report.html)",
    )
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="the run's folder"
    )
    parser.add_argument(
        "--output", type=Path, help="HTML file to write (default RUN_DIR/report.html)"
    )
    parser.add_argument(
        "--top-roles",
        type=positive_int,
        default=10,
        help="roles shown in the confusion matrix, most frequent first "
        "(default %(default)s)",
    )
    args = parser.parse_args(list(argv))
    try:
        path = write_report(args.run_dir, args.output, args.top_roles)
    except FileNotFoundError as error:
        print(
            f"streamlearn report: {error.filename} not found: pass the folder "
            "given to 'streamlearn run --run-dir' (or printed by scripts/demo)",
            file=sys.stderr,
        )
        return 1
    print(path)
    return 0
