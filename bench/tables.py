"""Report tables: built once as plain data, printed with rich or written as Markdown.

Tables print at the terminal's width (``COLUMNS`` when set; 80 columns when the output is not a
terminal), wrapping cells between words; a table whose longest words alone are wider than the
terminal prints as one block per row instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich comes with the bench extra; the tests import the tables without it
    from rich.console import Console


@dataclass
class Table:
    """A titled table of strings, with notes printed under it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])


def fmt_bytes(n: float) -> str:
    """``n`` bytes with a binary-free SI unit (B, kB, MB, GB), three significant digits."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


@functools.cache
def console() -> Console:
    """The report's console (standard output, the terminal's width)."""
    from rich.console import Console

    return Console(highlight=False)


def to_markdown(table: Table) -> str:
    """GitHub Markdown: a bold title line, the table, then the notes as a list."""
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def column_widths(table: Table, width: int) -> list[int] | None:
    """Widths of the columns in a ``width``-wide terminal, words never split (words count up to
    24 characters): each column gets its longest word, then the room left is shared out evenly,
    narrow columns first, none past its natural width (so short cells stay on one line). None
    when even the longest words do not fit."""
    cells = list(zip(table.columns, *table.rows, strict=True))
    widths = [max(min(len(w), 24) for cell in col for w in cell.split() or [""]) for col in cells]
    natural = [max(len(cell) for cell in col) for col in cells]
    room = width - (3 * len(cells) + 1)  # borders and padding
    if sum(natural) <= room:
        return natural
    if sum(widths) > room:
        return None
    spare = room - sum(widths)
    by_want = sorted(range(len(cells)), key=lambda i: natural[i] - widths[i])
    for left, i in enumerate(by_want):
        extra = min(natural[i] - widths[i], spare // (len(cells) - left))
        widths[i] += extra
        spare -= extra
    return widths


def print_table(table: Table, markdown: bool = False) -> None:
    """Print ``table`` with rich at the terminal's width (or as Markdown)."""
    if markdown:
        print(to_markdown(table))
        return
    from rich.padding import Padding
    from rich.table import Table as RichTable
    from rich.text import Text

    out = console()
    widths = column_widths(table, out.width)
    if widths is None:
        out.print(Text(table.title, style="bold"))
        out.print(f"(one block per row: the table is wider than {out.width} columns)")
        for row in table.rows:
            record = RichTable.grid(padding=(0, 2))
            record.add_column(style="dim", no_wrap=True)
            record.add_column(overflow="fold")
            for column, cell in zip(table.columns[1:], row[1:], strict=True):
                record.add_row(column, cell)
            out.print(Text(f"{table.columns[0]}: {row[0]}", style="bold"))
            out.print(Padding(record, (0, 0, 0, 2)))
    else:
        rich_table = RichTable(title=table.title, title_justify="left", title_style="bold")
        for column, column_width in zip(table.columns, widths, strict=True):
            rich_table.add_column(column, overflow="fold", width=column_width)
        for row in table.rows:
            rich_table.add_row(*row)
        out.print(rich_table)
    if table.notes:
        # a grid, so that a wrapped note keeps its indent under the bullet
        notes = RichTable.grid(padding=(0, 1))
        notes.add_column(no_wrap=True)
        notes.add_column()
        for note in table.notes:
            notes.add_row("  •", Text(note))
        out.print(notes)
    out.print()
