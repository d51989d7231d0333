"""Tables written without a terminal skip rich, and read exactly as rich draws them."""

from __future__ import annotations

import io
import string

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from provisioner.cli._output import plain_table, rich_table


def rich_text(title: str, columns: list[str], rows: list[list[str]]) -> str:
    """What print_table draws through rich (the same table and console settings)."""
    table, width = rich_table(title, columns, rows)
    out = io.StringIO()
    Console(file=out, highlight=False, soft_wrap=False, width=width).print(table)
    return out.getvalue().rstrip("\n")


def test_a_generations_table_is_drawn_as_rich_draws_it() -> None:
    columns = ["number", "time", "profile", "files changed", ""]
    rows = [["* 2", "2026-11-28T02:30:00+00:00", "quickstart", "3", ""], ["  1", "2026-11-27", "q", "10", "incomplete"]]
    text = plain_table("2 generation(s), current 2", columns, rows)
    assert text is not None and text == rich_text("2 generation(s), current 2", columns, rows)


def test_what_rich_would_read_as_markup_or_emoji_is_left_to_rich() -> None:
    assert plain_table("t", ["a"], [["[bold]x"]]) is None
    assert plain_table("t", ["a"], [["at 12:ab:00"]]) is None  # ":ab:" is an emoji code to rich
    assert plain_table("t", ["a"], [["✓"]]) is None
    assert plain_table("a title wider than the table", ["a"], [["x"]]) is None


CELL = st.text(alphabet=string.ascii_letters + string.digits + " .:-/_*%()=,'", max_size=24)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.tuples(
    CELL, st.lists(CELL.filter(bool), min_size=n, max_size=n),
    st.lists(st.lists(CELL, min_size=n, max_size=n), max_size=5))))
def test_any_plain_table_matches_rich(table: tuple[str, list[str], list[list[str]]]) -> None:
    title, columns, rows = table
    text = plain_table(title, columns, rows)
    if text is not None:
        assert text == rich_text(title, columns, rows)
