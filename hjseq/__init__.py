"""hjseq: sequence models as explicit discretizations of Hamilton–Jacobi equations."""
__version__ = "0.1.0"

from . import catalog as _catalog  # noqa: E402,F401  (every shipped registration, once)
