"""Project hygiene that CI must keep true: the generated codec is current and the code is ruff-clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_codec_is_current() -> None:
    result = subprocess.run(
        [sys.executable, "tools/amqp_codegen.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_ruff_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "conveyor", "tools", "tests", "examples"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


FORBIDDEN_IN_CORE = (
    "conveyor.amqp", "conveyor.http", "conveyor.sqs", "conveyor.kafka", "conveyor.store.segments", "asyncio",
)


def test_core_imports_no_front_end() -> None:
    """DESIGN.md: core/ is protocol-neutral, with no sockets or event loop of its own."""
    offenders = []
    for path in (ROOT / "conveyor" / "core").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")) and any(name in stripped for name in FORBIDDEN_IN_CORE):
                offenders.append(f"{path.relative_to(ROOT)}: {stripped}")
    assert offenders == []
