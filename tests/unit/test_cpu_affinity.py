"""RAPPORT_CPU_AFFINITY: the CPU list a service process is kept on, and the bench's use of it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.decision_decide import replica_cpus
from services.common.settings import SettingsError, cpu_list, load_settings
from services.decision.settings import DecisionSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("", set()), ("0", {0}), ("2-3", {2, 3}), ("0,2-4", {0, 2, 3, 4}), (" 1 , 3 ", {1, 3}), ("1,1", {1})],
)
def test_cpu_lists_are_read_as_linux_writes_them(text: str, cpus: set[int]) -> None:
    assert cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["a", "1-", "-1", "3-1", "0;1", "1.5"])
def test_a_malformed_cpu_list_stops_the_start_naming_the_variable(text: str) -> None:
    with pytest.raises(SettingsError, match="RAPPORT_CPU_AFFINITY"):
        load_settings(DecisionSettings, {"RAPPORT_CPU_AFFINITY": text})


def test_the_bench_gives_each_replica_a_core_of_its_own_when_there_are_enough() -> None:
    assert replica_cpus(2, 2, pin=True) == ["0", "1"]
    assert replica_cpus(1, 4, pin=True) == ["0"]
    assert replica_cpus(3, 2, pin=True) == ["", "", ""]
    assert replica_cpus(2, 2, pin=False) == ["", ""]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="pinning to one CPU of one changes nothing")
def test_pinning_moves_the_threads_already_running_and_those_started_later() -> None:
    script = textwrap.dedent(
        """
        import os, threading
        from services.common.server import pin_to_cpus
        stop = threading.Event()
        earlier = threading.Thread(target=stop.wait)
        earlier.start()
        pin_to_cpus(frozenset({0}))
        later = threading.Thread(target=stop.wait)
        later.start()
        print(sorted({frozenset(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}, key=sorted))
        stop.set()
        """
    )
    shown = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'gen'}"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert shown.splitlines()[-1] == "[frozenset({0})]"
