"""Train a tiny transformers Llama twice, as transformers ships it and with its norms swapped
for layernorm_gpu's by :func:`layernorm_gpu.replace_norms`, and compare the loss curves.

Both runs start from the same random initialisation (:func:`bench.model.tiny_llama`, no
download; the second model is a copy of the first, patched) and see the same character-level
batches, so their curves should agree to rounding. Prints what ran and a summary table, and
writes a PNG of both curves and their difference.

What is compared, by device:

* CUDA (``--backend auto``, the default): the Triton kernels against transformers'
  ``LlamaRMSNorm``; step times are measured (synchronised) and printed.
* CPU: the same Triton kernels, run by Triton's interpreter (``TRITON_INTERPRET=1``, set here
  before the kernels load), for fewer steps by default since the interpreter runs them in
  numpy. CPU step times would time the interpreter, not the kernels, so none are printed.
  ``--backend reference`` compares the exact torch reference instead.

::

    python -m bench.train                      # CPU: kernels in the interpreter, 30 steps (~1 min)
    python -m bench.train --device cuda --steps 300 --out bench/out/train_loss.png
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch

TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. However little known the feelings or views of such "
    "a man may be on his first entering a neighbourhood, this truth is so well fixed in the "
    "minds of the surrounding families, that he is considered the rightful property of some "
    "one or other of their daughters. My dear Mr. Bennet, said his lady to him one day, have "
    "you heard that Netherfield Park is let at last? Mr. Bennet replied that he had not. But "
    "it is, returned she; for Mrs. Long has just been here, and she told me all about it. "
    "Mr. Bennet made no answer. Do you not want to know who has taken it? cried his wife "
    "impatiently. You want to tell me, and I have no objection to hearing it. This was "
    "invitation enough."
)


def make_batches(
    steps: int, batch_size: int, seq_len: int, seed: int
) -> tuple[list[torch.Tensor], int]:
    """``steps`` batches ``(batch_size, seq_len + 1)`` of random windows of :data:`TEXT`,
    char-level token ids (inputs and, shifted by the model, targets), and the vocabulary
    size."""
    chars = sorted(set(TEXT))
    data = torch.tensor([chars.index(c) for c in TEXT])
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        start = torch.randint(len(data) - seq_len - 1, (batch_size, 1), generator=gen)
        batches.append(data[start + torch.arange(seq_len + 1)])
    return batches, len(chars)


def train(
    model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device, lr: float
) -> tuple[list[float], list[float]]:
    """Train with AdamW on next-token loss; returns the loss and the wall time (ms) of every
    step (synchronised on CUDA)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    losses, times = [], []
    for batch in batches:
        ids = batch.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = model(ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1e3 * (time.perf_counter() - start))
        losses.append(loss.item())
    return losses, times


def plot(losses: dict[str, list[float]], out: Path) -> None:
    """Write both loss curves and their difference to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (theirs_name, theirs), (ours_name, ours) = losses.items()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(theirs, label=theirs_name, linewidth=2.5)
    top.plot(ours, label=ours_name, linestyle="--")
    top.set_ylabel("training loss")
    top.set_title("tiny Llama (transformers), same init and batches")
    top.legend()
    diff = [abs(a - b) for a, b in zip(theirs, ours, strict=True)]
    bottom.plot(diff, color="tab:red")
    bottom.set_yscale("symlog", linthresh=1e-7)
    bottom.set_ylabel("|loss difference|")
    bottom.set_xlabel("step")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def summarize(
    losses: dict[str, list[float]], times: dict[str, list[float]] | None, warmup: int
) -> None:
    """Print a table of first and final loss per run, with median / mean step times when
    ``times`` is given (CUDA), after ``warmup`` steps."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tiny Llama training: transformers' norms vs layernorm_gpu")
    columns = ["norms", "first loss", "final loss"]
    if times is not None:
        columns += ["median step ms", "mean step ms"]
    for column in columns:
        table.add_column(column, justify="right")
    for name, curve in losses.items():
        row = [name, f"{curve[0]:.5f}", f"{curve[-1]:.5f}"]
        if times is not None:
            steady = times[name][warmup:] or times[name]
            row += [f"{statistics.median(steady):.2f}", f"{statistics.fmean(steady):.2f}"]
        table.add_row(*row)
    console = Console()
    console.print(table)
    (_, a), (_, b) = losses.items()
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))
    console.print(f"largest relative loss difference over {len(a)} steps: {worst:.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps", type=int, help="training steps per run (default: 300 on CUDA, 30 on CPU)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when present, else cpu)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="PNG of the loss curves",
        default=Path(__file__).parent / "out" / "train_loss.png",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "triton", "reference"),
        help="layernorm_gpu backend of the swapped norms (default: auto on CUDA, triton in "
        "the interpreter on CPU)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=32, help="tokens per sequence")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init and the batches")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    steps = args.steps if args.steps is not None else (30 if on_cpu else 300)
    if steps < 1:
        parser.error("--steps must be at least 1")
    backend = args.backend or ("triton" if on_cpu else "auto")
    if on_cpu and backend == "triton":
        # before layernorm_gpu loads the kernels (it does so at their first call)
        os.environ["TRITON_INTERPRET"] = "1"

    import layernorm_gpu
    from bench.model import tiny_llama
    from layernorm_gpu import dispatch

    batches, vocab = make_batches(steps, args.batch_size, args.seq_len, args.seed)
    theirs = tiny_llama(seed=args.seed, vocab_size=vocab).to(device)
    ours = copy.deepcopy(theirs)
    print(layernorm_gpu.replace_norms(ours, backend=backend, report=True))

    losses, times = {}, {}
    dispatch.calls.clear()
    for name, model in (("transformers", theirs), ("layernorm_gpu", ours)):
        losses[name], times[name] = train(model, batches, device, args.lr)
    ran = ", ".join(f"{n} op calls on {b}" for b, n in dispatch.calls.items())
    where = "Triton's interpreter on CPU" if on_cpu and backend == "triton" else str(device)
    print(f"{steps} steps on {device}; layernorm_gpu ran {ran} ({where})")
    if on_cpu and backend == "triton":
        print("no step times: on CPU they would time numpy (the interpreter), not the kernels")
    elif on_cpu:
        print("no step times on CPU: this compares losses (CPU speed: python -m bench)")
    summarize(losses, None if on_cpu else times, warmup=min(5, steps - 1))
    plot(losses, args.out)
    print(f"loss curves written to {args.out}")


if __name__ == "__main__":
    main()
