"""GPU-kernel tests. Without a CUDA device the Triton kernels run under Triton's
interpreter, which ``triton.jit`` reads when a kernel module is imported: set it here,
before any of hjseq's Triton backends is imported."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
