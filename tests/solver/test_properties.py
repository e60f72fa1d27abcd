"""The twelve properties of issue 3 — the same functions ``hjseq check`` runs."""
import pytest

from hjseq.solver.properties import PROPERTIES


@pytest.mark.parametrize("prop", sorted(PROPERTIES), ids=lambda i: f"p{i:02d}")
def test_property(prop):
    title, fn = PROPERTIES[prop]
    rows = fn()
    assert rows, f"property {prop} ({title}) returned no rows"
    failed = [r for r in rows if not r.passed]
    assert not failed, "\n".join(f"{r.name}: measured {r.measured} vs {r.tolerance} {r.detail}"
                                 for r in failed)
