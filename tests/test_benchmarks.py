"""The benchmark scripts run end to end, at a tiny size: they start what they need, their own
checks pass, and the last line is the ratio. (Their figures are not asserted: performance is
measured by running them, see docs/benchmarks.md, never by a timed test.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

ENV = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
RATIO = re.compile(r"ratio: \d+\.\d\d")


def bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_runtime_benchmark_runs_its_own_server_and_runtime_and_checks_what_was_stored() -> None:
    done = bench("bench_runtime.py", "--commands", "300", "--keys", "30", "--concurrency", "8", "--repeat", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert RATIO.fullmatch(lines[-1]), lines[-1]
    assert "| runtime: command → reply" in done.stdout and "| ceiling: js.publish + ack" in done.stdout
    # every 25th command is a withdrawal no account covers: 12 of 300; opens + accepted events stored
    assert "runtime: 288 accepted, 12 rejected" in done.stdout, done.stdout
    assert "events stored 318" in done.stdout and "KV sample of 30 checked" in done.stdout, done.stdout


def test_the_runtime_benchmark_refuses_bad_sizes_with_a_message() -> None:
    done = bench("bench_runtime.py", "--commands", "0")
    assert done.returncode == 2 and "--commands" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_the_engine_benchmark_checks_both_sides_against_the_model() -> None:
    done = bench("bench_engine.py", "--accounts", "20", "--ops", "300", "--repeat", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert RATIO.fullmatch(lines[-1]), lines[-1]
    assert "check: counts and 20 sampled balances agree with the reference" in done.stdout


def test_the_runtime_benchmark_has_a_scale_mode_timing_first_commands_and_deposits_per_point() -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "esfsm", "run", "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    past = "--cache-entities" in helped.stdout  # past the cache cap only where the cap can be made tiny
    done = bench(
        "bench_runtime.py",
        "--scale",
        "20,40" + (",past" if past else ""),
        "--cache-entities",
        "30",
        "--past",
        "15",
        "--commands",
        "100",
        "--concurrency",
        "4",
        "--repeat",
        "1",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for row in ("| 20 | first commands |", "| 20 | deposits (warm) |", "| 40 | first commands |"):
        assert row in done.stdout, done.stdout
    if past:
        assert "| past 30 | first, below the cap |" in done.stdout, done.stdout
        assert "| past 30 | first, past the cap |" in done.stdout, done.stdout
        assert re.search(r"^first commands past the cap / below it = \d+\.\d\d$", done.stdout, re.M), done.stdout


def test_the_subjects_benchmark_appends_with_the_runtimes_concurrency_check() -> None:
    done = bench("bench_subjects.py", "--subjects", "70", "--appends", "128", "--repeat", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(
        r"subjects +70: +[\d,]+ appends/s p50 [\d.]+ ms p99 [\d.]+ ms, server \d+ µs/append", done.stdout.strip()
    ), done.stdout
