"""Read an AMD kernel's LLVM IR (Triton's ``llir`` for ``GPUTarget("hip", ...)``): which tensor
each global load/store touches, its width, and the multiplies that scale its row offset.

The same questions :mod:`bench.proof.ptx` answers from PTX, asked of the LLVM IR the AMDGPU
backend turns into ISA: Triton's AMD backend loads and stores through buffer intrinsics
(``llvm.amdgcn.raw.ptr.buffer.load.v4i32(rsrc, offset, ...)``, the resource made from a pointer
argument by ``llvm.amdgcn.make.buffer.rsrc``) or plain ``load`` / ``store`` on
``ptr addrspace(1)``. LLVM IR is SSA, so the backward slice of an access's address (resource
and offset) is exact; it ends at the function's parameters ``%0 ... %k`` (the kernel's runtime
arguments in order, as in PTX). A multiply in the slice whose operands come from a row stride
or ``N`` is narrow when it is an ``i32`` multiply, wide when ``i64``. The ISA's own
``*_dwordx4`` count (:func:`isa_vector_accesses`) confirms that the 128-bit IR accesses stay
128-bit.
"""

from __future__ import annotations

import re
from collections import defaultdict

from .ptx import GlobalAccess

_VALUE = re.compile(r"%([\w.]+)")
_DEFINE = re.compile(r"^define .*?@[\w.]+\((.*)\)[^()]*\{", re.MULTILINE)
_BUFFER = re.compile(r"@llvm\.amdgcn\.raw(?:\.ptr)?\.buffer\.(load|store)\.(\w+)\((.*)\)")
_PLAIN_LOAD = re.compile(r"=\s*load (?:volatile )?(<[^>]+>|\w+), ptr addrspace\(1\) %([\w.]+)")
_PLAIN_STORE = re.compile(
    r"^\s*store (?:volatile )?(<[^>]+>|\w+) [^,]+, ptr addrspace\(1\) %([\w.]+)"
)
_MUL = re.compile(r"=\s*mul (?:nuw |nsw )*(i\d+) ")
_SCALAR_BITS = {"bfloat": 16, "half": 16, "float": 32, "double": 64}


def _bits(type_text: str) -> int:
    """Bits of an IR type: ``<4 x i32>``, ``i16``, ``bfloat``, or a buffer suffix ``v4i32``."""
    vector = re.fullmatch(r"<(\d+) x (\w+)>", type_text) or re.fullmatch(
        r"v(\d+)([a-z]+\d*)", type_text
    )
    lanes, scalar = (int(vector.group(1)), vector.group(2)) if vector else (1, type_text)
    scalar = {"f16": "half", "bf16": "bfloat", "f32": "float", "f64": "double"}.get(scalar, scalar)
    bits = _SCALAR_BITS.get(scalar) or int(scalar.lstrip("if") or 0)
    return lanes * bits


def _split_top(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "(<[{"
        depth -= ch in ")>]}"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return [*parts, current.strip()] if current.strip() else parts


def global_accesses(
    llir: str, pointer_params: set[int], stride_params: set[int]
) -> list[GlobalAccess]:
    """Every static global (buffer or ``addrspace(1)``) load/store of the kernel, traced to its
    pointer parameter; arguments as :func:`bench.proof.ptx.global_accesses`."""
    signature = _DEFINE.search(llir)
    if signature is None:
        raise ValueError("no kernel definition in the LLVM IR")
    params = {
        match.group(1): index
        for index, part in enumerate(_split_top(signature.group(1)))
        if (match := re.search(r"%([\w.]+)$", part))
    }
    body = llir[signature.end() :].split("\n}\n")[0]
    defs: dict[str, str] = {}
    for line in body.splitlines():
        name, sep, rhs = line.strip().partition(" = ")
        if sep and name.startswith("%"):
            defs[name[1:]] = rhs

    def slice_of(values: list[str]) -> tuple[set[int], list[str]]:
        seen, found, lines, stack = set(), set(), [], list(values)
        while stack:
            value = stack.pop()
            if value in seen:
                continue
            seen.add(value)
            if value in params:
                found.add(params[value])
            elif value in defs:
                lines.append(defs[value])
                stack.extend(_VALUE.findall(defs[value]))
        return found, lines

    accesses = []
    for line in body.splitlines():
        if buffer := _BUFFER.search(line):
            kind, suffix, args = buffer.groups()
            operands = _split_top(args)
            is_store = kind == "store"
            address = operands[1:] if is_store else operands
            bits = _bits(suffix)
        elif load := _PLAIN_LOAD.search(line):
            is_store, bits, address = False, _bits(load.group(1)), [f"%{load.group(2)}"]
        elif store := _PLAIN_STORE.search(line):
            is_store, bits, address = True, _bits(store.group(1)), [f"%{store.group(2)}"]
        else:
            continue
        found, lines = slice_of([v for op in address for v in _VALUE.findall(op)])
        pointers = found & pointer_params
        access = GlobalAccess(is_store, bits, next(iter(pointers)) if len(pointers) == 1 else None)
        for rhs in lines:
            mul = _MUL.search(f"= {rhs}")
            if mul is None:
                continue
            scaled = slice_of(_VALUE.findall(rhs))[0] & stride_params
            if not scaled:
                continue
            access.scaled_by |= scaled
            if mul.group(1) == "i64":
                access.wide_muls += 1
            else:
                access.narrow_muls += 1
        accesses.append(access)
    return accesses


def isa_vector_accesses(amdgcn: str) -> dict[bool, int]:
    """{is_store: static 128-bit global/buffer loads or stores} in the AMDGPU assembly."""
    counts: dict[bool, int] = defaultdict(int)
    for match in re.finditer(r"^\s*(?:global|buffer)_(load|store)_dwordx4\b", amdgcn, re.M):
        counts[match.group(1) == "store"] += 1
    return {False: counts[False], True: counts[True]}
