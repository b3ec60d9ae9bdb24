"""Train a tiny pre-norm GPT twice, with torch's norms and with layernorm_gpu's, and compare.

Both runs start from the same initialisation (the second model is a copy of the first with its
norms swapped by :func:`layernorm_gpu.replace_norms`) and see the same batches, so their loss
curves should agree to float32 rounding. Prints a summary table, writes a PNG of both curves and
their difference, and times every step (CUDA steps are synchronised before the clock is read).

Runs on CPU in well under a minute with the defaults (there ``backend="auto"`` runs the exact
reference; ``--backend triton`` on CPU needs ``TRITON_INTERPRET=1`` and is slow), and on CUDA,
where ``auto`` runs the Triton kernels::

    python bench/train.py --steps 200 --device cuda --out bench/out/train_loss.png

:class:`GPTConfig` and :class:`TinyGPT` are imported by the tests.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import layernorm_gpu
from layernorm_gpu import dispatch

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


@dataclass(frozen=True)
class GPTConfig:
    """Shape of :class:`TinyGPT`. ``norm`` is ``"layer"`` (LayerNorm, with a bias if
    ``bias``) or ``"rms"`` (RMSNorm)."""

    vocab_size: int = 64
    block_size: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    norm: str = "layer"
    bias: bool = True


def make_norm(config: GPTConfig) -> nn.Module:
    """A torch norm over ``n_embd`` as ``config`` asks (swap it with ``replace_norms``)."""
    if config.norm == "layer":
        return nn.LayerNorm(config.n_embd, bias=config.bias)
    if config.norm == "rms":
        return nn.RMSNorm(config.n_embd)
    raise ValueError(f"norm must be 'layer' or 'rms', got {config.norm!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused qkv projection."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError("n_embd must be a multiple of n_head")
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, seq, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, width))


class MLP(nn.Module):
    """Two-layer GELU feed-forward block, 4x wide."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """GPT-2 style decoder built from torch's norms (``replace_norms`` swaps in ours), with
    learned positions, a final norm and an output head tied to the token embedding."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * config.n_layer))
            elif param.dim() == 2:
                nn.init.normal_(param, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(param)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, seq, vocab_size)`` for token ids ``idx`` ``(batch, seq)``."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy."""
        logits = self(idx)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def make_batches(
    steps: int, batch_size: int, block_size: int, seed: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """``steps`` (input, target) batches of random windows of :data:`TEXT`, char-level, and
    the vocabulary size."""
    chars = sorted(set(TEXT))
    data = torch.tensor([chars.index(c) for c in TEXT])
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        start = torch.randint(len(data) - block_size - 1, (batch_size, 1), generator=gen)
        idx = start + torch.arange(block_size + 1)
        window = data[idx]
        batches.append((window[:, :-1], window[:, 1:]))
    return batches, len(chars)


def train(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    lr: float,
) -> tuple[list[float], list[float]]:
    """Train with AdamW; returns the loss and the wall time (ms) of every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    losses, times = [], []
    for idx, targets in batches:
        idx, targets = idx.to(device), targets.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = model.loss(idx, targets)
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

    (torch_name, torch_losses), (ours_name, our_losses) = losses.items()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(torch_losses, label=torch_name, linewidth=2.5)
    top.plot(our_losses, label=ours_name, linestyle="--")
    top.set_ylabel("training loss")
    top.legend()
    diff = [abs(a - b) for a, b in zip(torch_losses, our_losses, strict=True)]
    bottom.plot(diff, color="tab:red")
    bottom.set_yscale("symlog", linthresh=1e-7)
    bottom.set_ylabel("|loss difference|")
    bottom.set_xlabel("step")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def summarize(losses: dict[str, list[float]], times: dict[str, list[float]], warmup: int) -> None:
    """Print a table of final loss and step times (after ``warmup`` steps) per run."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="TinyGPT training: torch norms vs layernorm_gpu")
    for column in ("norms", "first loss", "final loss", "median step ms", "mean step ms"):
        table.add_column(column, justify="right")
    for name, curve in losses.items():
        steady = times[name][warmup:] or times[name]
        table.add_row(
            name,
            f"{curve[0]:.5f}",
            f"{curve[-1]:.5f}",
            f"{statistics.median(steady):.2f}",
            f"{statistics.fmean(steady):.2f}",
        )
    console = Console()
    console.print(table)
    (_, a), (_, b) = losses.items()
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))
    console.print(f"largest relative loss difference over {len(a)} steps: {worst:.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
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
        default="auto",
        choices=("auto", "triton", "reference"),
        help="layernorm_gpu backend of the swapped norms",
    )
    parser.add_argument(
        "--norm", default="layer", choices=("layer", "rms"), help="LayerNorm or RMSNorm blocks"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init and the batches")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    device = torch.device(args.device)
    batches, vocab = make_batches(args.steps, args.batch_size, GPTConfig.block_size, args.seed)
    config = GPTConfig(vocab_size=vocab, norm=args.norm)
    torch.manual_seed(args.seed)
    reference_model = TinyGPT(config).to(device)
    our_model = layernorm_gpu.replace_norms(copy.deepcopy(reference_model), backend=args.backend)

    losses, times = {}, {}
    dispatch.calls.clear()
    for name, model in (("torch.nn", reference_model), ("layernorm_gpu", our_model)):
        losses[name], times[name] = train(model, batches, device, args.lr)
    print(f"device {device}, layernorm_gpu op calls by backend: {dict(dispatch.calls)}")
    summarize(losses, times, warmup=min(5, args.steps - 1))
    plot(losses, args.out)
    print(f"loss curves written to {args.out}")


if __name__ == "__main__":
    main()
