"""Targets and verdicts: what each report checked, whether it held, and the exit status.

Every checked figure ends as an :class:`Outcome`: a target in plain words, what was measured and
one of three verdicts. ``met`` and ``missed`` are decided; ``not judged`` is for a timing that
the machine's noise made undecidable (a busy machine, or a spread that straddles the target),
so that a busy laptop does not report a miss it did not measure.
"""

from __future__ import annotations

from dataclasses import dataclass

from .tables import Table

MET = "met"
MISSED = "MISSED"
NOT_JUDGED = "not judged"


@dataclass(frozen=True)
class Outcome:
    """One target: ``what`` is checked, the ``target`` itself, the ``measured`` value and the
    ``verdict`` (:data:`MET`, :data:`MISSED` or :data:`NOT_JUDGED`, with ``why`` for the last)."""

    what: str
    target: str
    measured: str
    verdict: str
    why: str = ""

    def verdict_text(self) -> str:
        return f"{self.verdict} ({self.why})" if self.why else self.verdict


def judge(ok: bool) -> str:
    """The verdict of a deterministic check."""
    return MET if ok else MISSED


def summary_table(outcomes: list[Outcome]) -> Table:
    """One row per target, in the order the reports ran."""
    table = Table("Summary: every target checked without a GPU", ["target", "measured", "verdict"])
    for o in outcomes:
        table.add(f"{o.what}: {o.target}", o.measured, o.verdict_text())
    return table


def exit_status(outcomes: list[Outcome], strict: bool = False) -> int:
    """1 when a target was missed (``strict``: or could not be judged), else 0."""
    failing = {MISSED, NOT_JUDGED} if strict else {MISSED}
    return 1 if any(o.verdict in failing for o in outcomes) else 0
