"""Installation and import contracts: the kernels ship inside the layernorm_gpu namespace, and
the package imports without Triton and without touching CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_plain_install_puts_kernels_inside_the_namespace(tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(ROOT),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    assert (site / "layernorm_gpu" / "kernels" / "norm_fwd.py").is_file()
    assert not (site / "kernels").exists()
    result = _python(
        """
        import importlib.util
        import layernorm_gpu.kernels as k
        print(k.__file__)
        # a top-level "kernels" may exist (the Hugging Face package), but never from our install
        spec = importlib.util.find_spec("kernels")
        assert spec is None or not spec.origin.startswith("{site}")
    """.replace("{site}", str(site)),
        tmp_path,
        PYTHONPATH=str(site),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(site))


def test_import_without_triton_gives_the_reference_only(tmp_path):
    result = _python(
        """
        import sys
        sys.modules["triton"] = None  # as on a machine without Triton
        import torch
        import layernorm_gpu as lg
        from layernorm_gpu import dispatch
        assert not dispatch.TRITON_AVAILABLE
        assert not torch.cuda.is_initialized()
        y = lg.layer_norm(torch.randn(2, 8), 8)
        assert dispatch.calls == {"reference": 1}
        try:
            lg.layer_norm(torch.randn(2, 8), 8, backend="triton")
        except RuntimeError as e:
            assert "not installed" in str(e)
        else:
            raise AssertionError("backend='triton' without Triton did not raise")
    """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
