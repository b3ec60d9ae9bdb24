"""CUDA benchmark: LayerNorm forward, backward and forward+backward against the baselines.

Providers: ``layernorm_gpu`` (the Triton kernels), ``torch`` (eager
``torch.nn.functional.layer_norm``), ``torch.compile`` (the same under Inductor), and
``apex``, ``liger`` and ``quack`` when they import. Each (mode, dtype, hidden size) is timed with
``triton.testing.do_bench`` (time-based warm-up and repetitions, L2 cleared before every
repetition, median and 20th/80th percentiles), over a pool of input sets that is rotated call
by call and spans >= 3x the L2, so no call finds its inputs in cache either way.

Bandwidth is effective bandwidth: the unavoidable bytes of the byte model (x + y forward,
x + dy + dx backward, both for forward+backward; the same for every provider) over the median
time, also as a fraction of the device-to-device copy bandwidth measured in the same run.
Results go to a CSV (GPU, versions, git commit, time on every row), one PNG per (mode, dtype)
and a geometric-mean speedup line per baseline. A training-step benchmark (one Llama
layer, forward+backward, transformers' LlamaRMSNorm vs ours) follows.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import itertools
import math
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .proof.bytes_model import bytes_moved
from .tables import Table

if TYPE_CHECKING:
    from .progress import Step

HIDDEN_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144)
QUICK_HIDDEN_SIZES = (1024, 4096, 16384, 262144)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "fwd_bwd")
MAX_ROWS = 16384
# Bytes of x per problem: rows shrink for wide rows so the largest case (262144 columns) fits
# next to its gradients and the baselines' buffers.
BYTES_PER_TENSOR = 1 << 28
QUANTILES = [0.5, 0.2, 0.8]
EPS = 1e-5
OURS = "layernorm_gpu"

Norm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Provider:
    """A LayerNorm implementation: ``make(cols, dtype)`` returns ``norm(x, weight, bias)``
    (or None when it does not support that case); ``backward``: it has a backward."""

    name: str
    make: Callable[[int, torch.dtype], Norm | None]
    backward: bool = True


def _ours(cols: int, dtype: torch.dtype) -> Norm:
    import layernorm_gpu

    return lambda x, w, b: layernorm_gpu.layer_norm(x, (cols,), w, b, EPS, backend="triton")


def _torch(cols: int, dtype: torch.dtype) -> Norm:
    return lambda x, w, b: F.layer_norm(x, (cols,), w, b, EPS)


def _compiled(cols: int, dtype: torch.dtype) -> Norm:
    torch._dynamo.reset()  # one graph per shape: no recompile limit, no dynamic shapes
    fn = torch.compile(F.layer_norm, dynamic=False)
    return lambda x, w, b: fn(x, (cols,), w, b, EPS)


def _apex(cols: int, dtype: torch.dtype) -> Norm:
    from apex.normalization.fused_layer_norm import fused_layer_norm_affine

    return lambda x, w, b: fused_layer_norm_affine(x, w, b, (cols,), EPS)


def _liger(cols: int, dtype: torch.dtype) -> Norm | None:
    from liger_kernel.ops.layer_norm import LigerLayerNormFunction

    if cols > 65536:  # Liger's single-block kernel raises above 64K columns
        return None
    return lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, EPS)


def _quack(cols: int, dtype: torch.dtype) -> Norm:
    """quack's LayerNorm forward (CuTe DSL): float32 weight, no bias; the entry point moved
    between releases, so the first one found is used."""
    for module, name in (
        ("quack.rmsnorm", "layernorm_fwd"),
        ("quack.layernorm", "layernorm"),
        ("quack.layernorm", "_layernorm_fwd"),
    ):
        entry = getattr(importlib.import_module(module), name, None)
        if entry is not None:
            return lambda x, w, b: entry(x.detach(), w.detach().float(), eps=EPS)
    raise ImportError("no quack LayerNorm entry point found")


def available_providers(names: list[str] | None = None) -> list[Provider]:
    """The providers that import here (``names``: keep only these)."""
    candidates = [
        Provider(OURS, _ours),
        Provider("torch", _torch),
        Provider("torch.compile", _compiled),
        Provider("apex", _apex),
        Provider("liger", _liger),
        Provider("quack", _quack, backward=False),
    ]
    modules = {
        "apex": "apex.normalization",
        "liger": "liger_kernel.ops.layer_norm",
        "quack": "quack",
    }
    found = []
    for provider in candidates:
        if names and provider.name not in names:
            continue
        try:
            if provider.name in modules:
                importlib.import_module(modules[provider.name])
        except Exception:  # not installed, or broken for this GPU/toolchain: skip it
            continue
        found.append(provider)
    return found


def rows_for(cols: int, dtype: torch.dtype) -> int:
    """Rows of the problem: MAX_ROWS, fewer when a row is so wide x would pass the budget."""
    elem = torch.empty(0, dtype=dtype).element_size()
    return max(1, min(MAX_ROWS, BYTES_PER_TENSOR // (cols * elem)))


@dataclass
class _InputSet:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    dy: torch.Tensor
    y: torch.Tensor | None = None


def _input_pool(rows: int, cols: int, dtype: torch.dtype, l2_bytes: int) -> list[_InputSet]:
    """Enough independent input sets that cycling through them spans >= 3x the L2."""
    set_bytes = 2 * rows * cols * torch.empty(0, dtype=dtype).element_size()
    count = max(1, math.ceil(3 * l2_bytes / set_bytes))
    pool = []
    for _ in range(count):
        x = (0.5 + torch.randn(rows, cols, device="cuda", dtype=dtype)).requires_grad_()
        weight = torch.randn(cols, device="cuda", dtype=dtype).requires_grad_()
        bias = torch.randn(cols, device="cuda", dtype=dtype).requires_grad_()
        pool.append(_InputSet(x, weight, bias, torch.randn_like(x)))
    return pool


def _timed(mode: str, norm: Norm, pool: list[_InputSet]) -> tuple[Callable[[], None], list]:
    """The callable do_bench times for ``mode`` (each call takes the next input set) and the
    leaves whose gradients it must reset."""
    cycle = itertools.cycle(pool)
    leaves = [t for s in pool for t in (s.x, s.weight, s.bias)]
    if mode == "fwd":

        def forward() -> None:
            s = next(cycle)
            norm(s.x, s.weight, s.bias)

        return forward, []
    if mode == "bwd":
        for s in pool:
            s.y = norm(s.x, s.weight, s.bias)

        def backward() -> None:
            s = next(cycle)
            s.y.backward(s.dy, retain_graph=True)

        return backward, leaves

    def forward_backward() -> None:
        s = next(cycle)
        norm(s.x, s.weight, s.bias).backward(s.dy)

    return forward_backward, leaves


def measure(mode: str, norm: Norm, pool: list[_InputSet]) -> list[float]:
    """(median, p20, p80) milliseconds of ``mode`` with ``triton.testing.do_bench``."""
    from triton.testing import do_bench

    fn, leaves = _timed(mode, norm, pool)
    return do_bench(fn, warmup=25, rep=100, grad_to_none=leaves or None, quantiles=QUANTILES)


def copy_bandwidth(n_bytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write) of an ``n_bytes`` buffer."""
    from triton.testing import do_bench

    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * n_bytes / (ms * 1e-3)


def minimum_bytes(mode: str, rows: int, cols: int, dtype: torch.dtype) -> int:
    """The unavoidable bytes of ``mode`` from the byte model (the same for every provider)."""
    elem = torch.empty(0, dtype=dtype).element_size()
    modes = ("fwd", "bwd") if mode == "fwd_bwd" else (mode,)
    return sum(bytes_moved(m, rows, cols, elem).minimum for m in modes)


@dataclass
class Row:
    """One CSV row."""

    gpu: str
    torch: str
    triton: str
    commit: str
    timestamp: str
    mode: str
    dtype: str
    rows: int
    cols: int
    provider: str
    ms: float
    ms_p20: float
    ms_p80: float
    gbps: float
    copy_fraction: float


def _environment() -> dict[str, str]:
    import triton

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": commit,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def run_sweep(
    providers: list[Provider],
    modes: tuple[str, ...],
    dtypes: list[str],
    hidden: tuple[int, ...],
    copy_bw: float,
    step: Step,
) -> list[Row]:
    """Time every (mode, dtype, hidden size, provider), advancing ``step`` once per case;
    failures are reported and skipped."""
    env = _environment()
    l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    rows_out: list[Row] = []
    cases = [(d, n) for d in dtypes for n in hidden]
    for dtype_name, cols in cases:
        dtype = DTYPES[dtype_name]
        rows = rows_for(cols, dtype)
        pool = _input_pool(rows, cols, dtype, l2_bytes)
        for provider, mode in itertools.product(providers, modes):
            step.advance(f"{provider.name} {mode} {dtype_name} N={cols}")
            if mode != "fwd" and not provider.backward:
                continue
            try:
                norm = provider.make(cols, dtype)
                if norm is None:
                    continue
                ms, p20, p80 = measure(mode, norm, pool)
            except Exception as e:  # one failing provider must not end the sweep
                step.print(
                    f"skipped {provider.name} {mode} {dtype_name} "
                    f"N={cols}: {type(e).__name__}: {e}"[:300]
                )
                continue
            gbps = minimum_bytes(mode, rows, cols, dtype) / (ms * 1e-3) / 1e9
            rows_out.append(
                Row(
                    **env,
                    mode=mode,
                    dtype=dtype_name,
                    rows=rows,
                    cols=cols,
                    provider=provider.name,
                    ms=ms,
                    ms_p20=p20,
                    ms_p80=p80,
                    gbps=gbps,
                    copy_fraction=gbps * 1e9 / copy_bw,
                )
            )
        del pool
        torch.cuda.empty_cache()
    return rows_out


def geomean_speedups(rows: list[Row]) -> dict[str, dict[str, float]]:
    """{baseline: {mode: geometric mean over (dtype, N) of baseline time / our time}}."""
    ours = {(r.mode, r.dtype, r.cols): r.ms for r in rows if r.provider == OURS}
    ratios: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        key = (r.mode, r.dtype, r.cols)
        if r.provider == OURS or key not in ours:
            continue
        ratios.setdefault(r.provider, {}).setdefault(r.mode, []).append(r.ms / ours[key])
    return {
        p: {m: statistics.geometric_mean(v) for m, v in by_mode.items()}
        for p, by_mode in ratios.items()
    }


def write_csv(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def plot(rows: list[Row], copy_bw: float, out_dir: Path) -> list[Path]:
    """One PNG per (mode, dtype): effective GB/s against N, one line per provider."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for mode, dtype in sorted({(r.mode, r.dtype) for r in rows}):
        fig, ax = plt.subplots(figsize=(8, 5))
        selected = [r for r in rows if r.mode == mode and r.dtype == dtype]
        for provider in sorted({r.provider for r in selected}):
            points = sorted((r.cols, r.gbps) for r in selected if r.provider == provider)
            ax.plot(*zip(*points, strict=True), marker="o", label=provider)
        ax.axhline(copy_bw / 1e9, linestyle="--", color="gray", label="device copy")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden size N")
        ax.set_ylabel("effective GB/s (byte-model minimum / median time)")
        ax.set_title(f"LayerNorm {mode} {dtype}, {selected[0].gpu}")
        ax.legend()
        ax.grid(True, alpha=0.3)
        path = out_dir / f"layernorm_{mode}_{dtype}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def training_table(training: list[tuple[int, float, float]]) -> Table:
    table = Table(
        "Training step: one Llama layer forward + backward, bf16, 8 x 1024 tokens",
        ["hidden size", "transformers LlamaRMSNorm", "layernorm_gpu", "speedup"],
    )
    for dim, theirs, ours in training:
        table.add(dim, f"{theirs:.3f} ms", f"{ours:.3f} ms", f"{theirs / ours:.3f}x")
    table.notes.append("speedup: transformers' time / ours; above 1x layernorm_gpu is faster.")
    return table


def training_step(
    dims: tuple[int, ...] = (1024, 4096),
    batch: int = 8,
    seq: int = 1024,
    dtype: torch.dtype = torch.bfloat16,
) -> list[tuple[int, float, float]]:
    """(dim, transformers ms, ours ms) of one forward+backward of a one-layer Llama body
    (:func:`bench.model.tiny_llama` at width ``dim``, heads of 128, SDPA attention) on input
    embeddings, with transformers' ``LlamaRMSNorm`` and with ours; same weights and inputs."""
    import copy

    from triton.testing import do_bench

    import layernorm_gpu
    from bench.model import tiny_llama

    results = []
    for dim in dims:
        reference = tiny_llama(
            hidden_size=dim, num_layers=1, num_heads=dim // 128, attn_implementation="sdpa"
        ).model.to("cuda", dtype)
        ours = layernorm_gpu.replace_norms(copy.deepcopy(reference), backend="triton")
        x = torch.randn(batch, seq, dim, device="cuda", dtype=dtype, requires_grad=True)
        dy = torch.randn_like(x)
        times = []
        for model in (reference, ours):

            def step(model=model, x=x, dy=dy) -> None:
                model(inputs_embeds=x).last_hidden_state.backward(dy)

            times.append(
                do_bench(
                    step,
                    warmup=25,
                    rep=200,
                    grad_to_none=[x, *model.parameters()],
                    return_mode="median",
                )
            )
        results.append((dim, *times))
    return results


def main(argv: list[str] | None = None) -> None:
    """Parse the command line (:func:`add_arguments`) and :func:`run`."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The GPU benchmark's command-line options (shared with ``python -m bench``)."""
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument(
        "--hidden", nargs="+", type=int, default=None, help=f"hidden sizes (default {HIDDEN_SIZES})"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"hidden sizes {QUICK_HIDDEN_SIZES} only"
    )
    parser.add_argument(
        "--providers",
        nargs="+",
        default=None,
        help="keep only these providers (default: every one that imports)",
    )
    parser.add_argument(
        "--save-path", type=Path, default=Path("bench/out"), help="folder for the CSV and PNGs"
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training step")


def header(args: argparse.Namespace, providers: list[Provider], hidden: tuple[int, ...]) -> str:
    """One line: what the benchmark will run on which GPU."""
    names = ", ".join(p.name for p in providers if p.name != OURS)
    train = "" if args.no_train else ", then a transformer-block training step"
    return (
        f"CUDA device {torch.cuda.get_device_name()}: timing layernorm_gpu against {names} "
        f"({', '.join(args.modes)}; {', '.join(args.dtypes)}; {len(hidden)} hidden sizes "
        f"{hidden[0]}-{hidden[-1]}){train}. The no-GPU reports run with --reports."
    )


def run(args: argparse.Namespace) -> None:
    """Run the sweep and the training step for parsed ``args``; write the CSV and plots and
    print the tables."""
    from .cache import triton_cache_dir
    from .progress import Steps
    from .tables import console, print_table

    if not torch.cuda.is_available():
        raise SystemExit(
            "the GPU benchmark needs CUDA; `python -m bench` without CUDA prints the no-GPU reports"
        )
    hidden = tuple(args.hidden or (QUICK_HIDDEN_SIZES if args.quick else HIDDEN_SIZES))
    providers = available_providers(args.providers)
    console().print(header(args, providers, hidden), markup=False)
    console().print()
    steps = Steps(2 if args.no_train else 3)
    with steps.step("Measuring the GPU's copy bandwidth (the reference for GB/s)"):
        copy_bw = copy_bandwidth()
    cases = len(args.dtypes) * len(hidden) * len(providers) * len(args.modes)
    with steps.step("Timing every provider, mode, dtype and hidden size", units=cases) as step:
        rows = run_sweep(providers, tuple(args.modes), args.dtypes, hidden, copy_bw, step)
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    csv_path = args.save_path / f"layernorm_{stamp}.csv"
    write_csv(rows, csv_path)
    pngs = plot(rows, copy_bw, args.save_path)

    table = Table(
        f"LayerNorm on {torch.cuda.get_device_name()} (copy bandwidth {copy_bw / 1e9:.0f} GB/s)",
        ["mode", "dtype", "N", "rows", "provider", "median ms", "GB/s", "of copy"],
    )
    for r in rows:
        table.add(
            r.mode,
            r.dtype,
            r.cols,
            r.rows,
            r.provider,
            f"{r.ms:.4f}",
            f"{r.gbps:.0f}",
            f"{r.copy_fraction:.0%}",
        )
    table.notes += [
        "fwd: forward; bwd: backward alone; fwd_bwd: both. N: the hidden size (the normalized "
        "width). GB/s: the bytes any implementation must move (x + y forward, x + dy + dx "
        "backward) over the median time; of copy: that as a share of a plain tensor copy on "
        "this GPU (100% = as fast as copying the data once).",
        f"CSV: {csv_path}",
        "plots: " + ", ".join(str(p) for p in pngs),
    ]
    print_table(table)

    speedups = Table(
        "Speed of layernorm_gpu against each baseline (geometric mean over dtypes and sizes)",
        ["baseline", *args.modes, "verdict"],
    )
    for baseline, by_mode in geomean_speedups(rows).items():
        slower = [m for m in args.modes if by_mode.get(m, math.inf) < 1]
        speedups.add(
            baseline,
            *(f"{by_mode[m]:.2f}x" if m in by_mode else "-" for m in args.modes),
            f"slower in {', '.join(slower)}" if slower else "faster in every mode",
        )
    speedups.notes.append(
        "baseline time / layernorm_gpu time: above 1.00x layernorm_gpu is faster. "
        "No pass/fail target on a GPU: these are the measurements the no-GPU reports predict."
    )
    print_table(speedups)

    if not args.no_train:
        with steps.step("Training step: a transformer block with torch's and our LayerNorm"):
            results = training_step()
        print_table(training_table(results))
    console().print(
        f"Written: {csv_path} and {len(pngs)} plots in {args.save_path}. Cached: Triton keeps "
        f"the compiled kernels in {triton_cache_dir()} (TRITON_CACHE_DIR moves it).",
        markup=False,
    )


if __name__ == "__main__":
    main()
