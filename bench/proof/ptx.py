"""Read a kernel's PTX: which tensor each global load/store touches, its width, and whether the
row offsets that reach it are computed in 64-bit arithmetic.

Global loads are ``ld.global`` and the asynchronous copies to shared memory of a pipelined loop
(``cp.async...shared.global``, as wide as their copy size). Every one, and every ``st.global``,
is traced back through the definitions of its address
register (a backward slice over PTX's virtual registers; a register defined more than once, as
in loops, contributes every definition) to the ``ld.param`` of a pointer argument, which names
the tensor. The same slice holds every multiplication that scaled an index into that address:
one whose operands come from a row stride or ``N`` (the kernel arguments that multiply a row
index) must be a 64-bit multiply (``mul.wide``, ``mul.lo.s64``, ``mad.wide``, ``mad.lo.s64``),
or ``row * stride`` would wrap past 2**31 elements.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

_REGISTER = re.compile(r"%[a-z]+\d+")
_PARAM = re.compile(r"\[\s*(\w+_param_(\d+))\s*\]")
_VECTOR = re.compile(r"\.v(\d)")
_TYPE_BITS = re.compile(r"\.[bsuf](8|16|32|64)\b")
_WIDE_MULS = ("mul.wide.", "mad.wide.", "mul.lo.s64", "mul.lo.u64", "mad.lo.s64", "mad.lo.u64")
_NARROW_MULS = ("mul.lo.s32", "mul.lo.u32", "mad.lo.s32", "mad.lo.u32", "mul24", "mad24")


@dataclass(frozen=True)
class Instruction:
    opcode: str
    dests: tuple[str, ...]
    sources: tuple[str, ...]  # registers, and "param:<index>" for ld.param
    copy_bits: int = 0  # cp.async: bits copied (its copy-size operand)


@dataclass
class GlobalAccess:
    """One static ``ld.global`` / ``cp.async`` / ``st.global``: its pointer argument, width
    and offset math."""

    is_store: bool
    bits: int
    pointer: int | None  # index of the pointer parameter, None if not traced to exactly one
    scaled_by: set[int] = field(default_factory=set)  # params a multiply in its slice used
    narrow_muls: int = 0  # 32-bit multiplies of a stride/N parameter
    wide_muls: int = 0  # 64-bit multiplies of a stride/N parameter


def _split_operands(text: str) -> list[str]:
    operands, depth, current = [], 0, ""
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            operands.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        operands.append(current.strip())
    return operands


def parse(ptx: str) -> list[Instruction]:
    """The instructions of a single-kernel PTX module, predicates and comments stripped."""
    instructions = []
    for raw in ptx.splitlines():
        line = raw.split("//")[0].strip()
        if not line.endswith(";") or line.startswith("."):
            continue
        line = re.sub(r"^@!?%p\d+\s+", "", line.rstrip(";"))
        opcode, _, rest = line.partition(" ")
        operands = _split_operands(rest)
        if not operands:
            continue
        copy_bits = 0
        if opcode.startswith(("st.", "red.", "bar", "cp.async")):
            dests, source_text = (), rest
            if opcode.startswith("cp.async") and len(operands) > 2:
                copy_bits = int(operands[2], 0) * 8
        else:
            dests = tuple(_REGISTER.findall(operands[0]))
            source_text = ", ".join(operands[1:])
        sources = _REGISTER.findall(source_text)
        sources += [f"param:{m.group(2)}" for m in _PARAM.finditer(source_text)]
        instructions.append(Instruction(opcode, dests, tuple(sources), copy_bits))
    return instructions


def _is_global_access(ins: Instruction) -> bool:
    if ins.opcode.startswith("cp.async"):
        return ins.opcode.endswith(".global")
    return ins.opcode.startswith(("ld.global", "st.global"))


def _width(ins: Instruction) -> int:
    if ins.copy_bits:
        return ins.copy_bits
    opcode = ins.opcode
    vector = _VECTOR.search(opcode)
    bits = _TYPE_BITS.search(opcode)
    return (int(vector.group(1)) if vector else 1) * (int(bits.group(1)) if bits else 0)


def global_accesses(
    ptx: str, pointer_params: set[int], stride_params: set[int]
) -> list[GlobalAccess]:
    """Every static global load (``ld.global``, ``cp.async``) and store, traced to its pointer
    parameter.

    Args:
        pointer_params: PTX parameter indices of the tensor arguments.
        stride_params: PTX parameter indices that multiply a row index (strides, ``N``).
    """
    instructions = parse(ptx)
    defs: dict[str, list[Instruction]] = defaultdict(list)
    for ins in instructions:
        for dest in ins.dests:
            defs[dest].append(ins)

    def params_of(registers: list[str]) -> tuple[set[int], list[Instruction]]:
        seen, slice_, params, stack = set(), [], set(), list(registers)
        while stack:
            reg = stack.pop()
            if reg in seen:
                continue
            seen.add(reg)
            if reg.startswith("param:"):
                params.add(int(reg.split(":")[1]))
                continue
            for ins in defs.get(reg, ()):
                slice_.append(ins)
                stack.extend(ins.sources)
        return params, slice_

    accesses = []
    for ins in instructions:
        if not _is_global_access(ins):
            continue
        is_store = ins.opcode.startswith("st.")
        if ins.opcode.startswith("cp.async"):
            address = ins.sources[1:2]  # [shared], [global], size, ...
        else:
            address = ins.sources[:1] if is_store else ins.sources
        params, slice_ = params_of(list(address))
        pointers = params & pointer_params
        access = GlobalAccess(
            is_store, _width(ins), next(iter(pointers)) if len(pointers) == 1 else None
        )
        for mul in slice_:
            if not mul.opcode.startswith(("mul", "mad")) or ".f" in mul.opcode:
                continue
            scaled = params_of(list(mul.sources))[0] & stride_params
            if not scaled:
                continue
            access.scaled_by |= scaled
            if mul.opcode.startswith(_WIDE_MULS):
                access.wide_muls += 1
            elif mul.opcode.startswith(_NARROW_MULS):
                access.narrow_muls += 1
        accesses.append(access)
    return accesses


def widths_by_pointer(accesses: list[GlobalAccess]) -> dict[tuple[int | None, bool], Counter]:
    """{(pointer param, is_store): Counter(bits -> static instruction count)}."""
    table: dict[tuple[int | None, bool], Counter] = defaultdict(Counter)
    for access in accesses:
        table[(access.pointer, access.is_store)][access.bits] += 1
    return table
