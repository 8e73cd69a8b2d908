"""The run report: reading metrics.jsonl, the page, and its rendering in
headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from monitoring_fake_clock import FakeClock
from monitoring_synthetic_run import write_synthetic_run
from PIL import Image

from streaming import monitoring as mon
from streaming.decisions import DecisionLog
from streaming.report import main, write_report
from streaming.report.records import CounterSample, counter_rates, read_run

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    write_synthetic_run(run_dir)
    return run_dir


def run_chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail(
            "chromium not found: install it (apt-get install -y chromium), the "
            "report test renders the page with it"
        )
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


def test_read_run_totals(synthetic_run: Path) -> None:
    records = read_run(synthetic_run)

    assert records.job == "jobs-demo"
    assert records.counter_final_total("events/learned") == 400 * 256
    assert records.counter_final_total("registry/rollbacks") == 2
    assert records.counter_final_total("registry/rejections") == 2
    kinds = [event.kind for event in records.events]
    assert kinds.count("rollback") == 2
    assert kinds.count("drift_alarm") == 1
    assert len(records.gauge("prequential/top5_accuracy")) == 400
    assert records.skipped_lines == 0


def test_counter_rates_across_restart() -> None:
    samples = [
        CounterSample(time_s=0.0, total=0, start_time_s=0.0),
        CounterSample(time_s=10.0, total=100, start_time_s=0.0),
        CounterSample(time_s=20.0, total=300, start_time_s=0.0),
        # The process restarted: the total starts again from zero.
        CounterSample(time_s=30.0, total=50, start_time_s=25.0),
        CounterSample(time_s=40.0, total=150, start_time_s=25.0),
    ]

    rates = counter_rates(samples, max_points=4)

    # Bins of 20 s (twice the median step): 300 events in the first, and in
    # the second 100 events over 10 s, then nothing for the gap.
    assert rates == [(10.0, 15.0), (30.0, 5.0)]


def test_counter_rates_spread_long_steps() -> None:
    samples = [
        CounterSample(time_s=float(t), total=t * 3, start_time_s=0.0) for t in range(11)
    ] + [CounterSample(time_s=40.0, total=60, start_time_s=0.0)]

    rates = counter_rates(samples, max_points=20)

    # Steps of 1 s give 2 s bins. The last step (30 events over 30 s) is
    # spread over its bins at 1 event/s instead of landing in one.
    assert rates[0] == (1.0, 3.0)
    assert rates[4] == (9.0, 3.0)
    assert rates[-1] == (39.0, 1.0)
    assert len(rates) == 20


def test_truncated_line_skipped(tmp_path: Path) -> None:
    clock = FakeClock()
    sink = mon.JsonLinesSink(tmp_path, job="j", model="m", clock=clock)
    telemetry = mon.Telemetry([sink], clock=clock)
    telemetry.count(mon.EVENTS_LEARNED, 5)
    telemetry.close()
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"type":"event","time":2,"labels":{}}\n')
        file.write('{"type":"point","time":1,"na')

    records = read_run(tmp_path)

    assert records.skipped_lines == 2
    assert records.counter_final_total("events/learned") == 5


def test_page_has_every_chart(synthetic_run: Path, tmp_path: Path) -> None:
    path = write_report(synthetic_run, tmp_path / "page.html")

    html = path.read_text()
    assert html.count('<svg class="chart line-chart"') == 7
    assert html.count('<svg class="chart bar-chart"') == 1
    assert html.count('<svg class="chart heatmap"') == 1
    assert "empty-chart" not in html
    # 8 promotions, 2 rejections, 2 rollbacks, 1 drift alarm, on 2 charts.
    assert html.count('class="marker marker-promotion"') == 2 * 8
    assert html.count('class="marker marker-rejection"') == 2 * 2
    assert html.count('class="marker marker-rollback"') == 2 * 2
    assert html.count('class="marker marker-drift_alarm"') == 2 * 1
    assert html.count('class="cell"') == 10 * 11
    assert "Data Analyst" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in html


def test_report_renders_in_chromium(synthetic_run: Path, tmp_path: Path) -> None:
    path = write_report(synthetic_run, tmp_path / "report.html")
    url = path.resolve().as_uri()
    screenshot = tmp_path / "report.png"

    dom = run_chromium("--dump-dom", url).stdout
    run_chromium(f"--screenshot={screenshot}", "--window-size=940,2400", url)

    assert len(re.findall(r"<svg class=\"chart ", dom)) == 9
    assert len(re.findall(r"<polyline class=\"series\"", dom)) >= 10
    assert len(re.findall(r"<rect class=\"bar\"", dom)) >= 15
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (940, 2400)
    colors = image.getcolors(maxcolors=940 * 2400)
    assert colors is not None
    white = sum(count for count, color in colors if color == (255, 255, 255))
    assert white / (940 * 2400) < 0.95
    assert len(colors) > 100


def test_cli_writes_report(
    synthetic_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.html"

    assert main([str(synthetic_run), "--output", str(output), "--top-roles", "4"]) == 0

    assert capsys.readouterr().out.strip() == str(output)
    assert output.read_text().count('class="cell"') == 4 * 5


def test_cli_top_roles_at_least_one(
    synthetic_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([str(synthetic_run), "--top-roles", "0"])

    assert exit_.value.code == 2
    assert "expected 1 or more" in capsys.readouterr().err


def test_cli_missing_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path)]) == 1

    error = capsys.readouterr().err
    assert "metrics.jsonl not found" in error


def test_streamlearn_dispatches_report(
    synthetic_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streaming.cli import main as streamlearn

    output = tmp_path / "via-cli.html"

    assert streamlearn(["report", str(synthetic_run), "--output", str(output)]) == 0

    assert capsys.readouterr().out.strip() == str(output)
    assert output.stat().st_size > 10_000


def test_page_lists_other_job_records(tmp_path: Path) -> None:
    clock = FakeClock()
    sink = mon.JsonLinesSink(tmp_path, job="j", model="m", clock=clock)
    mon.Telemetry([sink], clock=clock).close()
    log = DecisionLog(tmp_path / "decisions.jsonl")
    log({"time": 1.0, "kind": "promotion_paused", "candidate": "c7", "reason": "x"})
    log({"time": 2.0, "kind": "alert", "reason": "drift without a better earlier"})
    log({"time": 3.0, "kind": "adopted", "version": 1, "previous": 5, "reason": "r"})
    log({"time": 4.0, "kind": "adopted", "version": 6, "previous": 1, "reason": "up"})
    log({"time": 5.0, "kind": "promotion", "candidate": "c8", "version": 6})
    log({"time": 6.0, "kind": "checkpoint", "number": 2})
    log({"time": 7.0, "kind": "adopt_failed", "version": 4})

    html = write_report(tmp_path, tmp_path / "page.html").read_text()

    section = html[html.index("<h2>Other job records</h2>") :]
    assert "kept c7 in training: promotion is paused" in section
    assert "alert: drift without a better earlier" in section
    assert "adopted v6 (was v1): up" in section
    # An adopted move back is a rollback event, and the promotion an event too.
    assert "adopted v1" not in section
    assert "published c8" not in section
    assert "checkpoint" not in section
    # A record without a field its kind needs is shown by its fields.
    assert "adopt_failed: time=7.0, version=4" in section
    assert section.count("<tr><td") == 4


def test_page_survives_odd_decision_lines(tmp_path: Path) -> None:
    clock = FakeClock()
    sink = mon.JsonLinesSink(tmp_path, job="j", model="m", clock=clock)
    mon.Telemetry([sink], clock=clock).close()
    log = DecisionLog(tmp_path / "decisions.jsonl")
    log({"kind": ["alert"]})
    log({"time": 1e300, "kind": "alert", "reason": "<b>x</b>" * 1000})

    html = write_report(tmp_path, tmp_path / "page.html").read_text()

    section = html[html.index("<h2>Other job records</h2>") :]
    assert section.count("<tr><td") == 1
    assert "&lt;b&gt;x&lt;/b&gt;" in section
    assert "<b>x</b>" not in section
    assert "[cut]" in section
