"""Traffic report: the bytes the real kernels move, measured in Triton's interpreter.

Two parts:

* Small problems through the public API (forward, then backward through autograd), traced with
  :func:`bench.proof.trace.trace`: per tensor, the bytes requested and the distinct bytes, how many
  times each element was read or written, the launches and the eager torch work around them,
  and the issue's structural targets checked on those numbers.
* The big problem (16384 x 4096 bfloat16), too large for the interpreter: the per-launch,
  per-program, per-tile-slot and per-row bytes are *measured* by running a few programs with the
  exact config the heuristics pick for it (same block, rows per tile and warps, fewer programs
  and tiles), checked on one more run, and extrapolated linearly to the real grid and rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from layernorm_gpu.kernels.heuristics import (
    A100,
    B200,
    BWD_L2_WINDOW_FRACTION,
    BWD_MIN_SM_FRACTION,
    FWD_L2_WINDOW_FRACTION,
    H100,
    NormConfig,
    Target,
    backward_config,
    backward_slice,
    cdiv,
    forward_config,
)
from layernorm_gpu.kernels.registry import ROLES

from ..tables import Table, fmt_bytes
from .bytes_model import H100_BANDWIDTH, ByteCount, bytes_moved, l2_window, loads_from_l2
from .l2 import dram_loaded, lockstep
from .trace import Traffic, require_interpreter, trace

PARAMETER_ROLES = ("weight", "bias")
# How the tables name a role (the others print as they are).
LABELS = {
    "dw_partial": "dW partials",
    "db_partial": "dB partials",
    "c_scratch": "c1/c2 scratch",
    "dw_acc": "dW running sums",
    "db_acc": "dB running sums",
}


@dataclass(frozen=True)
class Case:
    """One norm problem: shape, dtype and which features are on."""

    n_rows: int
    n_cols: int
    dtype: torch.dtype = torch.bfloat16
    is_rms: bool = False
    has_weight: bool = True
    has_bias: bool = True
    fused_residual: bool = False

    @property
    def elem_size(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()

    def describe(self) -> str:
        kind = "RMSNorm" if self.is_rms else "LayerNorm"
        if self.fused_residual:
            kind = f"fused add+{kind}"
        affine = "+".join(n for n, on in (("w", self.has_weight), ("b", self.has_bias)) if on)
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{kind} {dtype} {self.n_rows}x{self.n_cols} affine={affine or 'none'}"

    def byte_model(self, mode: str, target: Target = H100) -> ByteCount:
        """The byte model of ``mode`` (``"fwd"`` / ``"bwd"``) for this problem on ``target``."""
        return bytes_moved(
            mode,
            self.n_rows,
            self.n_cols,
            self.elem_size,
            is_rms=self.is_rms,
            has_weight=self.has_weight,
            has_bias=self.has_bias and not self.is_rms,
            fused_residual=self.fused_residual,
            target=target,
        )

    def loads_from_l2(self, mode: str, target: Target = H100) -> frozenset[str]:
        """Roles whose loads the byte model serves from L2, stored shortly before by the same
        backward (:func:`bench.proof.bytes_model.loads_from_l2`)."""
        gradients = self.has_weight + (self.has_bias and not self.is_rms)
        config = launch_config(mode, self, target)
        return loads_from_l2(mode, config, self.n_cols, gradients, target)


# Small problems for the structural checks: a ragged single-block row with multi-row tiles, the
# fused residual path, a persistent backward (more tiles than the 132 H100 programs) and a
# looped (wide) row with a ragged last chunk.
STRUCTURAL_CASES = (
    Case(48, 1000, torch.bfloat16),
    Case(48, 1000, torch.float16, is_rms=True, has_bias=False, fused_residual=True),
    Case(600, 1000, torch.bfloat16),
    Case(3, 20000, torch.float32),
)
# The big problem and its targets (total over minimum).
BIG_CASE = Case(16384, 4096, torch.bfloat16)
BIG_TARGETS = {"fwd": 1.01, "bwd": 1.04}


def _inputs(case: Case, requires_grad: bool) -> dict[str, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        t = torch.randn(*shape, generator=generator).to(case.dtype)
        return t.requires_grad_(requires_grad)

    return {
        "x": rand(case.n_rows, case.n_cols),
        "residual": rand(case.n_rows, case.n_cols) if case.fused_residual else None,
        "weight": rand(case.n_cols) if case.has_weight else None,
        "bias": rand(case.n_cols) if case.has_bias and not case.is_rms else None,
    }


def _forward(case: Case, t: dict[str, torch.Tensor | None]) -> list[torch.Tensor]:
    import layernorm_gpu as lg

    shape = (case.n_cols,)
    if case.fused_residual and case.is_rms:
        return list(
            lg.fused_add_rms_norm(t["x"], t["residual"], shape, t["weight"], backend="triton")
        )
    if case.fused_residual:
        return list(
            lg.fused_add_layer_norm(
                t["x"], t["residual"], shape, t["weight"], t["bias"], backend="triton"
            )
        )
    if case.is_rms:
        return [lg.rms_norm(t["x"], shape, t["weight"], backend="triton")]
    return [lg.layer_norm(t["x"], shape, t["weight"], t["bias"], backend="triton")]


def op_traffic(case: Case) -> tuple[Traffic, Traffic]:
    """Trace the forward and the backward (gradients for x, residual, weight, bias; through y
    and, when fused, h) of ``case`` through the public API."""
    tensors = _inputs(case, requires_grad=True)
    outputs: list[torch.Tensor] = []
    fwd = trace(lambda: outputs.extend(_forward(case, tensors)))
    grads = [torch.randn_like(o) for o in outputs]
    bwd = trace(lambda: torch.autograd.backward(outputs, grads))
    return fwd, bwd


@dataclass(frozen=True)
class Check:
    """One structural target: what, whether it holds, and the measured numbers."""

    name: str
    passed: bool
    detail: str


def _moved_once(phase: str, traffic: Traffic, role: str, nbytes: int, stored: bool) -> Check:
    """Every element of ``role`` loaded (``stored``: stored), each exactly once."""
    t = traffic.get(role)
    moved, distinct, per_element = (
        (t.stored, t.distinct_stored, t.stores_per_element)
        if stored
        else (t.loaded, t.distinct_loaded, t.loads_per_element)
    )
    verb = "written" if stored else "read"
    return Check(
        f"{phase}: {role} {verb} once",
        distinct == nbytes == moved and set(per_element) == {1},
        f"{'stored' if stored else 'loaded'} {moved} of {nbytes} B; "
        f"{'stores' if stored else 'loads'}/element {per_element}",
    )


def structural_checks(case: Case, fwd: Traffic, bwd: Traffic, target: Target = H100) -> list[Check]:
    """The issue's structural targets on measured traffic. Rows wider than a single block are
    read more than once by design (the looped kernels walk a row twice, and the backward's
    bands are summed by columns in between: the second and third reads come from L2); for them
    launch counts, the scratch the dW/dB sums take and attribution are checked."""
    tile = case.n_rows * case.n_cols
    es = case.elem_size
    bwd_cfg = launch_config("bwd", case, target)
    checks = [
        Check(
            "forward: 1 Triton launch",
            len(fwd.launches) == 1,
            ", ".join(f"{lc.kernel}{lc.grid}" for lc in fwd.launches),
        ),
        Check(
            "backward: <= 2 Triton launches",
            len(bwd.launches) <= 2,
            ", ".join(f"{lc.kernel}{lc.grid}" for lc in bwd.launches),
        ),
    ]
    if not bwd_cfg.single_block and not bwd_cfg.columns:
        checks.append(
            Check(
                "backward in bands: 1 Triton launch (it stores dW/dB itself)",
                len(bwd.launches) == 1,
                ", ".join(f"{lc.kernel}{lc.grid}" for lc in bwd.launches),
            )
        )
    # the single-block backward's partial rows: one per program, at most one program per SM
    for role in ("dw_partial", "db_partial"):
        shapes = [lc.shapes[role] for lc in bwd.launches if role in lc.shapes]
        if shapes:
            rows = shapes[0][0]
            checks.append(
                Check(
                    f"{LABELS[role]} <= SM count x N",
                    rows <= target.sm_count,
                    f"{shapes[0]} float32 ({target.sm_count} SMs)",
                )
            )
    # the looped backward's running dW/dB sums: one N-wide row in all, however many programs
    for role in ("dw_acc", "db_acc"):
        shapes = [lc.shapes[role] for lc in bwd.launches if role in lc.shapes]
        if shapes:
            checks.append(
                Check(
                    f"{LABELS[role]}: one N-wide float32 row",
                    all(shape == (case.n_cols,) for shape in shapes),
                    f"{shapes[0]} float32 (N = {case.n_cols})",
                )
            )
    for phase, traced in (("forward", fwd), ("backward", bwd)):
        checks.append(
            Check(
                f"{phase}: no eager torch kernels",
                not traced.eager,
                ", ".join(op.name for op in traced.eager) or "none",
            )
        )
    checks.append(
        Check(
            "every access attributed to a tensor",
            fwd.unattributed_bytes == bwd.unattributed_bytes == 0,
            f"{fwd.unattributed_bytes} + {bwd.unattributed_bytes} B unattributed",
        )
    )
    if launch_config("fwd", case, target).single_block:
        checks.append(_moved_once("forward", fwd, "x", tile * es, stored=False))
        if case.fused_residual:
            checks.append(_moved_once("forward", fwd, "residual", tile * es, stored=False))
            checks.append(_moved_once("forward", fwd, "h", tile * es, stored=True))
        checks.append(_moved_once("forward", fwd, "y", tile * es, stored=True))
    if bwd_cfg.single_block:
        x_es = fwd.get("h").nbytes // tile if case.fused_residual else es
        checks.append(_moved_once("backward", bwd, "x", tile * x_es, stored=False))
        checks.append(_moved_once("backward", bwd, "dy", tile * es, stored=False))
        if case.fused_residual:
            checks.append(_moved_once("backward", bwd, "dh", tile * x_es, stored=False))
        checks.append(_moved_once("backward", bwd, "dx", tile * x_es, stored=True))
    return checks


def _traffic_table(
    title: str, traffic: Traffic, minimum: int, from_l2: frozenset[str] = frozenset()
) -> Table:
    """Per-tensor bytes, then totals and ratios to ``minimum``; the DRAM model counts each
    address once, and no loads of the ``from_l2`` roles (stored shortly before: served by L2)."""
    table = Table(title, ["tensor", "size", "DRAM model", "requested", "loads/elem", "stores/elem"])
    dram = requested = 0
    rereads = 0
    for role, t in sorted(traffic.tensors.items(), key=lambda kv: ROLES.index(kv[0])):
        distinct = t.distinct_stored + (0 if role in from_l2 else t.distinct_loaded)
        asked = t.loaded + t.stored
        if role in PARAMETER_ROLES:
            rereads += t.loaded - t.distinct_loaded
        dram += distinct
        requested += asked
        table.add(
            LABELS.get(role, role),
            fmt_bytes(t.nbytes),
            fmt_bytes(distinct),
            fmt_bytes(asked),
            _hist(t.loads_per_element),
            _hist(t.stores_per_element),
        )
    for op in traffic.eager:
        table.add(
            f"eager {op.name} ({op.kind})", "", fmt_bytes(op.bytes), fmt_bytes(op.bytes), "", ""
        )
    dram += traffic.eager_bytes
    requested += traffic.eager_bytes
    table.add("weight/bias re-reads (L2 hits)", "", "", fmt_bytes(rereads), "", "")
    table.add("minimum", "", fmt_bytes(minimum), fmt_bytes(minimum), "", "")
    table.add("total", "", fmt_bytes(dram), fmt_bytes(requested), "", "")
    table.add("total / minimum", "", f"{dram / minimum:.4f}", f"{requested / minimum:.4f}", "", "")
    launches = ", ".join(f"{lc.kernel} grid={lc.grid[0]}" for lc in traffic.launches)
    table.notes.append(f"Triton launches: {len(traffic.launches)} ({launches})")
    if traffic.eager:
        table.notes.append(
            "eager torch work between launches: "
            + ", ".join(f"{op.name} {fmt_bytes(op.bytes)}" for op in traffic.eager)
        )
    return table


def _hist(histogram: dict[int, int]) -> str:
    return " ".join(f"{times}x:{n}" for times, n in sorted(histogram.items()))


def structural_tables(cases: tuple[Case, ...] = STRUCTURAL_CASES) -> tuple[list[Table], bool]:
    """One traffic table per case and direction, and one table of checks; all checks pass?"""
    require_interpreter()
    tables = []
    checks_table = Table(
        "Structural targets (measured in the interpreter)", ["case", "target", "result", "measured"]
    )
    all_passed = True
    for case in cases:
        fwd, bwd = op_traffic(case)
        tables.append(
            _traffic_table(
                f"Forward traffic: {case.describe()}", fwd, case.byte_model("fwd").minimum
            )
        )
        tables.append(
            _traffic_table(
                f"Backward traffic: {case.describe()}",
                bwd,
                case.byte_model("bwd").minimum,
                case.loads_from_l2("bwd"),
            )
        )
        for check in structural_checks(case, fwd, bwd):
            all_passed &= check.passed
            checks_table.add(
                case.describe(), check.name, "PASS" if check.passed else "FAIL", check.detail
            )
    tables.append(checks_table)
    return tables, all_passed


# --- the big problem: measured per-unit bytes, extrapolated --------------------------------

# (programs, tiles per program, rows as a multiple of rows_per_tile): four runs fit
# bytes = a + b*programs + c*tile_slots + d*rows per tensor; the fifth checks the fit.
_CALIBRATION = ((1, 1, 1), (2, 1, 2), (1, 2, 2), (2, 2, 3))
_VALIDATION = (3, 2, 5)
_METRICS = ("loaded", "stored", "distinct_loaded", "distinct_stored")


def launcher_traffic(mode: str, case: Case, cfg: NormConfig, n_rows: int) -> Traffic:
    """Trace the launcher of ``mode`` alone (no autograd, random statistics) on ``n_rows`` rows
    of ``case`` with launch config ``cfg``."""
    from layernorm_gpu.kernels import norm_bwd, norm_fwd

    require_interpreter()
    t = _inputs(replace(case, n_rows=n_rows), requires_grad=False)
    if mode == "fwd":
        return trace(
            lambda: norm_fwd(
                t["x"],
                t["residual"],
                t["weight"],
                t["bias"],
                n_norm_dims=1,
                eps=1e-5,
                is_rms=case.is_rms,
                h_dtype=case.dtype if case.fused_residual else None,
                config=cfg,
            )
        )
    dy = torch.randn(n_rows, case.n_cols).to(case.dtype)
    dh = dy.clone() if case.fused_residual else None
    mean = torch.zeros(0 if case.is_rms else n_rows)  # RMSNorm: the forward's empty mean
    rstd = torch.ones(n_rows)
    return trace(
        lambda: norm_bwd(
            dy,
            t["x"],
            t["weight"],
            mean,
            rstd,
            dh,
            n_norm_dims=1,
            is_rms=case.is_rms,
            dweight_dtype=case.dtype if case.has_weight else None,
            dbias_dtype=case.dtype if t["bias"] is not None else None,
            config=cfg,
        )
    )


def _features(cfg: NormConfig, n_rows: int) -> list[int]:
    return [1, cfg.grid, cfg.grid * cfg.tiles_per_program, n_rows]


def _measurements(traffic: Traffic) -> dict[tuple[str, str], int]:
    values = {(role, m): getattr(t, m) for role, t in traffic.tensors.items() for m in _METRICS}
    values[("eager", "bytes")] = traffic.eager_bytes
    return values


@dataclass(frozen=True)
class Extrapolation:
    """Bytes of the big problem per (tensor, metric), from measured per-unit costs."""

    mode: str
    config: NormConfig
    bytes: dict[tuple[str, str], float]
    validated: bool
    from_l2: frozenset[str] = frozenset()  # roles whose loads the DRAM model serves from L2

    def total(self, distinct: bool) -> float:
        """Distinct (DRAM model: no loads of the ``from_l2`` roles) or requested bytes of every
        tensor, plus the eager work."""
        if not distinct:
            keys = ("loaded", "stored")
            return sum(v for (role, m), v in self.bytes.items() if m in keys or role == "eager")
        return sum(
            v
            for (role, m), v in self.bytes.items()
            if m == "distinct_stored"
            or (m == "distinct_loaded" and role not in self.from_l2)
            or role == "eager"
        )


def launch_config(mode: str, case: Case, target: Target = H100) -> NormConfig:
    """The config the launcher of ``mode`` picks for ``case`` on ``target``."""
    if mode == "fwd":
        fused = case.elem_size if case.fused_residual else 0
        return forward_config(
            case.n_rows,
            case.n_cols,
            case.elem_size,
            target,
            residual_elem_size=fused,
            h_elem_size=fused,
        )
    return backward_config(
        case.n_rows,
        case.n_cols,
        case.elem_size,
        target,
        loaded_bytes=case.elem_size * (3 if case.fused_residual else 2),
        column_bytes=case.elem_size if case.has_weight else 0,
    )


def extrapolate(mode: str, case: Case = BIG_CASE, target: Target = H100) -> Extrapolation:
    """Measure the per-unit bytes of ``case``'s real config and extrapolate to its full size."""
    real = launch_config(mode, case, target)
    runs = []
    for programs, tiles, row_tiles in (*_CALIBRATION, _VALIDATION):
        cfg = replace(real, grid=programs, tiles_per_program=tiles)
        n_rows = row_tiles * real.rows_per_tile
        traffic = launcher_traffic(mode, case, cfg, n_rows)
        runs.append((_features(cfg, n_rows), _measurements(traffic)))
    keys = sorted(set().union(*(m for _, m in runs)))
    design = np.array([f for f, _ in runs[:4]], dtype=float)
    observed = np.array([[m.get(k, 0) for k in keys] for _, m in runs[:4]], dtype=float)
    per_unit = np.linalg.solve(design, observed)
    check_features, check_values = runs[4]
    predicted = np.array(check_features, dtype=float) @ per_unit
    validated = bool(
        np.allclose(predicted, [check_values.get(k, 0) for k in keys], rtol=0, atol=0.5)
    )
    full = np.array(_features(real, case.n_rows), dtype=float) @ per_unit
    return Extrapolation(
        mode,
        real,
        dict(zip(keys, full.tolist(), strict=True)),
        validated,
        case.loads_from_l2(mode, target),
    )


def big_shape_table(case: Case = BIG_CASE) -> tuple[Table, bool]:
    """The big problem's forward and backward totals against the issue's targets."""
    table = Table(
        f"Big problem: {case.describe()} on H100 (measured per unit, extrapolated)",
        [
            "op",
            "config",
            "minimum",
            "DRAM model (measured)",
            "ratio",
            "target",
            "requested",
            "byte model",
            "H100 time @3.0 TB/s",
        ],
    )
    ok = True
    for mode in ("fwd", "bwd"):
        ex = extrapolate(mode, case)
        model = case.byte_model(mode)
        dram = ex.total(distinct=True)
        ratio = dram / model.minimum
        ok &= ex.validated and ratio <= BIG_TARGETS[mode]
        c = ex.config
        table.add(
            mode,
            f"block {c.block_n} x {c.rows_per_tile} rows, {c.num_warps} warps, "
            f"grid {c.grid} x {c.tiles_per_program} tiles",
            fmt_bytes(model.minimum),
            fmt_bytes(dram),
            f"{ratio:.4f}",
            f"<= {BIG_TARGETS[mode]}",
            f"{ex.total(distinct=False) / model.minimum:.4f}",
            f"{model.ratio:.4f}",
            f"{model.seconds() * 1e6:.0f} us",
        )
        if not ex.validated:
            table.notes.append(f"{mode}: the linear fit did not reproduce the validation run")
    table.notes += [
        "Per-launch, per-program, per-tile-slot and per-row bytes measured in the interpreter on "
        f"runs of 1-3 programs with the real block/rows/warps, fitted exactly (a 5th run "
        f"{_VALIDATION} checks the fit) and extrapolated to the real grid and "
        f"{case.n_rows} rows; the byte model (bench/proof/bytes_model.py) is shown for "
        "comparison.",
        "DRAM model: distinct bytes per tensor (weight/bias re-reads served by L2), plus eager "
        "fills; the partial rows' loads are served by L2 too where all of them fit in "
        f"{BWD_L2_WINDOW_FRACTION:.0%} of it, as in the byte model (they are the last thing "
        "every program stores, and the partial sum runs right after); requested: every "
        "load/store the SMs issue, over the minimum.",
    ]
    return table, ok


def prediction_table(n_rows: int = 16384, dtype: torch.dtype = torch.bfloat16) -> Table:
    """Byte-model totals and predicted H100 times over the benchmark's hidden sizes."""
    table = Table(
        f"Byte model: LayerNorm {str(dtype).removeprefix('torch.')} x {n_rows} rows, "
        "predicted H100 time at 3.0 TB/s",
        ["N", "fwd bytes", "fwd ratio", "fwd time", "bwd bytes", "bwd ratio", "bwd time"],
    )
    for n_cols in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144):
        case = Case(n_rows, n_cols, dtype)
        f, b = case.byte_model("fwd"), case.byte_model("bwd")
        table.add(
            n_cols,
            fmt_bytes(f.total),
            f"{f.ratio:.3f}",
            f"{f.seconds(H100_BANDWIDTH) * 1e6:.1f} us",
            fmt_bytes(b.total),
            f"{b.ratio:.3f}",
            f"{b.seconds(H100_BANDWIDTH) * 1e6:.1f} us",
        )
    table.notes.append(
        "ratio: modelled DRAM bytes over the minimum (x+y forward, x+dy+dx backward); rows "
        "above 16384 (forward) / 8192 (backward) are looped, their later reads served by L2 "
        "where the rows in flight fit its window (the widths table), and the widest backward "
        "(262144) runs column-parallel: x and dy read twice."
    )
    return table


# --- one read at every width: the L2 window ------------------------------------------------

# Row tensors the kernels read from their caller, whose later reads (looped kernels) must come
# from L2; and the fused forward's h, which its first pass stores and its second reads back.
ROW_INPUTS = ("x", "residual", "dy", "dh")
ROW_LOADS = (*ROW_INPUTS, "h")
# Every width the heuristics must serve with one DRAM read of x and dy, per GPU (the widest:
# 131072 on A100 / H100, 262144 on B200), each at M x N = 2**26 elements for the byte targets.
WIDTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)
WINDOW_ELEMENTS = 2**26
WINDOW_TARGETS = (A100, H100, B200)


# The scaled-down launch the L2 model traces for a looped config: at most this many programs,
# tiles per program (bands, in the backward: the second's rows evict the first's, as every
# later band's do) and chunks per row, chunks of this many bytes of x (256 16-bit columns), so
# that the launch runs in the interpreter in a second or two. (Three bands instead of two
# changed no read count by more than 0.04 at any L2 size, in a sweep of the 131072-column
# launches on an H100 from 40% to 100% of its L2.)
TRACED_PROGRAMS = 8
TRACED_TILES = 2
TRACED_CHUNKS = 4
TRACED_CHUNK_BYTES = 512
# Tensors a looped launch reads or writes by column (the same N elements for every row): their
# bytes scale with the row width only, not with the programs.
COLUMN_ROLES = ("weight", "bias", "dw_acc", "db_acc", "dweight", "dbias")


def traced_launch(real: NormConfig, n_cols: int, elem_size: int) -> tuple[NormConfig, int, int]:
    """``(config, n_rows, n_cols)``: the scaled-down launch of the looped config ``real`` (rows
    of ``n_cols`` elements of ``elem_size`` bytes) that :func:`window_check` traces: the same
    kernel, rows per tile and order of work (bands of one tile per program, each summed by
    slices of columns, in the backward), on at most TRACED_PROGRAMS programs, TRACED_TILES tiles
    each and rows of TRACED_CHUNKS chunks of TRACED_CHUNK_BYTES; a config already that small is
    traced as it is."""
    grid = min(real.grid, TRACED_PROGRAMS)
    tiles = min(real.tiles_per_program, TRACED_TILES)
    block_n = min(real.block_n, TRACED_CHUNK_BYTES // elem_size)
    cols = min(n_cols, block_n * min(cdiv(n_cols, real.block_n), TRACED_CHUNKS))
    cfg = replace(real, grid=grid, tiles_per_program=tiles, block_n=block_n, slice_block=0)
    return cfg, grid * tiles * real.rows_per_tile, cols


@dataclass(frozen=True)
class WindowCheck:
    """A looped launch's reads of its row tensors through the one L2 of its GPU
    (:mod:`bench.proof.l2`), measured on a scaled-down launch (:func:`traced_launch`)."""

    mode: str
    case: Case
    target: Target
    config: NormConfig  # the real launch
    traced: NormConfig  # the launch traced, on traced_cols columns
    traced_cols: int
    cache_bytes: int  # the L2 scaled to the traced launch
    distinct: dict[str, int]  # bytes (32-byte sectors) each row input loads, counted once
    from_dram: dict[str, int]  # bytes each row tensor (inputs, and h) loads from DRAM

    @property
    def reads(self) -> float:
        """DRAM reads per element of the row inputs (1.0: each read once, and h, where the
        fused forward reads it back, served by L2)."""
        return sum(self.from_dram.values()) / max(1, sum(self.distinct.values()))


def window_check(
    mode: str, case: Case, target: Target = H100, config: NormConfig | None = None
) -> WindowCheck:
    """Trace every program of a scaled-down launch of ``case``'s looped config on ``target``
    (or of ``config``: :func:`traced_launch`), interleave their accesses in lockstep and replay
    them through one LRU cache: the L2 scaled so that it holds the traced launch's column
    vectors (weight, bias, the dW/dB running sums: N-wide, the same for every program) and,
    besides them, the same multiple of the traced rows in flight (:func:`l2_window`) as the
    real L2 holds of the real ones. Column-parallel and single-block configs raise ValueError
    (the former reads x and dy twice by construction, the latter once)."""
    real = config or launch_config(mode, case, target)
    if real.single_block or real.columns:
        raise ValueError(f"window_check takes a looped config in bands or rows, got {real}")
    cfg, n_rows, n_cols = traced_launch(real, case.n_cols, case.elem_size)
    traffic = launcher_traffic(mode, replace(case, n_cols=n_cols), cfg, n_rows)
    # the traced rows in flight over the real ones (the same bytes per column in both)
    scale = l2_window(cfg, n_cols) / l2_window(real, case.n_cols)
    per_column = sum(traffic.get(r).nbytes for r in COLUMN_ROLES) / n_cols
    free = target.l2_bytes - per_column * case.n_cols  # the real L2 less its column vectors
    cache = int(free * scale + per_column * n_cols)
    from_dram, distinct = dram_loaded(lockstep(traffic.sequence), cache)
    return WindowCheck(
        mode,
        case,
        target,
        real,
        cfg,
        n_cols,
        cache,
        {r: distinct[r] for r in ROW_INPUTS if r in distinct},
        {r: from_dram[r] for r in ROW_LOADS if r in from_dram},
    )


def widest_read_once(target: Target) -> int:
    """The widest row the issue wants read from DRAM once on ``target``: 131072 columns, 262144
    on GPUs with at least 100 MiB of L2 (B200)."""
    return 262144 if target.l2_bytes >= 100 * 2**20 else 131072


# Byte-model terms that read x and dy (h and dy when fused) again: a second or third read.
REREAD_TERMS = ("pass-2 re-read", "band re-read")


def _fill(mode: str, case: Case, c: NormConfig, target: Target) -> float | None:
    """The share of L2 a launch's window takes: the rows in flight between a row's reads
    (:func:`l2_window`); None where there is none (single block, column-parallel)."""
    if c.single_block or c.columns:
        return None
    loaded = 1 if mode == "fwd" else 2 + case.fused_residual
    return l2_window(c, case.n_cols * case.elem_size * loaded) / target.l2_bytes


def _config(mode: str, case: Case, c: NormConfig) -> str:
    """The widths table's description of a launch config."""
    shape = f"{c.rows_per_tile}x{c.block_n}{'' if c.single_block else ' loop'}"
    config = f"{shape}, grid {c.grid}, {c.num_stages} stages"
    if c.columns:
        col = c.columns
        return (
            f"{shape} c1/c2, grid {c.grid}, {c.num_stages} stages; then columns "
            f"{col.rows_per_tile}x{col.block_n}, grid {col.grid}, {col.num_stages} stages"
        )
    if mode == "bwd" and not c.single_block:
        slice_n = backward_slice(case.n_cols, c.grid, case.elem_size, c.slice_block)[0]
        config += f", bands of {c.grid * c.rows_per_tile} rows, slices of {slice_n} cols"
    return config


def widths_table(
    targets: tuple[Target, ...] = (H100,),
    widths: tuple[int, ...] = WIDTHS,
    trace: Literal["none", "fullest", "all"] = "none",
) -> tuple[Table, bool]:
    """Per width (bf16 LayerNorm, M x N = 2**26), target and op: the config, how many times x
    and dy come from DRAM, and the bytes over the minimum (the byte model, whose looped rows are
    re-read from DRAM when their L2 window does not fit). ``trace``: the looped launches whose
    reads are measured too (a scaled-down launch, all its programs, replayed through one L2:
    :func:`window_check`): none, per target and op the one whose window fills the most of L2
    among the judged widths, or all."""
    table = Table(
        "One read at every width: bf16 LayerNorm, M x N = 2**26 (L2 window model)",
        ["N", "GPU", "op", "config", "L2 window", "x/dy reads", "bytes / minimum", "result"],
    )
    cases = [Case(WINDOW_ELEMENTS // n_cols, n_cols, torch.bfloat16) for n_cols in widths]
    traced = set()
    for target in targets:
        for mode in ("fwd", "bwd"):
            windows = {
                case.n_cols: _fill(mode, case, launch_config(mode, case, target), target)
                for case in cases
                if trace == "all" or case.n_cols <= widest_read_once(target)
            }
            looped = {n: fill for n, fill in windows.items() if fill is not None}
            if trace == "all":
                traced |= {(target, mode, n) for n in looped}
            elif trace == "fullest" and looped:
                traced.add((target, mode, max(looped, key=lambda n: (looped[n], n))))
    ok = True
    for case in cases:
        n_cols = case.n_cols
        for target in targets:
            for mode in ("fwd", "bwd"):
                model = case.byte_model(mode, target)
                c = launch_config(mode, case, target)
                loaded = model.terms["x read"] + model.terms.get("dy read", 0)
                reads = 1 + sum(model.terms.get(t, 0) for t in REREAD_TERMS) / loaded
                measured = ""
                if (target, mode, n_cols) in traced:
                    check = window_check(mode, case, target)
                    measured = f" (traced {check.reads:.2f})"
                    reads = max(reads, round(check.reads, 2))
                judged = n_cols <= widest_read_once(target)
                passed = reads <= 1.001 and model.ratio <= BIG_TARGETS[mode]
                ok &= passed or not judged
                fill = _fill(mode, case, c, target)
                window = "none: column-parallel" if c.columns else ""
                table.add(
                    n_cols,
                    target.name,
                    mode,
                    _config(mode, case, c),
                    window if fill is None else f"{fill:.0%} of L2",
                    f"{reads:g}{measured}",
                    f"{model.ratio:.4f}",
                    ("PASS" if passed else "MISS") if judged else "(reported)",
                )
    table.notes += [
        "L2 window: the rows in flight between a row's reads in a looped launch, over the L2 "
        "size: the forward's resident programs' rows (one per program); the backward's band "
        "(x and dy of one row per program). x/dy reads: DRAM reads per element of x and dy by "
        "the byte model, which counts a re-read from L2 where the window fits the heuristics' "
        f"share of L2 ({FWD_L2_WINDOW_FRACTION:.0%} forward, {BWD_L2_WINDOW_FRACTION:.0%} "
        "backward: the y or dx written meanwhile takes room too)"
        + {
            "none": ".",
            "fullest": "; traced (per GPU and op, the judged launch whose window fills the most "
            "of L2): ",
            "all": "; traced (every looped launch): ",
        }[trace]
        + (
            ""
            if trace == "none"
            else "a scaled-down launch, every program, replayed in lockstep through one LRU "
            "cache of the L2 scaled to it (bench/proof/l2.py); the larger count is shown."
        ),
        f"bytes / minimum: targets fwd <= {BIG_TARGETS['fwd']}, bwd <= {BIG_TARGETS['bwd']}; "
        "widths past 131072 (262144 on GPUs with >= 100 MiB of L2) are reported, not judged.",
        "Backward up to 8192 columns (one block per row): every program sums dW/dB of its rows "
        "in registers and stores one float32 partial row per gradient (grid x N x 8 bytes, "
        "written once; the partial sum reads them back from L2 where they fit in "
        f"{BWD_L2_WINDOW_FRACTION:.0%} of it).",
        "Backward past 8192 columns (looped, in bands): program p reads row b x grid + p of band "
        "b for its c1, c2 (x and dy from DRAM), then sums dW/dB over the band's rows for its "
        "own slice of columns and walks its row again for dx (both from L2), so the band must "
        "fit the window; where one row per SM does not, the grid drops to as few as fit (down to "
        f"{BWD_MIN_SM_FRACTION:.0%} of the SMs, with deeper pipelines). No partial rows: each "
        "program keeps its slice's running float32 sums in registers across bands (a scratch "
        "row where a slice is wider than one tile) and stores dW/dB itself, in the same launch.",
        "Column-parallel (where not even that band fits): the looped kernel computes c1, c2 "
        "(x and dy read once), then a launch over blocks of columns re-reads x and dy for dx "
        "and sums dW/dB in registers: 10 bytes per 16-bit element against the minimum's 6 "
        "(1.67x).",
    ]
    return table, ok
