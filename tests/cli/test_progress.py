"""Kernel builds announce their start and end with the time taken (also when a built library
is slow to load), and the training ETA leaves build and evaluation time out."""
import subprocess
import sys
import textwrap

from _cli_helpers import REPO


def _load_with_fake_compiler(tmp_path, prebuilt: bool) -> subprocess.CompletedProcess:
    # cpp_extension.load replaced by a 0.3 s stand-in: the real compiler takes a minute
    code = textwrap.dedent(f"""
        import os, sys, time, types
        os.environ["HJSEQ_BUILD_DIR"] = {str(tmp_path)!r}
        from torch.utils import cpp_extension
        def fake_load(name, build_directory, **kw):
            time.sleep(0.3)
            return types.ModuleType(name)
        cpp_extension.load = fake_load
        from hjseq.ops import _build
        _build.SLOW_LOAD_S = 0.1
        mod = _build.load_extension("linear_scan", ["cpu/linear_scan.cpp"])
        print("seconds", _build.build_seconds())
    """)
    if prebuilt:  # the library exists: a slow load is announced after SLOW_LOAD_S
        code = code.replace("mod = _build", "import pathlib\n"
                            "orig = pathlib.Path.is_file\n"
                            "pathlib.Path.is_file = lambda p: True if p.name == 'hjseq_linear_scan.so' else orig(p)\n"
                            "mod = _build")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_build_start_and_end_lines(tmp_path):
    proc = _load_with_fake_compiler(tmp_path, prebuilt=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("hjseq: building the C++ kernel hjseq_linear_scan")
    assert lines[1].startswith("hjseq: built hjseq_linear_scan in 0.")
    assert float(proc.stdout.split()[-1]) >= 0.3
    slow = _load_with_fake_compiler(tmp_path, prebuilt=True)
    assert slow.returncode == 0, slow.stderr
    assert "loading the C++ kernel hjseq_linear_scan is slow" in slow.stderr
    assert "built hjseq_linear_scan in 0." in slow.stderr


def test_eta_excludes_build_and_evaluation_time():
    import io
    import time

    from hjseq.models.train import ProgressBar

    bar = ProgressBar(total=10, stream=io.StringIO())
    bar.t0 = time.perf_counter() - 10.0  # 10 s elapsed, 2 steps done ...
    bar.exclude(8.0)                     # ... of which 8 s were a kernel build and evals
    line = bar.line(2, 1.0, 1000.0)
    assert "ETA 0:08" in line and "0:10 elapsed" in line
