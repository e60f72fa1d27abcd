"""``mamba3_siso`` triton backend: torch preprocessing around ``ssd_scan``'s Triton kernels
(on CPU under TRITON_INTERPRET=1)."""
from .chunked import bound


def load():
    return bound("triton")
