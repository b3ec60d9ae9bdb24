"""Benchmarks and reports for layernorm_gpu: ``python -m bench`` (see bench/README.md).

On CUDA: the GPU benchmark (:mod:`bench.gpu`), and ``python -m bench.gpu_check``
(:mod:`bench.gpu_check`), which runs the GPU tests and the benchmark and writes the measured
tables into RESULTS.md (:mod:`bench.measured`). Without a GPU: the proof tools (the traffic
report on the real kernels in Triton's interpreter, the offline compile report) run, and
:mod:`bench.findings` states their results as targets with verdicts; :mod:`bench.cpu` times the
CPU fallback against torch and checks the kernels' accuracy. :mod:`bench.verdicts`,
:mod:`bench.progress`, :mod:`bench.tables` and :mod:`bench.cache` are the reporting.
``python -m bench.train`` compares loss curves of a tiny transformers Llama (:mod:`bench.model`)
with its own norms and with ours.
"""
