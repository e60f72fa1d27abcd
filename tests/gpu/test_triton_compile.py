"""Every Triton kernel compiles for a real GPU (sm_80 cubin, through Triton's bundled
ptxas) with the signatures its wrappers launch it with -- checked without a GPU, in a
subprocess that does not set TRITON_INTERPRET (see _triton_compile_check.py). The
interpreter tests check the arithmetic; this checks what only the compiler sees."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("_triton_compile_check.py")
KERNELS = {"selective_scan._ssm_fwd_kernel", "selective_scan._ssm_bwd_kernel",
           "linear_scan._lin_fwd_kernel", "linear_scan._lin_bwd_kernel",
           "causal_conv1d._conv_fwd_kernel", "causal_conv1d._conv_final_kernel",
           "causal_conv1d._conv_bwd_kernel", "causal_conv1d._conv_dh0_kernel",
           "selective_state_update._ssu_kernel", "ssd._local_state_kernel", "ssd._pass_kernel",
           "ssd._output_kernel", "ssd._backward_kernel"}


def test_all_triton_kernels_compile_for_sm80():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run([sys.executable, str(SCRIPT), "80"], capture_output=True, text=True,
                         env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    results = json.loads(res.stdout.strip().splitlines()[-1])
    failed = [r for r in results if not r["ok"]]
    assert not failed, "\n\n".join(f"{r['kernel']} [{r['config']}]: {r['error']}" for r in failed)
    assert {r["kernel"] for r in results} == KERNELS
