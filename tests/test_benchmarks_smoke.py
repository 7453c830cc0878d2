"""Smoke run of the benchmark harness with tiny sizes, so benchmarks/ does not rot.

It checks that every section runs and reports its figures; it never asserts timings.
The official SDK's column is used only if its virtualenv already exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_quick_run_reports_every_section(tmp_path: Path) -> None:
    """`python benchmarks/run.py --quick` exits 0 with figures for all five sections."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=170,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    s = res["sections"]
    assert set(s) == {"ingest", "latency", "cache", "scale", "broker"}

    ingest = s["ingest"]
    assert not ingest["errors"], ingest["errors"]
    for name in ("nolag", "recv_loop", "batched"):
        assert ingest["variants"][name]["median_events_per_s"] > 0
    assert ingest["variants"]["nolag"]["counts_exact"] is True  # one callback per frame
    assert ingest["ratios"]["nolag/batched"] is not None
    if "official" in ingest["variants"]:
        assert ingest["variants"]["official"]["counts_exact"] is True
    else:
        assert ingest["official_unavailable"]

    for run in s["latency"]["runs"]:
        assert run["bare"]["n"] > 0 and run["nolag"]["n"] > 0
        assert run["p99_ratio"] > 0

    cache = s["cache"]
    assert all(r["same_object_when_unchanged"] for r in cache["reads"])
    assert all(m["bytes_per_actor"] > 0 for m in cache["memory"])

    (scale,) = s["scale"]["runs"]
    assert scale["converged"] is True and scale["threads_per_client"] > 0

    broker = s["broker"]
    assert broker["fanout"]["complete"] is True
    assert broker["idle"]["alive"] == broker["idle"]["connections"]

    assert {t["target"].split(" ")[0].rstrip(":") for t in res["targets"]} >= {
        "ingest",
        "latency",
        "scale",
    }
    assert "**Targets**" in proc.stdout
