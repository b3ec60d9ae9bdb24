"""Shared fixtures and the test session's environment (helpers and tolerances: ``helpers.py``).

Kernel tests run on CUDA when there is one, else in Triton's interpreter on CPU tensors;
``TRITON_INTERPRET`` must be set before the kernels are imported (they are imported lazily by
layernorm_gpu, so setting it here, before any test runs, is enough). Tests that need CUDA
itself are marked ``gpu`` and skipped without it.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import signal
import tempfile

import pytest
import torch

from helpers import HAS_CUDA

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The session's compile caches live in one temporary folder, removed when the session ends:
# torch.compile's (an on-disk cache can replay a stale graph after a custom op's schema
# changes) and Triton's (the offline compile checks), so the tests leave nothing behind.
_CACHE_DIR = tempfile.mkdtemp(prefix="layernorm_gpu_tests_")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(_CACHE_DIR, "inductor")
os.environ["TRITON_CACHE_DIR"] = os.path.join(_CACHE_DIR, "triton")


# at exit, however the session ends: a run that stops at a usage error never configures pytest
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)


def _remove_caches_and_die(signum, frame) -> None:
    """A run stopped with SIGTERM (a CI timeout, ``kill``) skips the exit handlers: remove the
    caches, then die of the signal as before."""
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


signal.signal(signal.SIGTERM, _remove_caches_and_die)


def _round_bfloat16_to_nearest_even() -> None:
    """Make the interpreter's float32 -> bfloat16 casts round to nearest even, as GPUs do.

    Triton 3.9's interpreter truncates them (``cast_impl`` passes no rounding mode, and its
    round-to-nearest mode does not carry into the exponent), which is up to one bf16 ulp off
    the hardware result and would make exact checks (h = x + residual rounded once, batch
    invariance against torch's casts) test the interpreter rather than the kernels.
    """
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    cast_impl = interpreter.InterpreterBuilder.cast_impl

    def rne_cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16)
            return interpreter.TensorHandle(rounded.view(torch.uint16).numpy(), tl.bfloat16)
        return cast_impl(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = rne_cast_impl


if not HAS_CUDA:
    _round_bfloat16_to_nearest_even()


@pytest.fixture
def poison(monkeypatch):
    """Every float tensor torch.empty makes during the test starts as NaN, so an output element
    (or dW/dB partial row) a kernel fails to write shows up as NaN."""
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(math.nan)
        return t

    monkeypatch.setattr(torch, "empty", poisoned_empty)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
