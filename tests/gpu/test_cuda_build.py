"""The CUDA kernels in csrc/cuda/ compile with nvcc on their own (no torch headers), for
sm_80 and sm_90, so a CI machine without a GPU still checks them; the torch-bound CUDA
backend reports clearly why it is off where it cannot run."""
from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from hjseq.ops._registry import BackendUnavailable

CUDA_DIR = Path(__file__).resolve().parents[2] / "csrc" / "cuda"
KERNELS = sorted(p.name for p in CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc") or (shutil.which("nvcc", path="/usr/local/cuda/bin"))


def test_kernel_sources_exist_and_include_no_torch():
    assert "selective_scan.cu" in KERNELS
    for name in KERNELS:
        src = (CUDA_DIR / name).read_text()
        includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', src)
        bad = [i for i in includes if i.startswith(("torch", "ATen", "c10", "pybind11"))]
        assert not bad, f"{name} includes {bad}: kernels must compile without torch"
        assert 'extern "C"' in src, f"{name} needs an extern \"C\" launcher"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: CUDA kernel compile check not run")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", KERNELS)
def test_nvcc_compiles(name, arch, tmp_path):
    from hjseq.ops._cuda_common import CUDA_FLAGS
    cmd = [NVCC, "-c", f"-arch={arch}", *CUDA_FLAGS, f"-I{CUDA_DIR.parent}",
           str(CUDA_DIR / name), "-o", str(tmp_path / f"{name}.{arch}.o")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"
    assert (tmp_path / f"{name}.{arch}.o").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
@pytest.mark.parametrize("op,arg", [("selective_scan", "u"), ("linear_scan", "b")])
def test_cuda_backend_says_why_it_is_off(op, arg):
    mod = importlib.import_module(f"hjseq.ops.{op}.cuda")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        mod.load()
    assert "cu_seqlens" in mod.supports(cu_seqlens=torch.tensor([0, 1]))
    assert "float64" in mod.supports(**{arg: torch.zeros(1, dtype=torch.float64)})
