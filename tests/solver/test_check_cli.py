import json
import math

import hjseq.solver.properties as props
from hjseq.cli import main
from hjseq.solver.check import format_table, run_properties
from hjseq.solver.properties import Row


def test_check_command_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "check.json"
    rc = main(["check", "--only", "2", "--only", "5", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "| # | property | measured | tolerance | result |" in text and "FAIL" not in text
    data = json.loads(out.read_text())
    assert data["passed"] is True and {r["prop"] for r in data["rows"]} == {2, 5}
    assert all(r["passed"] for r in data["rows"])


def test_failing_or_raising_property_fails_the_command(monkeypatch, capsys):
    def failing():
        return [Row(1, "deliberately off", 2.0, "<= 1", False, "why")]

    def raising():
        from hjseq.nn import NoSuchBlock  # noqa: F401  (a missing block must fail, not skip)

    monkeypatch.setattr(props, "PROPERTIES", {1: ("off", failing), 2: ("missing", raising)})
    monkeypatch.setattr("hjseq.solver.check.PROPERTIES", props.PROPERTIES)
    rows, seconds = run_properties()
    assert [r.passed for r in rows] == [False, False] and set(seconds) == {1, 2}
    assert "ImportError" in rows[1].name and math.isnan(rows[1].measured)
    assert main(["check"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_format_table_escapes_pipes():
    table = format_table([Row(1, "|x|^2", 1e-15, "<= 1e-12", True)])
    assert "\\|x\\|^2" in table and table.count("\n") == 2
