"""The README's first Python example runs as pasted on a machine without a GPU (the kernels in
Triton's interpreter, switched on by the example's own lines)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
# Run the example, then report which implementation ran its calls.
RUN = """
import json, sys
example = sys.stdin.read()
exec(compile(example, "README.md (first python example)", "exec"), {"__name__": "__main__"})
from layernorm_gpu import dispatch
print(json.dumps(dict(dispatch.calls)))
"""


def first_python_example(text: str) -> str:
    """The body of the first ```python fenced block of a Markdown ``text``."""
    match = re.search(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    assert match, "README.md has no ```python block"
    return match.group(1)


def test_first_readme_example_runs_the_kernels_on_cpu(tmp_path):
    example = first_python_example(README.read_text())
    # A machine without a GPU, and none of the switches the example must set itself.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRITON_INTERPRET", "LAYERNORM_GPU_BACKEND")
    }
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(
        [sys.executable, "-c", RUN],
        input=example,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    calls = json.loads(done.stdout.strip().splitlines()[-1])
    # the example's own comment says how many calls the kernels ran
    stated = re.search(r"\{'triton': (\d+)\}", example)
    assert stated, "the example states no {'triton': N} count"
    assert calls == {"triton": int(stated.group(1))}, calls
