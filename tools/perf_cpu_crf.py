"""CPU time of each native loop in a steady run of CPU dense-CRF calls, from perf's clock samples.

    python tools/perf_cpu_crf.py [--labels 21] [--seconds 8] [--top 12] [--threads N]

Runs ``fastseg.dense_crf`` on the astronaut (512x512, DeepLab-v2's parameters) over and over in
a child process and samples it with ``perf record -e cpu-clock`` (a software clock: it works in
VMs without hardware counters; needs ``perf`` and a perf_event_paranoid that lets a user
profile its own processes). Prints, per function, its share of the samples, its CPU
milliseconds per call (all threads) and its time relative to the bilateral blur chains.

The last column is what makes two builds comparable on a noisy shared machine: the host's
speed moves every loop's time, but a change to one loop moves its time relative to a loop
the change leaves alone. To compare builds, run this with ``PYTHONPATH`` naming each build's
tree in turn, several times (bench/README.md, "The ninth session"). ``perf annotate -i
perf.data -s SYMBOL --stdio`` on the kept ``--data`` file shows which instruction a loop waits
at.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import os, sys, torch, fastseg
from fastseg.testing import image_probs, photo
labels, count_path = int(sys.argv[1]), sys.argv[2]
if len(sys.argv) > 3:
    torch.set_num_threads(int(sys.argv[3]))
image = photo("astronaut")
probs = torch.from_numpy(image_probs(image, labels, seed=labels))
im = torch.from_numpy(image)
for _ in range(3):
    fastseg.dense_crf(probs, im)
calls = 0
while True:
    with open(count_path + ".tmp", "w") as f:
        f.write(str(calls))
    os.replace(count_path + ".tmp", count_path)
    fastseg.dense_crf(probs, im)
    calls += 1
"""

REFERENCE = "::blur_chains"  # the loop other loops' times are given against


def read_count(path):
    with open(path) as f:
        return int(f.read())


GENERIC_NAMES = {"at", "internal", "invoke_parallel", "parallel_for", "parallel_for_dynamic",
                 "fastseg", "lattice", "cpu", "_GLOBAL__N_1", "for_chunks"}


def mangled_identifiers(symbol):
    """The identifiers of an Itanium-mangled name, in order (each is <length><chars>)."""
    names, i = [], 0
    while i < len(symbol):
        m = re.match(r"\d+", symbol[i:])
        if not m:
            i += 1
            continue
        length, start = int(m.group()), i + len(m.group())
        if symbol[i - 1] in "ST" and symbol[start:start + 1] == "_":  # S3_, T0_: back-references
            i = start + 1
            continue
        word = symbol[start:start + length]
        if length and re.fullmatch(r"[A-Za-z_]\w*", word):
            names.append(word)
            i = start + length
        else:
            i = start
    return names


def short_name(symbol):
    """A readable name: the function itself, or for a parallel loop's body the fastseg
    function it belongs to (perf prints those as pages of template arguments)."""
    if symbol.startswith("_Z"):  # left mangled by perf (an OpenMP outlined body's suffix)
        try:
            symbol = subprocess.run(["c++filt", re.sub(r"\._omp_fn\.\d+$", "", symbol)],
                                    capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    if symbol.startswith("_Z"):  # still mangled: name it by the fastseg functions it mentions
        names = mangled_identifiers(symbol)
        own = [n for n in names if n not in GENERIC_NAMES]
        return (own[0] if own else symbol[:60]) + " (parallel loop)"
    name = symbol.replace("(anonymous namespace)::", "")
    if "parallel_for" in name or "invoke_parallel" in name:
        owners = [f for f in re.findall(r"fastseg::[\w:]*\w", name)
                  if not f.endswith("parallel_for_dynamic")]
        if owners:
            return owners[0] + " (parallel loop)"
    name = re.sub(r"\(.*", "", name)  # argument lists
    return name[-70:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", default=None, help="keep perf's data file here")
    parser.add_argument("--frequency", type=int, default=2000, help="samples per second")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        sys.exit("perf_cpu_crf: needs Linux perf (`perf` on PATH)")

    work = tempfile.mkdtemp(prefix="perf_cpu_crf_")
    count_path = os.path.join(work, "calls")
    data = args.data or os.path.join(work, "perf.data")
    cmd = [sys.executable, "-c", CHILD, str(args.labels), count_path]
    if args.threads is not None:
        cmd.append(str(args.threads))
    child = subprocess.Popen(cmd)
    try:
        while not os.path.exists(count_path):
            if child.poll() is not None:
                sys.exit(f"the dense_crf loop exited with status {child.returncode}")
            time.sleep(0.1)
        before = read_count(count_path)
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(args.frequency),
                        "-p", str(child.pid), "-o", data, "--", "sleep", str(args.seconds)],
                       check=True, stdout=subprocess.DEVNULL)
        calls = read_count(count_path) - before
    finally:
        child.kill()
        child.wait()
    if calls <= 0:
        sys.exit("no dense_crf call completed while sampling: raise --seconds")
    report = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "--sort", "symbol", "-g", "none", "-n",
         "--stdio"], check=True, capture_output=True, text=True).stdout
    rows = []  # (samples, symbol)
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+)\s+\[[.k]\]\s+(.*?)\s*(?:-\s+-\s*)?$", line)
        if m:
            rows.append((int(m.group(2)), m.group(3)))
    total = sum(n for n, _ in rows)
    ms_per_sample = 1e3 / args.frequency
    reference = sum(n for n, sym in rows if sym.endswith(REFERENCE))
    print(f"{args.labels} labels, {calls} calls in {args.seconds:g} s "
          f"({args.seconds * 1e3 / calls:.0f} ms each), {total * ms_per_sample / calls:.0f} ms "
          "of CPU per call (all threads)")
    print(f"{'share':>7} {'CPU ms/call':>12} {'vs blur chains':>15}  function")
    for n, sym in sorted(rows, reverse=True)[:args.top]:
        relative = f"{n / reference:.2f}" if reference else "-"
        print(f"{100 * n / total:6.1f}% {n * ms_per_sample / calls:12.1f} {relative:>15}  "
              f"{short_name(sym)}")
    shutil.rmtree(work, ignore_errors=True)  # perf's data too, unless --data put it elsewhere


if __name__ == "__main__":
    main()
