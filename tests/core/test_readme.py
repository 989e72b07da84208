"""The README is part of the product: its configuration table must list every
variable with its default, and it must give the two commands."""

from pathlib import Path

from pricepipe.cli import README_TABLE_END, README_TABLE_START, config_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_configuration_table_matches_the_code() -> None:
    text = README.read_text()
    table = text.split(README_TABLE_START, 1)[1].split(README_TABLE_END, 1)[0].strip()
    assert table == config_markdown(), (
        "README configuration table is stale: run "
        "`pricepipe config --update-readme README.md`"
    )


def test_two_commands_are_given() -> None:
    text = README.read_text()
    assert "python3 run.py up" in text
    assert "python3 run.py test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python3 run.py test" in ci
