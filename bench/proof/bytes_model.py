"""How many bytes one forward or backward of the norm must move, and how many ours moves.

The norms are memory-bound: a row of N elements costs ~10 flops per element, far below the
H100's ~100 flops/byte balance point, so the time of a large launch is its DRAM traffic over the
bandwidth. :func:`bytes_moved` counts that traffic term by term for the launch configuration the
heuristics pick (the backward's grid sets its partial rows and its band), in a DRAM model:

* every tensor element is fetched from DRAM once per pass that reads it, except that a looped
  launch's later reads of a row are served by L2 when the rows in flight between them fit
  (:func:`l2_window`), the heuristics' own rule: the forward's resident programs' rows within
  FWD_L2_WINDOW_FRACTION of L2 (the y written meanwhile takes as much again in 16-bit), the
  backward's band (one tile per program) within BWD_L2_WINDOW_FRACTION (the dx written
  meanwhile takes half a band in 16-bit). The traffic report replays traced launches through
  an LRU cache to check both (:func:`bench.proof.traffic.window_check`);
* ``weight`` and ``bias`` are fetched once: every program re-reads them, but they are N elements
  that stay in L2 (the traffic report lists those L2 re-reads on their own line);
* stores are written back to DRAM once per address (L2 is write-back), and a load of an address
  stored shortly before is served by L2: the single-block backward's partial rows (grid x N
  float32 each, the last thing every program stores, summed by the next launch) are read back
  from L2 when all of them fit in BWD_L2_WINDOW_FRACTION of it (:func:`partials_fit`), else
  from DRAM. The looped backward keeps its running dW/dB sums in registers; only slices wider
  than one tile (grids cut short by few rows) keep them in a float32 scratch row, counted
  written back and read back once;
* ``mean`` / ``rstd`` / partial sums are float32.

``minimum`` is the traffic no implementation can avoid: read x and write y (plus read residual
and write h when fused) forward; read x and dy and write dx (plus read dh when fused) backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from layernorm_gpu.kernels.heuristics import (
    BWD_L2_WINDOW_FRACTION,
    FWD_L2_WINDOW_FRACTION,
    H100,
    NormConfig,
    Target,
    backward_config,
    backward_slice,
    forward_config,
)

FLOAT32 = 4
# H100 SXM HBM3 bandwidth used for predictions: 3.35 TB/s peak, ~3.0 TB/s reached by a large
# device-to-device copy (the measured copy bandwidth replaces it in the GPU benchmark).
H100_BANDWIDTH = 3.0e12


@dataclass(frozen=True)
class ByteCount:
    """Modelled DRAM traffic of one launch sequence, term by term (bytes)."""

    minimum: int
    terms: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    @property
    def ratio(self) -> float:
        """Modelled total over the unavoidable minimum (1.0 is perfect)."""
        return self.total / self.minimum

    def seconds(self, bandwidth: float = H100_BANDWIDTH) -> float:
        """Predicted time at ``bandwidth`` bytes/s."""
        return self.total / bandwidth


def bytes_moved(
    mode: str,
    n_rows: int,
    n_cols: int,
    elem_size: int,
    *,
    is_rms: bool = False,
    has_weight: bool = True,
    has_bias: bool = True,
    fused_residual: bool = False,
    weight_elem_size: int | None = None,
    h_elem_size: int | None = None,
    target: Target = H100,
) -> ByteCount:
    """DRAM bytes of the forward (``mode="fwd"``) or backward (``"bwd"``) of ``n_rows`` rows of
    ``n_cols`` elements, for the launch config the heuristics pick on ``target``.

    Args:
        elem_size: bytes per element of x, y, dy (and residual).
        is_rms: RMSNorm (no mean, no bias) instead of LayerNorm.
        has_weight, has_bias: the affine parameters exist (backward: their gradients are wanted).
        fused_residual: ``h = x + residual`` is fused (forward reads residual and writes h; the
            backward reads h as its input and the gradient ``dh`` of h, and writes dx in h's
            dtype).
        weight_elem_size: bytes per weight/bias element (default ``elem_size``).
        h_elem_size: bytes per element of h (default ``elem_size``).

    Returns:
        The minimum and every term, forward::

            x read, residual read, h write    M*N*(es, es, h_es)
            weight read, bias read            N*w_es each, once (L2-resident)
            y write                           M*N*es
            mean write (LayerNorm), rstd      M*4 each
            x (or h) re-read, pass 2          M*N*es (looped rows, where the L2 window does
                                              not fit)

        backward (``x`` is the norm's input: h when fused)::

            x read, dy read, dh read          M*N*(x_es, es, h_es)
            weight read                       N*w_es
            mean read (LayerNorm), rstd read  M*4 each
            dx write                          M*N*x_es
            dW/dB partials write              grid*N*4 each (single block)
            dW/dB partials read               grid*N*4 each (single block, where the partial
                                              rows do not fit the L2 window: partials_fit)
            dW/dB running sums                N*4 each, written and read once (looped, in bands,
                                              more than one, slices wider than one tile)
            dW/dB write                       N*w_es each
            x, dy band re-read                M*N*(x_es + es) (looped in bands, where a band
                                              does not fit the L2 window)
            x, dy re-read, pass 2             M*N*(x_es + es) (likewise; and always when
                                              column-parallel: its second launch)
            c1/c2 scratch write + read        2*M*4, twice (column-parallel only)
    """
    w_es = weight_elem_size or elem_size
    h_es = h_elem_size or elem_size
    has_bias = has_bias and not is_rms
    tile = n_rows * n_cols
    stats = n_rows * FLOAT32
    terms: dict[str, int] = {}
    if mode == "fwd":
        cfg = forward_config(n_rows, n_cols, elem_size, target)
        terms["x read"] = tile * elem_size
        if fused_residual:
            terms["residual read"] = tile * elem_size
            terms["h write"] = tile * h_es
        terms["weight read"] = n_cols * w_es if has_weight else 0
        terms["bias read"] = n_cols * w_es if has_bias else 0
        terms["y write"] = tile * elem_size
        terms["mean write"] = 0 if is_rms else stats
        terms["rstd write"] = stats
        window = l2_window(cfg, n_cols * (h_es if fused_residual else elem_size))
        if not cfg.single_block and window > FWD_L2_WINDOW_FRACTION * target.l2_bytes:
            terms["pass-2 re-read"] = tile * (h_es if fused_residual else elem_size)
        minimum = terms["x read"] + terms["y write"]
        if fused_residual:
            minimum += terms["residual read"] + terms["h write"]
        return ByteCount(minimum, terms)
    if mode != "bwd":
        raise ValueError(f"mode must be 'fwd' or 'bwd', got {mode!r}")
    x_es = h_es if fused_residual else elem_size
    cfg = backward_config(
        n_rows,
        n_cols,
        elem_size,
        target,
        loaded_bytes=x_es + elem_size + fused_residual * h_es,
        column_bytes=w_es if has_weight else 0,
    )
    terms["x read"] = tile * x_es
    terms["dy read"] = tile * elem_size
    if fused_residual:
        terms["dh read"] = tile * h_es
    terms["weight read"] = n_cols * w_es if has_weight else 0
    terms["mean read"] = 0 if is_rms else stats
    terms["rstd read"] = stats
    terms["dx write"] = tile * x_es
    gradients = has_weight + has_bias
    if cfg.single_block:
        partials = cfg.grid * n_cols * FLOAT32
        terms["dW/dB partials write"] = gradients * partials
        fit = partials_fit(cfg, n_cols, gradients, target)
        terms["dW/dB partials read"] = 0 if fit else gradients * partials
    elif cfg.tiles_per_program > 1 and not (cfg.columns or _sums_in_registers(cfg, n_cols, x_es)):
        # slices wider than one tile keep their running sums in a scratch row, written back and
        # read back once each (a lower bound: a band filling much of L2 evicts the row between
        # two bands); one-tile slices keep them in registers, and one band never needs them
        terms["dW/dB running sums"] = 2 * gradients * n_cols * FLOAT32
    terms["dW/dB write"] = n_cols * w_es * gradients
    if not cfg.single_block:
        # x and dy are read by pass 1 (then the band's column sums and pass 2 re-read them); dh
        # is read once, by pass 2 (or the column-parallel launch)
        row = n_cols * (x_es + elem_size + fused_residual * h_es)
        rows = tile * (x_es + elem_size)
        if cfg.columns:
            terms["pass-2 re-read"] = rows
            terms["c1/c2 scratch"] = 2 * 2 * stats
        elif l2_window(cfg, row) > BWD_L2_WINDOW_FRACTION * target.l2_bytes:
            terms["band re-read"] = rows
            terms["pass-2 re-read"] = rows
    minimum = terms["x read"] + terms["dy read"] + terms["dx write"]
    if fused_residual:
        minimum += terms["dh read"]
    return ByteCount(minimum, terms)


def l2_window(cfg: NormConfig, row_bytes: int) -> int:
    """Bytes a looped launch holds in L2 between a row's reads, rows of ``row_bytes`` (what the
    later reads take again): the forward's resident programs (the grid is one wave) each hold
    the row they walk; the backward's band is one tile of rows per program (its column sums and
    its pass 2 re-read the band while the next is not yet read)."""
    return cfg.grid * cfg.rows_per_tile * row_bytes


def partials_fit(cfg: NormConfig, n_cols: int, gradients: int, target: Target = H100) -> bool:
    """Whether the single-block backward's float32 partial rows (``cfg.grid`` rows of ``n_cols``
    per gradient) fit in BWD_L2_WINDOW_FRACTION of L2, so that the partial sum, launched right
    after, reads them from L2 (each program stores its row last, as it finishes)."""
    return cfg.grid * n_cols * FLOAT32 * gradients <= BWD_L2_WINDOW_FRACTION * target.l2_bytes


def loads_from_l2(
    mode: str, cfg: NormConfig, n_cols: int, gradients: int, target: Target = H100
) -> frozenset[str]:
    """Roles whose loads the DRAM model serves from L2 because the launch stored them shortly
    before (their stores are counted instead), for a launch of ``cfg`` computing ``gradients``
    of dW, dB: the single-block backward's partial rows where :func:`partials_fit`."""
    if mode != "bwd":
        return frozenset()
    if cfg.single_block:
        fit = partials_fit(cfg, n_cols, gradients, target)
        return frozenset({"dw_partial", "db_partial"} if fit else ())
    return frozenset()


def _sums_in_registers(cfg: NormConfig, n_cols: int, elem_size: int) -> bool:
    """Whether the looped backward keeps its running dW/dB sums in registers (its slice is one
    tile, :class:`~layernorm_gpu.kernels.heuristics.BandSlice`)."""
    return backward_slice(n_cols, cfg.grid, elem_size, cfg.slice_block, cfg.num_stages).in_registers
