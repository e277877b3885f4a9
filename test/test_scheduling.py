"""CPU pinning and real-time priority helpers (the node test checks them on a running node's threads)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from flow_anomaly_ros.ros.scheduling import available_cpus, cpu_list_problem, pin_threads


def test_cpu_list_problems_are_named():
    cpus = sorted(available_cpus())
    assert cpu_list_problem([]) is None
    assert cpu_list_problem(cpus) is None
    assert "integers" in cpu_list_problem([True])
    assert "integers" in cpu_list_problem(["1"])
    assert "twice" in cpu_list_problem([cpus[0], cpus[0]])
    assert f"[4096] not available to this process (available: {cpus})" in cpu_list_problem([cpus[0], 4096])


def test_pinning_to_a_cpu_that_does_not_exist_is_refused_and_changes_nothing():
    before = os.sched_getaffinity(0)
    said = pin_threads([4096])
    assert said.startswith("refused (OSError") and "threads run on any CPU" in said, said
    assert os.sched_getaffinity(0) == before


def test_pin_threads_moves_every_thread_including_ones_started_before_and_after():
    """In a child process (pinning this one would confine the rest of the test run)."""
    cpu = max(available_cpus())
    code = textwrap.dedent(
        f"""
        import os, threading, time
        from flow_anomaly_ros.ros.scheduling import pin_threads
        stop = threading.Event()
        early = [threading.Thread(target=stop.wait) for _ in range(3)]
        for t in early:
            t.start()
        said = pin_threads([{cpu}])
        late = threading.Thread(target=stop.wait)
        late.start()
        tids = os.listdir("/proc/self/task")
        print(said, sorted({{tuple(sorted(os.sched_getaffinity(int(t)))) for t in tids}}), len(tids))
        stop.set()
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    said, rest = out.split(" (", 1)
    assert said == f"CPU {cpu}", out
    assert rest.startswith("4 threads) ") and rest.split(") ", 1)[1].strip() == f"[({cpu},)] 5", out
