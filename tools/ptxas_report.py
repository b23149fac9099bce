"""Summarises ptxas's per-kernel resource usage from a build log.

Build with ``FASTSEG_PTXAS_VERBOSE=1`` (see setup.py) and pass the log:

    FASTSEG_CUDA=1 FASTSEG_PTXAS_VERBOSE=1 python setup.py build_ext --inplace > build.log 2>&1
    python tools/ptxas_report.py build.log

Prints one line per kernel and architecture: registers, stack frame, spill stores/loads.
Exit status 1 if the log has no ptxas output (the CUDA sources were not compiled).
"""
import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+[a-z]?)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")


def demangle(names):
    if not shutil.which("c++filt"):
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    short = []
    for full in out.stdout.splitlines():
        full = re.sub(r"\(anonymous namespace\)::", "", full)
        short.append(re.sub(r"\(.*", "", full).replace("fastseg::lattice::", ""))
    return short


def main(path: str) -> int:
    rows, current = [], None
    for line in open(path, errors="replace"):
        if m := ENTRY.search(line):
            current = {"kernel": m.group(1), "arch": m.group(2)}
        elif current and (m := FRAME.search(line)):
            current.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        elif current and (m := REGS.search(line)):
            current["regs"] = int(m.group(1))
            rows.append(current)
            current = None
    if not rows:
        print("no ptxas output found: were the CUDA sources compiled with FASTSEG_PTXAS_VERBOSE=1?")
        return 1
    names = demangle([r["kernel"] for r in rows])
    print(f"{'kernel':58s} {'arch':6s} {'regs':>4s} {'stack':>6s} {'spill st/ld':>12s}")
    for name, r in sorted(zip(names, rows), key=lambda x: (x[0], x[1]["arch"])):
        print(f"{name[:58]:58s} {r['arch']:6s} {r['regs']:4d} {r.get('stack', 0):6d} "
              f"{r.get('spill_st', 0):5d}/{r.get('spill_ld', 0):<5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
