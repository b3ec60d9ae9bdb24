"""Packaging and import contracts: the sdist is complete (license, typing marker, a runnable test
suite) and installs with the kernels inside the layernorm_gpu namespace; the package imports
without Triton and without touching CUDA. Everything is built offline in a temporary folder, so
the checkout is left as it was."""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a build must not see or ship: version control, virtual environments, build outputs,
# caches and the benchmark's output folder.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*cache",
    ".hypothesis",
    "out",
)
# Run as a file, not with -c: the source folder must not come first on sys.path, where its
# ./kernels would shadow any installed package named `kernels`.
BUILD_SDIST = """
import sys
from setuptools import build_meta

print(build_meta.build_sdist(sys.argv[1]))
"""


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The sdist of a copy of the checkout, built offline and unpacked: its root folder."""
    tmp = tmp_path_factory.mktemp("sdist")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    script = tmp / "build_sdist.py"
    script.write_text(BUILD_SDIST)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp / "dist")],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    archive = tmp / "dist" / done.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    (root,) = (tmp / "unpacked").iterdir()
    return root


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_sdist_ships_license_typing_marker_and_a_runnable_test_suite(sdist):
    files = _files(sdist)
    checkout_tests = {f"tests/{p.name}" for p in (ROOT / "tests").glob("*.py")}
    assert {"LICENSE", "README.md", "pyproject.toml", "layernorm_gpu/py.typed"} <= files
    assert {"kernels/norm_fwd.py", "kernels/norm_bwd.py", "kernels/heuristics.py"} <= files
    # every test module, with the conftest.py and helpers.py they need, and the bench package
    # tests/test_bench.py imports
    assert {"tests/conftest.py", "tests/helpers.py"} <= checkout_tests <= files
    assert "bench/__init__.py" in files
    assert not [f for f in files if "__pycache__" in f or f.startswith(("bench/out/", "build/"))]
    metadata = email.parser.Parser().parsestr((sdist / "PKG-INFO").read_text())
    assert metadata["License-Expression"] == "MIT"
    assert metadata["License-File"] == "LICENSE"
    assert metadata["Author"] == "layernorm_gpu developers"
    assert "Typing :: Typed" in metadata.get_all("Classifier")


@pytest.fixture(scope="module")
def site(sdist, tmp_path_factory) -> Path:
    """A plain (non-editable) install of the sdist, offline, into its own folder."""
    site = tmp_path_factory.mktemp("site")
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
            str(sdist),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    return site


def test_install_puts_kernels_inside_the_namespace_with_license_and_typing_marker(site, tmp_path):
    assert (site / "layernorm_gpu" / "kernels" / "norm_fwd.py").is_file()
    assert (site / "layernorm_gpu" / "py.typed").is_file()
    assert list(site.glob("layernorm_gpu-*.dist-info/licenses/LICENSE"))
    assert not (site / "kernels").exists()
    result = _python(
        """
        import importlib.util
        import os
        import layernorm_gpu.kernels as k
        print(k.__file__)
        # no top-level `kernels` from this install (PyPI's `kernels` package may be installed)
        spec = importlib.util.find_spec("kernels")
        assert spec is None or not spec.origin.startswith(os.environ["PYTHONPATH"]), spec
    """,
        tmp_path,
        PYTHONPATH=str(site),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(site))


@pytest.mark.slow
def test_sdist_test_suite_collects_against_the_installed_package(sdist, site):
    # The installed package comes first on the path, before the sdist's source folders (whose
    # layernorm_gpu/ lacks the kernels: they install from ./kernels).
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "slow or not slow",
            "-o",
            f"pythonpath={site} tests .",
        ],
        cwd=sdist,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}
    assert collected == {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")}


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
