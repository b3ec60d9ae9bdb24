"""Report tables: built once as plain data, printed with rich or written as Markdown."""

from __future__ import annotations

from dataclasses import dataclass, field


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


def print_table(table: Table, markdown: bool = False) -> None:
    """Print ``table`` with rich (or as Markdown)."""
    if markdown:
        print(to_markdown(table))
        return
    from rich.console import Console
    from rich.table import Table as RichTable

    rich_table = RichTable(title=table.title, title_justify="left", show_lines=False)
    for column in table.columns:
        rich_table.add_column(column, overflow="fold")
    for row in table.rows:
        rich_table.add_row(*row)
    console = Console(width=160)
    console.print(rich_table)
    for note in table.notes:
        console.print(f"  • {note}", highlight=False)
    console.print()
