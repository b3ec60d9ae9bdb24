"""Read a kernel's Triton IR (TTIR): is every row index formed in 64-bit arithmetic?

A program's rows are ``tile * ROWS_PER_TILE + arange`` with ``tile`` derived from the program
id (or, in the column-parallel backward, whose programs walk every row, from a loop up to
``n_rows``). If any integer multiply or add on the way is 32-bit, more than 2**31 rows (tiny
rows, e.g. a ``(2**31 + 5, 1)`` tensor) wrap negative, pass the ``rows < n_rows`` mask and
address memory out of bounds. TTIR shows the arithmetic as the kernel wrote it (before LLVM),
one SSA value per line, so a forward walk from ``tt.get_program_id`` (or that loop's induction
variable) finds every 32-bit integer op that a row index flows into.
"""

from __future__ import annotations

import re

_DEF = re.compile(r"^\s*((?:%[\w.#]+(?::\d+)?\s*,\s*)*%[\w.#]+(?::\d+)?)\s*=\s*([\w.]+)(.*)$")
_VALUE = re.compile(r"%[\w.#]+")
_INT_ARITH = {
    "arith.addi",
    "arith.subi",
    "arith.muli",
    "arith.divsi",
    "arith.divui",
    "arith.remsi",
    "arith.remui",
    "arith.shli",
}
# the result type of an op on 32-bit integers, scalar or tensor (``: i32``, ``xi32>``)
_I32_RESULT = re.compile(r":\s*(?:tensor<[^>]*xi32>|i32)\s*(?:loc\(.*\))?\s*$")


def _names(text: str) -> set[str]:
    return {name.split(":")[0] for name in _VALUE.findall(text)}


def narrow_program_id_ops(ttir: str, row_loop_bound: str | None = None) -> list[str]:
    """Every 32-bit integer arithmetic op whose operands derive from the program id, or, with
    ``row_loop_bound`` (a kernel argument's name: a kernel whose programs walk every row), from
    the induction variable of a loop up to that argument instead.

    Returns the offending lines (location info stripped); empty when every such index is
    64-bit.
    """
    derived: set[str] = set()
    narrow = []
    # MLIR numbers values per region, so sibling regions reuse names (%6 of one loop body is
    # not %6 of the next): the names a region defines are forgotten when it closes
    scopes: list[set[str]] = [set()]
    for raw in ttir.splitlines():
        line = re.sub(r"\s*loc\(.*$", "", raw).strip()
        if line.startswith("}"):
            derived -= scopes.pop() if len(scopes) > 1 else set()
            if line.endswith("{"):  # } else {
                scopes.append(set())
            continue
        opens = line.endswith("{")
        match = _DEF.match(line)
        if match is None:
            if opens:  # a region of an op without results (its bound names live in it)
                scopes.append({m.group(1) for m in re.finditer(r"(%[\w.#]+)\s*=", line)})
            continue
        defs, op, rest = _names(match.group(1)), match.group(2), match.group(3)
        # iter_args(%a = %b) bind loop-carried values: definitions too
        bound = {m.group(1) for m in re.finditer(r"(%[\w.#]+)\s*=", rest)}
        uses = _names(rest) - bound
        scopes[-1] |= defs
        if opens:
            scopes.append(set(bound))
        if op == "tt.get_program_id":
            derived |= set() if row_loop_bound else defs
            continue
        loop = re.match(r"\s*(%[\w.#]+)\s*=\s*\S+\s+to\s+(%[\w.#]+)", rest)
        if op == "scf.for" and loop and row_loop_bound and loop.group(2) == f"%{row_loop_bound}":
            derived.add(loop.group(1))  # the loop over every row: its induction variable
            continue
        if not uses & derived:
            continue
        derived |= defs | bound
        if op in _INT_ARITH and _I32_RESULT.search(line):
            narrow.append(line)
    return narrow
