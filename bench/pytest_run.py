"""One pytest suite run as a child process under a time limit, its outcome read from JUnit XML.

The GPU check (:mod:`bench.gpu_check`) runs its test suites through :func:`run_suite`: pytest's
output goes to a log file, its counts come from the JUnit XML report it writes at the end of its
session. At the time limit the child gets SIGINT, which pytest answers like Ctrl-C: it stops,
reports the tests run so far and still writes the XML; a child that has not ended
:data:`GRACE_SECONDS` later is killed with its whole process group (compile workers,
distributed ranks).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Seconds a child gets to finish its report after SIGINT before it is killed.
GRACE_SECONDS = 30.0
POLL_SECONDS = 0.5

FINISHED = "finished"
CUT_SHORT = "cut short at the time limit"
NOT_RUN = "not run (time budget)"


@dataclass(frozen=True)
class Suite:
    """A named pytest selection: ``args`` are pytest's command-line arguments."""

    name: str
    args: tuple[str, ...]

    @property
    def command(self) -> str:
        """The command line as a person would type it."""
        return " ".join(("python -m pytest", *self.args))

    def argv(self, junit: Path) -> list[str]:
        """The child's argument vector, writing its JUnit XML report to ``junit``."""
        return [sys.executable, "-m", "pytest", *self.args, f"--junitxml={junit}"]


@dataclass
class SuiteResult:
    """The outcome of one suite: test counts, wall time, how it ended, the failing test ids."""

    name: str
    command: str
    status: str = NOT_RUN
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    exit_code: int | None = None
    failures: list[str] = field(default_factory=list)
    log: Path | None = None

    @property
    def ok(self) -> bool:
        """Every selected test ran and none failed (pytest's exit status 0)."""
        return self.status == FINISHED and self.exit_code == 0 and not (self.failed or self.errors)

    def counts(self) -> str:
        """``"50 passed, 2 skipped"``: the non-zero counts, or what stopped the suite."""
        if self.status == NOT_RUN:
            return NOT_RUN
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.passed, "passed"),
                (self.failed, "failed"),
                (self.errors, "errors"),
                (self.skipped, "skipped"),
            )
            if n
        ]
        return ", ".join(parts) or "no test ran"


def read_junit(path: Path) -> tuple[dict[str, int], list[str]]:
    """Counts (``passed``, ``failed``, ``errors``, ``skipped``) and the ids of the failing and
    erroring tests (``file::name``) from pytest's JUnit XML report at ``path``."""
    root = ET.parse(path).getroot()
    counts = dict.fromkeys(("passed", "failed", "errors", "skipped"), 0)
    failures = []
    for case in root.iter("testcase"):
        if not case.get("name"):  # pytest's placeholder for a session interrupted mid-test
            continue
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                break
        counts[outcome] += 1
        if outcome in ("failed", "errors"):
            module = case.get("classname", "").replace(".", "/")
            failures.append(f"{module}.py::{case.get('name')}")
    return counts, failures


def run_suite(
    suite: Suite,
    timeout: float,
    out_dir: Path,
    cwd: Path,
    on_tick: Callable[[float], None] | None = None,
) -> SuiteResult:
    """Run ``suite`` in ``cwd`` for at most ``timeout`` seconds (then SIGINT, then kill);
    ``on_tick(elapsed)`` is called about twice a second. The log and the XML report go to
    ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = suite.name.replace(" ", "_")
    junit, log = out_dir / f"{slug}.xml", out_dir / f"{slug}.log"
    junit.unlink(missing_ok=True)
    result = SuiteResult(suite.name, suite.command, log=log)
    start = time.monotonic()
    with log.open("w") as sink:
        child = subprocess.Popen(
            suite.argv(junit),
            cwd=cwd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        cut_short = False
        try:
            while child.poll() is None:
                elapsed = time.monotonic() - start
                if elapsed > timeout and not cut_short:
                    cut_short = True
                    os.killpg(child.pid, signal.SIGINT)
                if elapsed > timeout + GRACE_SECONDS:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                    break
                if on_tick is not None:
                    on_tick(elapsed)
                time.sleep(POLL_SECONDS)
        except BaseException:  # the caller is stopped (Ctrl-C, SIGTERM): take the child along
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            raise
    result.seconds = time.monotonic() - start
    result.exit_code = child.returncode
    result.status = CUT_SHORT if cut_short else FINISHED
    if junit.exists():
        counts, result.failures = read_junit(junit)
        for name, n in counts.items():
            setattr(result, name, n)
    return result
