"""Benchmark helpers: same-run ratios against the reference, peak memory in a child process.

Every benchmark group holds a reference implementation and fastseg's, timed on the same input
in the same run; ``record`` keeps each one's median and the summary at the end of the session
prints fastseg's speed-up over the reference of its group (the machine is shared and noisy, so
ratios from one run are the numbers to quote).
"""
import json
import statistics
import subprocess
import sys

import pytest

_MEDIANS = {}  # group -> {name: median seconds}
_REFERENCE = {}  # group -> name of the reference implementation
_PAIRED = {}  # label -> summary line of alternating rounds (record_pairs)


def record(benchmark, group: str, name: str, reference: bool = False) -> None:
    """Call after benchmark(...) / benchmark.pedantic(...) has run."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    median = stats.stats.median
    _MEDIANS.setdefault(group, {})[name] = median
    if reference:
        _REFERENCE[group] = name
    ref = _REFERENCE.get(group)
    if ref and ref != name and ref in _MEDIANS[group]:
        benchmark.extra_info["speedup_vs_" + ref] = round(_MEDIANS[group][ref] / median, 2)


def record_pairs(benchmark, label: str, ref_name: str, name: str, ref_times, times) -> None:
    """Rounds that ran the reference and fastseg back to back: each round's ratio compares two
    calls made seconds apart, so a slow drift in the machine's load moves both; the median of
    the per-round ratios goes into extra_info and the session summary."""
    ratios = sorted(r / t for r, t in zip(ref_times, times))
    median = statistics.median(ratios)
    benchmark.extra_info.update(
        reference=ref_name, reference_ms=[round(t * 1e3, 1) for t in ref_times],
        fastseg_ms=[round(t * 1e3, 1) for t in times],
        round_ratios=[round(r, 2) for r in ratios], median_round_ratio=round(median, 2))
    _PAIRED[label] = (f"{name} vs {ref_name}: median {median:.2f}x (rounds "
                      f"{', '.join(f'{r:.2f}' for r in ratios)}; "
                      f"{statistics.median(times) * 1e3:.0f} vs "
                      f"{statistics.median(ref_times) * 1e3:.0f} ms)")


_MEMORY_CHILD = """
import json, sys
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) / 1024.0  # kB -> MiB
setup, work = sys.argv[1], sys.argv[2]
env = {}
exec(setup, env)  # imports and inputs: part of the baseline
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets the peak (VmHWM) to the current resident size
before = status('VmRSS')
exec(work, env)
print(json.dumps(status('VmHWM') - before))
"""


def peak_memory_mb(setup: str, work: str) -> float:
    """Peak resident memory (MiB) that the code ``work`` adds after ``setup`` has run, in a
    fresh interpreter (forking this one is unsafe: OpenMP's thread pool does not survive it).
    Linux only (/proc/self/clear_refs resets the peak after the setup)."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, setup, work], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    if _PAIRED:
        tr.section("fastseg vs reference (alternating rounds: per-round ratios)")
        for label, line in _PAIRED.items():
            tr.write_line(f"{label:34s} {line}")
    if not _MEDIANS:
        return
    tr.section("fastseg vs reference (same run, median times)")
    for group, medians in _MEDIANS.items():
        ref = _REFERENCE.get(group)
        for name, median in medians.items():
            ratio = ""
            if ref and name != ref and ref in medians:
                ratio = f"  {medians[ref] / median:6.2f}x faster than {ref}"
            tr.write_line(f"{group:34s} {name:28s} {median * 1e3:10.1f} ms{ratio}")


@pytest.fixture(scope="session")
def bench_photo():
    from fastseg.testing import photo

    return photo
