"""How many bytes one forward or backward of the norm must move, and how many ours moves.

The norms are memory-bound: a row of N elements costs ~10 flops per element, far below the
H100's ~100 flops/byte balance point, so the time of a large launch is its DRAM traffic over the
bandwidth. :func:`bytes_moved` counts that traffic term by term for the launch configuration the
heuristics pick (the backward's partial-buffer size depends on its grid), in a DRAM model:

* every tensor element is fetched from DRAM once per pass that reads it, except that a looped
  launch's second pass over a row is served by L2 when the rows every resident program holds
  between its two passes (and the backward's partial rows) fit in L2 (:func:`l2_window`; the
  traffic report replays the traced accesses through an LRU cache to check it);
* ``weight`` and ``bias`` are fetched once: every program re-reads them, but they are N elements
  that stay in L2 (the traffic report lists those L2 re-reads on their own line);
* ``mean`` / ``rstd`` / partial sums are float32.

``minimum`` is the traffic no implementation can avoid: read x and write y (plus read residual
and write h when fused) forward; read x and dy and write dx (plus read dh when fused) backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from layernorm_gpu.kernels.heuristics import (
    H100,
    NormConfig,
    Target,
    backward_config,
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
            x (or h) re-read, pass 2          M*N*es (looped rows only)

        backward (``x`` is the norm's input: h when fused)::

            x read, dy read, dh read          M*N*(x_es, es, h_es)
            weight read                       N*w_es
            mean read (LayerNorm), rstd read  M*4 each
            dx write                          M*N*x_es
            dW/dB partials write + read       grid*N*4 each, twice (written, summed; not
                                              when column-parallel)
            dW/dB write                       N*w_es each
            x, dy re-read, pass 2             M*N*(x_es + es) (looped rows only; always
                                              when column-parallel: its second launch)
            c1/c2 scratch write + read        2*M*4, twice (looped rows only)
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
        window = cfg.grid * n_cols * (h_es if fused_residual else elem_size)
        if not cfg.single_block and window > target.l2_bytes:
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
    # the column-parallel backward (cfg.columns) sums dW/dB in registers: no partials
    partials = 0 if cfg.columns else cfg.grid * n_cols * FLOAT32
    terms["x read"] = tile * x_es
    terms["dy read"] = tile * elem_size
    if fused_residual:
        terms["dh read"] = tile * h_es
    terms["weight read"] = n_cols * w_es if has_weight else 0
    terms["mean read"] = 0 if is_rms else stats
    terms["rstd read"] = stats
    terms["dx write"] = tile * x_es
    terms["dW partials write+read"] = 2 * partials if has_weight else 0
    terms["dB partials write+read"] = 2 * partials if has_bias else 0
    terms["dW/dB write"] = n_cols * w_es * (has_weight + has_bias)
    if not cfg.single_block:
        # pass 1 reads x and dy; dh is read once, by pass 2 (or the column-parallel launch)
        row = n_cols * (x_es + elem_size + fused_residual * h_es)
        window = l2_window(cfg, row, n_cols * FLOAT32 * (has_weight + has_bias))
        if cfg.columns or window > target.l2_bytes:
            terms["pass-2 re-read"] = tile * (x_es + elem_size)
        terms["c1/c2 scratch"] = 2 * 2 * stats
    minimum = terms["x read"] + terms["dy read"] + terms["dx write"]
    if fused_residual:
        minimum += terms["dh read"]
    return ByteCount(minimum, terms)


def l2_window(cfg: NormConfig, row_bytes: int, partial_bytes: int = 0) -> int:
    """Bytes the resident programs of a looped launch hold between a row's two passes: each of
    the ``cfg.grid`` programs (one wave) a group of ``tiles_per_group`` tiles of rows of
    ``row_bytes`` (what pass 2 re-reads), plus its ``partial_bytes`` of dW/dB partials."""
    rows = cfg.tiles_per_group * cfg.rows_per_tile
    return cfg.grid * (rows * row_bytes + partial_bytes)
