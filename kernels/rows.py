"""How the kernels address rows of a strided tensor, without copying it.

A tensor of shape ``(*lead, *norm)`` is a set of rows of ``N = prod(norm)`` elements. The
kernels need each row to be contiguous (the normalised dims merge into one with stride 1) and
find row ``r`` at ``i0*s0 + i1*s1 + i2*s2`` where ``(i0, i1, i2)`` is ``r`` unravelled over up
to three leading dims ``(D0, D1, D2)``. That covers sliced rows (``x[:, :N]``), strided rows
(``x[::2]``), broadcast rows (stride 0) and any permutation of up to three leading dims, with
no copy. Only a row that is not contiguous, or more than three leading dims that do not merge,
costs one ``.contiguous()`` copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

MAX_LEAD_DIMS = 3


@dataclass(frozen=True)
class RowLayout:
    """Row addressing of one tensor: the sizes of leading dims 1 and 2 and all three strides.

    Unused leading dims have size 1 (Triton specialises integer arguments equal to 1, so the
    common one-level case compiles to ``row * s0`` with no division).
    """

    d1: int
    d2: int
    strides: tuple[int, int, int]


def _rows_contiguous(t: torch.Tensor, n_norm_dims: int) -> bool:
    expected = 1
    for size, stride in zip(
        reversed(t.shape[-n_norm_dims:]), reversed(t.stride()[-n_norm_dims:]), strict=True
    ):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _merged_lead_dims(t: torch.Tensor, n_norm_dims: int) -> list[tuple[int, int]]:
    """Leading (size, stride) pairs with size-1 dims dropped and adjacent mergeable dims merged."""
    dims: list[tuple[int, int]] = []
    for size, stride in zip(t.shape[:-n_norm_dims], t.stride()[:-n_norm_dims], strict=True):
        if size == 1:
            continue
        if dims and dims[-1][1] == stride * size:
            dims[-1] = (dims[-1][0] * size, stride)
        else:
            dims.append((size, stride))
    return dims


def row_layout(t: torch.Tensor, n_norm_dims: int) -> tuple[torch.Tensor, RowLayout]:
    """Return ``t`` (copied only if its rows cannot be addressed in place) and its layout."""
    if not _rows_contiguous(t, n_norm_dims):
        t = t.contiguous()
    dims = _merged_lead_dims(t, n_norm_dims)
    if len(dims) > MAX_LEAD_DIMS:
        t = t.contiguous()
        dims = _merged_lead_dims(t, n_norm_dims)
    dims += [(1, 0)] * (MAX_LEAD_DIMS - len(dims))
    (_, s0), (d1, s1), (d2, s2) = dims
    return t, RowLayout(d1=d1, d2=d2, strides=(s0, s1, s2))


def vector_align(n_cols: int, *layouts: RowLayout | None) -> int:
    """The largest power of two up to 16 that divides the row width and every row stride: the
    ``ALIGN`` the kernels assert on their row offsets.

    Triton's JIT learns only divisibility by 16 of integer arguments, so without this a row of
    4104 bfloat16 elements (8208 bytes, 16-byte aligned) would load in 16-bit pieces. Up to 16,
    the most the JIT itself would know, so rows it already knows aligned lose nothing.
    """
    common = n_cols
    for layout in layouts:
        if layout is not None:
            common = math.gcd(common, *layout.strides)
    align = 1
    while align < 16 and common % (2 * align) == 0:
        align *= 2
    return align


@triton.jit
def program_id(INT64_ROWS: tl.constexpr):
    """This program's id, int64 when the launch's row indices need it (``NormConfig.int64_rows``),
    so that every row index formed from it is too: past 2**31 rows an int32 index would wrap
    negative, pass the ``rows < n_rows`` mask and address memory out of bounds."""
    pid = tl.program_id(0)
    if INT64_ROWS:
        pid = pid.to(tl.int64)
    return pid


@triton.jit
def tile_rows(first_row, n_rows, ROWS_PER_TILE: tl.constexpr):
    """The ``ROWS_PER_TILE`` rows of the tile starting at ``first_row``, and their mask
    ``rows < n_rows`` (rows have ``first_row``'s integer type, see :func:`program_id`)."""
    rows = first_row + tl.arange(0, ROWS_PER_TILE)
    return rows, rows < n_rows


@triton.jit
def row_start(rows, layout, ALIGN: tl.constexpr):
    """Element offset (int64) of the first element of each row in ``rows``.

    ``layout`` is ``(d1, d2, s0, s1, s2)``, a :class:`RowLayout` as kernel arguments: ``rows``
    is unravelled over the leading dims ``(D0, d1, d2)``. The arithmetic is int64 so
    ``row * stride`` cannot wrap past 2**31 elements. Every stride is a multiple of ``ALIGN``
    (:func:`vector_align`); ``(s // ALIGN) * ALIGN`` (a shift, once per tile) is how the
    compiler learns it, so that loads from the rows stay 128-bit.
    """
    d1, d2, s0, s1, s2 = layout
    rows = rows.to(tl.int64)
    i2 = rows % d2
    rest = rows // d2
    s0, s1, s2 = (s0 // ALIGN) * ALIGN, (s1 // ALIGN) * ALIGN, (s2 // ALIGN) * ALIGN
    return (rest // d1) * s0 + (rest % d1) * s1 + i2 * s2
