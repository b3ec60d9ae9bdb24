"""The offline proof tools: what the kernels move and how they compile, without a GPU.

- ``trace``: runs the real kernels in Triton's interpreter and records every load and store.
- ``traffic``: the traffic report (structural targets, the 16384 x 4096 problem, predictions).
- ``bytes_model``: the DRAM bytes one forward or backward must move, term by term.
- ``compile_report``: every kernel specialisation compiled offline for sm_80, sm_90, sm_100,
  sm_120, gfx942 and gfx950.
- ``occupancy``: resident programs per SM and bytes in flight against Little's law.
- ``ptx`` / ``llir`` / ``ttir``: reading the compiled kernels (access widths, 64-bit offsets
  and rows; ``llir`` for AMD).
- ``triton_private``: the one module that uses Triton's private API.

They see the kernels through ``layernorm_gpu.kernels.registry`` (each kernel, the role of each
pointer argument, one interceptable launch path), not through private names.
"""
