"""Builds fastseg's native extension ``fastseg._C`` from ``csrc/``.

The C++ (CPU) sources are always compiled. The CUDA sources are compiled when
``FASTSEG_CUDA`` says so:

* ``FASTSEG_CUDA=auto`` (default): when the installed torch is a CUDA build and a CUDA
  toolkit is found (``CUDA_HOME``), whether or not a GPU is visible;
* ``FASTSEG_CUDA=1``: always; the build fails if that is impossible (CI uses this so that a
  CUDA compile error fails the build);
* ``FASTSEG_CUDA=0``: never (a CPU-only build).

``FASTSEG_PTXAS_VERBOSE=1`` makes ptxas print each CUDA kernel's registers, spills and shared
memory during the build (``tools/ptxas_report.py`` summarises that log).

``TORCH_CUDA_ARCH_LIST`` picks the GPU architectures (default without a visible GPU:
``"8.0;9.0+PTX"``; with one, torch uses that GPU's). Install with
``pip install --no-build-isolation .`` so that the extension is compiled against the torch you
already have.
"""
import glob
import os
import shlex
import subprocess
import sys
import sysconfig

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - only reached on a misconfigured install
    sys.exit(
        "fastseg: torch must be installed before building fastseg, and the build must see it:\n"
        "    pip install torch && pip install --no-build-isolation fastseg"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_home():
    """The CUDA toolkit to compile with, or None. torch derives it from the nvcc on PATH, which
    may be a wrapper (/usr/local/bin/nvcc) whose folder has no CUDA libraries, and the link then
    fails on -lcudart; only accept a folder with nvcc, the runtime headers and the library."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    for home in candidates:
        if home and all(
            os.path.exists(os.path.join(home, *part))
            for part in (("bin", "nvcc"), ("include", "cuda_runtime.h"))
        ) and any(os.path.exists(os.path.join(home, lib, "libcudart.so")) for lib in ("lib64", "lib")):
            return home
    return None


def _want_cuda() -> bool:
    mode = os.environ.get("FASTSEG_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"fastseg: FASTSEG_CUDA must be auto, 0 or 1, not {mode!r}")
    home = _cuda_home()
    possible = torch.version.cuda is not None and home is not None
    if possible:
        cpp_extension.CUDA_HOME = home  # what BuildExtension compiles and links with
    if mode == "1":
        if not possible:
            sys.exit(
                "fastseg: FASTSEG_CUDA=1 but CUDA sources cannot be compiled: "
                f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r}"
            )
        return True
    return mode == "auto" and possible


def _shared_libstdcxx_link_args():
    """Link the shared libstdc++ where the C++ compiler would link a static copy.

    Every input check in fastseg._C throws a C++ exception that libtorch's dispatcher catches
    with the shared libstdc++ it uses. An extension holding its own static libstdc++ crashed
    there (a segfault on every error, seen with a GCC wrapper whose library folder has only
    libstdc++.a: it is what ``CXX`` named on the GPU machine); the same sources linked with the
    shared one raise a Python RuntimeError as they should."""
    cxx = shlex.split(os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++")
    try:
        found = subprocess.run(cxx + ["-print-file-name=libstdc++.so"], capture_output=True,
                               text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return []  # the build itself will say what is wrong with the compiler
    if os.path.isabs(found):
        return []  # the compiler finds the shared library and links it by default
    print(f"fastseg: {cxx[0]} finds no shared libstdc++; linking libstdc++.so.6 explicitly",
          file=sys.stderr)
    return ["-l:libstdc++.so.6"]


def _extension():
    with_cuda = _want_cuda()
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    cxx_flags = [
        "-O3",
        "-fopenmp",  # at::parallel_for only runs in parallel when compiled with OpenMP
        "-ffp-contract=off",  # identical float results whatever instruction set a clone uses
        "-fvisibility=hidden",
        "-Wno-psabi",  # GCC notes that vector types change the ABI; they never cross one
    ]
    define_macros = []
    sources = cpp_sources
    kwargs = {}
    if with_cuda:
        sources = cpp_sources + cuda_sources
        define_macros.append(("FASTSEG_WITH_CUDA", None))
        nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        if os.environ.get("FASTSEG_PTXAS_VERBOSE") == "1":
            nvcc_flags.append("-Xptxas=-v")  # registers, spills, shared memory per kernel
        kwargs["extra_compile_args"] = {"cxx": cxx_flags, "nvcc": nvcc_flags}
        ext_cls = cpp_extension.CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx_flags}
        ext_cls = cpp_extension.CppExtension
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # No GPU to ask: compile for Ampere and Hopper, with PTX that newer GPUs can JIT.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    print(f"fastseg: building fastseg._C with{'' if with_cuda else 'out'} CUDA"
          + (f" for {os.environ.get('TORCH_CUDA_ARCH_LIST')}" if with_cuda else ""), file=sys.stderr)
    return ext_cls(
        name="fastseg._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_link_args=["-fopenmp"] + _shared_libstdcxx_link_args(),
        **kwargs,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
