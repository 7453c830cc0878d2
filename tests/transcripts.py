"""Load the real broker's captured transcripts (../shared/transcripts/*.jsonl) for tests.

CI checks shared/ out beside the repository; NOLAG_TRANSCRIPTS points elsewhere.
Tests that need them skip with the reason when they are absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import msgpack
import pytest


def transcripts_dir() -> Path:
    """Where the transcripts live: $NOLAG_TRANSCRIPTS, else ../shared/transcripts."""
    override = os.environ.get("NOLAG_TRANSCRIPTS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "shared" / "transcripts"


def load(prefix: str) -> list[dict[str, Any]]:
    """The lines of the transcript whose name starts with `prefix` (e.g. "05"); skip if none."""
    folder = transcripts_dir()
    matches = sorted(folder.glob(f"{prefix}*.jsonl")) if folder.is_dir() else []
    if not matches:
        pytest.skip(f"transcript {prefix}-*.jsonl not found in {folder} (set NOLAG_TRANSCRIPTS)")
    with matches[0].open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def frames(
    lines: list[dict[str, Any]], conn: str, direction: Optional[str] = None
) -> list[dict[str, Any]]:
    """Binary frame lines of one connection (label prefix up to "(", e.g. "O"), in order."""
    out = []
    for line in lines:
        label = str(line.get("conn", "")).split("(", 1)[0]
        if label != conn or line.get("opcode") != "binary":
            continue
        if direction is not None and line.get("dir") != direction:
            continue
        if line.get("dir") in ("send", "recv"):
            out.append(line)
    return out


def payload(line: dict[str, Any]) -> bytes:
    """The frame's raw bytes; a frame stored with truncated hex is re-packed from `decoded`."""
    if line.get("hex_truncated"):
        packed: bytes = msgpack.packb(line["decoded"], use_bin_type=True)
        return packed
    return bytes.fromhex(line["hex"])
