"""The benchmarks' reading of ghz reports (bench/support.py): call start times to the nanosecond,
and a run's warm-up seconds left out of its rate and percentiles."""

from __future__ import annotations

from typing import Any

from bench.support import _after_warm_up, _ns_since_epoch


def test_call_start_times_keep_their_nanoseconds_and_offsets() -> None:
    assert _ns_since_epoch("2026-11-24T03:16:50.123456789Z") == 1_795_490_210_123_456_789
    assert _ns_since_epoch("2026-11-24T03:16:50Z") == 1_795_490_210_000_000_000
    assert _ns_since_epoch("2026-11-24T04:16:50.5+01:00") == 1_795_490_210_500_000_000


def _call(second: float, latency_ms: float, status: str = "OK", error: str = "") -> dict[str, Any]:
    whole, fraction = divmod(second, 1)
    stamp = f"2026-11-24T03:16:{10 + int(whole):02d}.{round(fraction * 1e9):09d}Z"
    return {"timestamp": stamp, "latency": int(latency_ms * 1e6), "status": status, "error": error}


def test_the_warm_up_seconds_of_each_run_are_left_out() -> None:
    # Two replicas' runs, 10 calls per second for 5 s; the first second of each is slow.
    runs = [
        {"details": [_call(second / 10 + offset, 40.0 if second < 10 else 2.0 + second % 3) for second in range(50)]}
        for offset in (0.0, 0.05)
    ]

    report = _after_warm_up(runs, warm_up_s=1.0)

    assert report.count == 80
    assert max(report.latencies_ns) == 4_000_000  # none of the warm-up's 40 ms calls
    assert 19.0 <= report.rps <= 21.0  # 40 calls in 3.9 s, per run


def test_failed_calls_after_the_warm_up_are_counted_as_errors() -> None:
    run = {
        "details": [
            _call(0.0, 1.0),
            _call(1.5, 1.0),
            _call(2.0, 0.0, status="Unavailable", error="transport is closing"),
        ]
    }

    report = _after_warm_up([run], warm_up_s=1.0)

    assert report.count == 2
    assert report.errors == {"transport is closing": 1}
    assert report.latencies_ns == [1_000_000]
