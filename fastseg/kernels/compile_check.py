"""Ahead-of-time compile every fastseg Triton kernel in every configuration, without a GPU.

    python -m fastseg.kernels.compile_check [--arch 80 90] [--dtypes fp32 bf16 fp16] [--jobs 2] [--quick]

For each kernel, autotune configuration, input dtype and target (sm_80, sm_90) this runs the
full Triton pipeline down to a cubin (ptxas included) and prints the registers per thread, the
spill stores/loads and the shared memory per block. The exit status is non-zero if any
compilation fails or needs more shared memory than the target has (such a configuration could
never launch). It catches what the interpreter cannot: type and layout errors, unsupported
operations on a real target, register spills.

Signatures mirror what the CUDA operators launch for two representative problems (PROBLEMS:
a backbone conv with channel counts that are multiples of 16, and DeepLab's ASPP with 21
classes), on channels_last tensors, specialised as Triton's launcher specialises them (integer
arguments equal to 1 become constants, multiples of 16 get divisibility hints, pointers are
16-byte aligned), with every optional epilogue on (the heaviest variant). Each problem is
compiled in the configurations the launcher's pruning keeps for it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

# Shared memory per block a kernel may use (opt-in maximum), bytes.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
# "fp32" is float32 with TF32 tensor cores (torch.backends.cudnn.allow_tf32, PyTorch's default),
# "fp32-ieee" float32 with TF32 off (exact float32 FMA).
DTYPES = ("fp32", "fp32-ieee", "bf16", "fp16")
ITEMSIZE = {"fp32": 4, "fp32-ieee": 4, "bf16": 2, "fp16": 2}


def _triton_type(dtype: str) -> str:
    return "fp32" if dtype.startswith("fp32") else dtype


def _precision(dtype: str) -> str:
    return {"fp32": "tf32", "fp32-ieee": "ieee"}.get(dtype, "ieee")
SMS = {80: 108, 86: 84, 89: 128, 90: 132}  # A100, RTX 30x0, L40/RTX 40x0, H100


@dataclass
class Job:
    kernel: str
    config: object
    dtype: str
    arch: int
    problem: str


@dataclass
class Result:
    job: Job
    ok: bool
    regs: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    shared: int = -1
    seconds: float = 0.0
    error: str = ""


def _nhwc_strides(n, c, h, w):
    """Strides (n, c, h, w) of a channels_last tensor: what the CUDA operators pass."""
    return dict(n=h * w * c, c=1, h=w * c, w=c)


# Representative problems, one per specialisation the GPU operators launch. "backbone": a 3x3
# dilated conv 256 -> 256 at 65x65 (channel counts multiples of 16); "aspp": DeepLab-v2's ASPP
# 2048 -> 21 (Cout not a multiple of 16, so its strides are not 16-aligned either).
PROBLEMS = {
    "backbone": dict(C=256, H=65, W=65, CO=256, OH=65, OW=65, T=9),
    "aspp": dict(C=2048, H=65, W=65, CO=21, OH=65, OW=65, T=33),
}


def _specialise(fn, values: dict, consts: dict):
    """Signature, constexprs and alignment hints as Triton's launcher derives them: integer
    arguments equal to 1 become the constant 1, multiples of 16 get a divisibility hint,
    pointers (from PyTorch's allocator) are 16-byte aligned."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        v = values[name]
        if isinstance(v, str):  # pointer type
            sig[name] = v
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif v == 1:
            sig[name] = "constexpr"
            consts[name] = 1
        else:
            sig[name] = "i32"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def _fwd_source(tap_conv, cfg, dtype, problem):
    p = PROBLEMS[problem]
    ptr = f"*{_triton_type(dtype)}"
    xs = _nhwc_strides(1, p["C"], p["H"], p["W"])
    os_ = _nhwc_strides(1, p["CO"], p["OH"], p["OW"])
    values = dict(x_ptr=ptr, w_ptr=ptr, taps_ptr="*i32", out_ptr=ptr, part_ptr="*fp32", bias_ptr=ptr,
                  scale_ptr=ptr, shift_ptr=ptr, res_ptr=ptr, STRIDE_H=1, STRIDE_W=1,
                  sp_s=p["CO"] * p["OH"] * p["OW"], sp_n=p["CO"] * p["OH"] * p["OW"],
                  **{k: p[k] for k in ("C", "H", "W", "CO", "OH", "OW", "T")},
                  **{f"sx_{k}": v for k, v in xs.items()}, **{f"so_{k}": v for k, v in os_.items()},
                  **{f"sr_{k}": v for k, v in os_.items()})
    consts = dict(HAS_BIAS=True, HAS_SCALE=True, HAS_SHIFT=True, HAS_RES=True, RELU=True,
                  DOT_PRECISION=_precision(dtype), **cfg.meta())
    return (tap_conv.tap_conv_fwd_kernel, *_specialise(tap_conv.tap_conv_fwd_kernel, values, consts))


def _reduce_source(tap_conv, block, dtype, problem):
    p = PROBLEMS[problem]
    ptr = f"*{_triton_type(dtype)}"
    os_ = _nhwc_strides(1, p["CO"], p["OH"], p["OW"])
    total = p["CO"] * p["OH"] * p["OW"]
    values = dict(part_ptr="*fp32", out_ptr=ptr, bias_ptr=ptr, scale_ptr=ptr, shift_ptr=ptr, res_ptr=ptr,
                  total=total, CO=p["CO"], OH=p["OH"], OW=p["OW"], n_splits=4, sp_s=total,
                  **{f"so_{k}": v for k, v in os_.items()}, **{f"sr_{k}": v for k, v in os_.items()})
    consts = dict(HAS_BIAS=True, HAS_SCALE=True, HAS_SHIFT=True, HAS_RES=True, RELU=True, BLOCK=block)
    return (tap_conv.tap_conv_reduce_kernel, *_specialise(tap_conv.tap_conv_reduce_kernel, values, consts))


def _wgrad_source(tap_conv, cfg, dtype, problem):
    p = PROBLEMS[problem]
    ptr = f"*{_triton_type(dtype)}"
    xs = _nhwc_strides(1, p["C"], p["H"], p["W"])
    gs = _nhwc_strides(1, p["CO"], p["OH"], p["OW"])
    values = dict(x_ptr=ptr, g_ptr=ptr, taps_ptr="*i32", part_ptr="*fp32", NB=2, C=p["C"], CO=p["CO"],
                  OH=p["OH"], OW=p["OW"], sp_s=p["T"] * p["C"] * p["CO"], STRIDE_H=1, STRIDE_W=1,
                  **{f"sx_{k}": v for k, v in xs.items()}, **{f"sg_{k}": v for k, v in gs.items()})
    consts = dict(DOT_PRECISION=_precision(dtype), **cfg.meta())
    return (tap_conv.tap_conv_wgrad_kernel, *_specialise(tap_conv.tap_conv_wgrad_kernel, values, consts))


def all_jobs(archs, dtypes, quick: bool = False) -> list[Job]:
    """Every (kernel, configuration, dtype, arch, problem); with quick=True only the first
    configuration of each kernel per problem (a fast smoke test of the toolchain and kernels)."""
    from fastseg.kernels import tap_conv_launch as launch
    jobs = []
    for arch in archs:
        for dtype in dtypes:
            for problem, p in PROBLEMS.items():
                # The configurations launch.prune_* would keep for this problem (on a big GPU).
                size, limit = ITEMSIZE[dtype], SHARED_LIMIT[arch]
                fwd = launch.prune_fwd(launch.FWD_CONFIGS, 1, p["C"], p["CO"], (p["OH"], p["OW"]), p["T"],
                                       SMS[arch], size, limit)
                wgrad = launch.prune_wgrad(launch.WGRAD_CONFIGS, p["C"], p["CO"], p["T"], 2 * p["OH"] * p["OW"],
                                           SMS[arch], size, limit)
                if quick:
                    fwd, wgrad = fwd[:1], wgrad[:1]
                jobs += [Job("tap_conv_fwd", cfg, dtype, arch, problem) for cfg in fwd]
                jobs += [Job("tap_conv_wgrad", cfg, dtype, arch, problem) for cfg in wgrad]
                jobs.append(Job("tap_conv_reduce", launch.REDUCE_BLOCK, dtype, arch, problem))
    return jobs


def compile_one(job: Job) -> Result:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from fastseg.kernels import tap_conv, tap_conv_launch as launch

    if job.kernel == "tap_conv_fwd":
        fn, sig, consts, attrs = _fwd_source(tap_conv, job.config, job.dtype, job.problem)
        options = {"num_warps": job.config.num_warps, "num_stages": job.config.num_stages}
    elif job.kernel == "tap_conv_wgrad":
        fn, sig, consts, attrs = _wgrad_source(tap_conv, job.config, job.dtype, job.problem)
        options = {"num_warps": job.config.num_warps, "num_stages": job.config.num_stages}
    else:
        fn, sig, consts, attrs = _reduce_source(tap_conv, job.config, job.dtype, job.problem)
        options = {"num_warps": launch.REDUCE_WARPS}
    start = time.time()
    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v output, printed to stdout: captured below
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                                      target=GPUTarget("cuda", job.arch, 32), options=options)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal here
        return Result(job, False, seconds=time.time() - start, error=f"{type(exc).__name__}: {exc}"[:2000])
    text = log.getvalue()
    regs = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    shared = int(compiled.metadata.shared)
    res = Result(job, True, regs=int(regs[-1]) if regs else -1,
                 spill_stores=int(spills[-1][0]) if spills else -1,
                 spill_loads=int(spills[-1][1]) if spills else -1,
                 shared=shared, seconds=time.time() - start)
    if not compiled.asm.get("cubin"):
        res.ok, res.error = False, "no cubin produced"
    elif shared > SHARED_LIMIT.get(job.arch, 0):
        res.ok, res.error = False, f"needs {shared} B shared memory, sm_{job.arch} allows {SHARED_LIMIT.get(job.arch)}"
    return res


def _describe(cfg) -> str:
    if isinstance(cfg, int):
        return f"BLOCK={cfg}"
    return " ".join(f"{k}={v}" for k, v in cfg.__dict__.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="only the first configuration of each kernel")
    args = parser.parse_args(argv)
    # A private cache: a cached kernel skips ptxas, and its register/spill log with it.
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastseg-compile-check-")
    jobs = all_jobs(args.arch, args.dtypes, args.quick)
    start = time.time()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(compile_one, jobs))
    else:
        results = [compile_one(j) for j in jobs]
    print(f"{'kernel':16} {'problem':8} {'arch':5} {'dtype':9} {'regs':>4} {'spill st/ld':>12} {'shared':>7} {'s':>5}  config")
    for r in results:
        j = r.job
        status = "" if r.ok else f"  FAILED: {r.error}"
        print(f"{j.kernel:16} {j.problem:8} sm_{j.arch:<2} {j.dtype:9} {r.regs:4d} {r.spill_stores:5d}/{r.spill_loads:<6d} "
              f"{r.shared:7d} {r.seconds:5.1f}  {_describe(j.config)}{status}")
    failed = [r for r in results if not r.ok]
    spilling = [r for r in results if r.ok and (r.spill_stores > 0 or r.spill_loads > 0)]
    print(f"\n{len(results)} compilations in {time.time() - start:.0f} s: {len(failed)} failed, "
          f"{len(spilling)} spill registers")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
