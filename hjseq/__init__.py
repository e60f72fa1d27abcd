"""hjseq: sequence models as explicit discretizations of Hamilton–Jacobi equations."""
__version__ = "0.1.0"
