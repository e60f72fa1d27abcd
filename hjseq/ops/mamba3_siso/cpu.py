"""``mamba3_siso`` cpu backend: torch preprocessing around ``ssd_scan``'s chunked C++ kernel."""
from .chunked import bound


def load():
    return bound("cpu")
