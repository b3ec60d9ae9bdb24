"""Benchmarks and reports for layernorm_gpu: ``python -m bench`` (see bench/README.md).

On CUDA: the GPU benchmark. Without a GPU: the traffic report (real kernels in Triton's
interpreter), the offline compile report (registers, spills, 128-bit accesses, 64-bit offsets)
and CPU timings. ``bench/train.py`` (a loss-curve comparison on a tiny GPT) runs as a script.
"""
