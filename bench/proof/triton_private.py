"""Every use of Triton's private (undocumented, version-specific) API in the proof tools.

Checked with Triton 3.9 (whose wheel compiles for sm_80 to sm_120 and, through its bundled LLVM
and lld, for gfx942 / gfx950: no ROCm install needed). When Triton changes, this is the one
module to update; each function says what it reaches into. Everything else in ``bench.proof``
goes through the kernels' seam (``layernorm_gpu.kernels.registry``) and these functions.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from layernorm_gpu.kernels.heuristics import Target


def is_interpreted(fn: Any) -> bool:
    """Whether a kernel object runs in the interpreter (``TRITON_INTERPRET=1`` at import).

    Private: ``triton.runtime.interpreter.InterpretedFunction``, the class ``@triton.jit``
    returns under the interpreter.
    """
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(fn, InterpretedFunction)


def gpu_target(target: Target | int):
    """The compile target of ``target``: ``GPUTarget("cuda", <capability>, 32)`` for
    ``sm_<capability>`` (an int is a CUDA compute capability x 10),
    ``GPUTarget("hip", "gfx...", 64)`` on AMD (``triton.backends.compiler.GPUTarget``: public
    in use, but not in Triton's documented API)."""
    from triton.backends.compiler import GPUTarget

    if isinstance(target, int):
        return GPUTarget("cuda", target, 32)
    if target.backend == "hip":
        return GPUTarget("hip", target.arch, target.warp_size)
    return GPUTarget("cuda", target.capability, target.warp_size)


def specialise(fn: Any, args: tuple, kwargs: dict, target: Target | int) -> tuple[Any, dict, dict]:
    """``(ASTSource, options, signature)`` of a launch, exactly as the JIT would build them.

    Private: ``triton.runtime.jit.create_function_from_signature`` (the JIT's argument
    binder: pointer alignment, divisibility by 16 and ints equal to 1 become specialisations),
    ``JITFunction.signature`` / ``.params`` / ``._pack_args`` and
    ``triton.compiler.make_backend`` / ``ASTSource``.
    """
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(gpu_target(target))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    return ASTSource(fn, signature, constexprs, attrs), options.__dict__, signature


def compile_kernel(src: Any, target: Target | int, options: dict) -> Any:
    """Compile a specialisation for ``target``: Triton's ``CompiledKernel``, whose ``asm`` dict
    holds ``ttir``, ``llir``, and ``ptx`` / ``cubin`` on CUDA, ``amdgcn`` / ``hsaco`` on AMD,
    and whose ``metadata.shared`` is the shared memory a launch allocates (dynamic: the cubin's
    own figure is only the static part). ``triton.compile`` of an ``ASTSource`` is public; the
    ``asm`` keys and ``metadata`` fields are not documented."""
    import triton

    return triton.compile(src, target=gpu_target(target), options=options)


def compile_for(src: Any, target: Target | int, options: dict) -> dict[str, Any]:
    """The ``asm`` dict of :func:`compile_kernel`."""
    return compile_kernel(src, target, options).asm


def cuobjdump() -> Path:
    """The ``cuobjdump`` binary shipped inside the Triton wheel (a private package layout:
    ``triton/backends/nvidia/bin``)."""
    return Path(importlib.import_module("triton").__file__).parent / "backends/nvidia/bin/cuobjdump"


# (addresses of the masked-in lanes, bytes per element, is_store, program id) of one load or
# store
AccessHook = Callable[[np.ndarray, int, bool, int], None]


@contextlib.contextmanager
def interpreter_accesses(hook: AccessHook) -> Iterator[None]:
    """Call ``hook`` on every masked load/store that interpreted kernels run, with the program
    (its index along grid axis 0) that runs it.

    Private: ``triton.runtime.interpreter.InterpreterBuilder.create_masked_load`` /
    ``create_masked_store`` (patched on the class while the context is open), the builder's
    ``grid_idx`` (the program it is running) and the interpreter's tensor handles (``.data``:
    numpy arrays of addresses and mask lanes; ``.get_element_ty().primitive_bitwidth``).
    """
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    real_load, real_store = builder.create_masked_load, builder.create_masked_store

    def report(builder, ptrs, mask, is_store: bool) -> None:
        lanes = np.broadcast_to(mask.data, ptrs.data.shape)
        elem_size = ptrs.get_element_ty().primitive_bitwidth // 8
        hook(ptrs.data[lanes].astype(np.uint64), elem_size, is_store, int(builder.grid_idx[0]))

    def masked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        report(self, ptrs, mask, False)
        return real_load(self, ptrs, mask, other, cache_policy, is_volatile)

    def masked_store(self, ptrs, value, mask, cache_policy):
        report(self, ptrs, mask, True)
        return real_store(self, ptrs, value, mask, cache_policy)

    builder.create_masked_load, builder.create_masked_store = masked_load, masked_store
    try:
        yield
    finally:
        builder.create_masked_load, builder.create_masked_store = real_load, real_store
