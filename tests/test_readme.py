"""The README's quick tour runs as written: every ```python block executes, in order, in
one namespace (blocks build on each other)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_tour():
    assert len(python_blocks()) >= 3, "README.md should show a runnable quick tour"


def test_readme_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as e:  # name the block that broke
            raise AssertionError(f"README python block {i} failed: {e!r}\n{block}") from e
