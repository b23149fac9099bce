"""The ahead-of-time compile check (python -m fastseg.kernels.compile_check) without a GPU.

The full check (every configuration, sm_80 and sm_90, three dtypes) runs in CI; here a quick
pass through the CLI and a check that a failing configuration is reported as a failure.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_quick_compile_check_cli():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # AOT compilation needs real JIT functions
    proc = subprocess.run([sys.executable, "-m", "fastseg.kernels.compile_check", "--quick", "--dtypes", "fp32", "bf16",
                           "--jobs", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("tap_conv_")]
    kernels = {line.split()[0] for line in rows}
    assert kernels == {"tap_conv_fwd", "tap_conv_wgrad", "tap_conv_reduce"}
    assert {"sm_80", "sm_90"} <= {line.split()[2] for line in rows}
    assert all(int(line.split()[4]) > 0 for line in rows), "every row reports registers"
    assert "0 failed" in proc.stdout


def test_oversized_configuration_is_reported_as_failure():
    from fastseg.kernels import compile_check, tap_conv_launch
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("AOT compilation needs real JIT functions")
    huge = tap_conv_launch.FwdConfig(16, 16, 128, 128, 1, 8, 4)  # ~640 KB of float32 tiles
    result = compile_check.compile_one(compile_check.Job("tap_conv_fwd", huge, "fp32", 80, "backbone"))
    assert not result.ok and "shared memory" in result.error
