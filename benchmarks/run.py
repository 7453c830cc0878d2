"""Run every nolag benchmark in one command and print the results as ratios beside baselines.

    python benchmarks/run.py                   # the full run (about 10 minutes on 2 cores)
    python benchmarks/run.py --quick           # tiny sizes: a smoke run (CI), well under 60 s
    python benchmarks/run.py --only ingest --only cache --json out.json

Sections: ingest (firehose → callbacks: nolag, websocket-client recv loop, batched decode
ceiling, official asyncio SDK), latency (through the local broker, beside bare sockets),
cache (reads and memory at 1k/10k/100k actors), scale (N clients in one process, join
storm), broker (fan-out deliveries/s, idle connections). The machine is shared and
noisy: read the ratios, which compare figures taken minutes apart in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, Callable, Optional

import broker_fanout
import cache
import common
import ingest
import latency
import scale

SECTIONS = ("ingest", "latency", "cache", "scale", "broker")

FULL: dict[str, dict[str, Any]] = {
    "ingest": {"n": 60_000, "actors": 10_000, "repeat": 3},
    "latency": {"rates": [100.0, 1000.0], "count": 2000},
    "cache": {"sizes": (1_000, 10_000, 100_000), "calls": 20_000},
    "scale": {"sizes": (100, 500, 1000), "limit_s": 300.0},
    "broker": {"members": 100, "updates": 1000, "idle": 2000},
}
QUICK: dict[str, dict[str, Any]] = {
    "ingest": {"n": 600, "actors": 100, "repeat": 1},
    "latency": {"rates": [100.0, 1000.0], "count": 50},
    "cache": {"sizes": (100, 1_000), "calls": 2_000},
    "scale": {"sizes": (10,), "limit_s": 30.0},
    "broker": {"members": 10, "updates": 50, "idle": 50},
}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_sections(
    sections: list[str], quick: bool, official: str, log: Callable[[str], None] = _log
) -> dict[str, Any]:
    """Run the chosen sections in order; a failing section is reported, not fatal."""
    sizes = QUICK if quick else FULL
    out: dict[str, Any] = {"machine": common.machine(), "quick": quick, "sections": {}}
    for name in sections:
        p = sizes[name]
        log(f"== {name}")
        started = time.perf_counter()
        try:
            if name == "ingest":
                r: Any = ingest.run(p["n"], p["actors"], p["repeat"], official, log)
            elif name == "latency":
                r = {"runs": latency.run(p["rates"], p["count"])}
                for x in r["runs"]:
                    log(
                        f"  latency {x['rate']:.0f}/s: p99 nolag {x['nolag']['p99_ms']:.2f} ms"
                        f" / bare {x['bare']['p99_ms']:.2f} ms = {x['p99_ratio']:.2f}"
                    )
            elif name == "cache":
                r = cache.run(p["sizes"], p["calls"], log)
            elif name == "scale":
                r = scale.run(p["sizes"], p["limit_s"], log)
            else:
                r = broker_fanout.run(p["members"], p["updates"], p["idle"], log)
        except Exception as exc:  # one broken section must not hide the others
            r = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  {name}: FAILED {r['error']}")
        r["seconds"] = time.perf_counter() - started
        out["sections"][name] = r
    out["targets"] = targets(out["sections"])
    return out


def _fmt(x: Optional[float], digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue #5 with its measured value and whether it is met."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: Optional[float], goal: str, met: Optional[bool]) -> None:
        rows.append({"target": name, "value": value, "goal": goal, "met": met})

    ing = s.get("ingest", {})
    if "ratios" in ing:
        r = ing["ratios"]
        v = r.get("nolag/official")
        add("ingest nolag / official asyncio SDK", v, ">= 1.5", None if v is None else v >= 1.5)
        v = r.get("nolag/batched")
        add("ingest nolag / batched decode ceiling", v, ">= 0.5", None if v is None else v >= 0.5)
    cac = s.get("cache", {})
    if "reads" in cac:
        v = cac["get_all_ratio_largest_smallest"]
        same = all(x["same_object_when_unchanged"] for x in cac["reads"])
        add("get_all_presence unchanged, largest / smallest cache", v, "~1 (O(1))", v < 2 and same)
    lat = s.get("latency", {})
    for x in lat.get("runs", []):
        v = x["p99_ratio"]
        add(f"latency p99 nolag / bare at {x['rate']:.0f}/s", v, "<= 2", v <= 2)
    sca = s.get("scale", {})
    if sca.get("runs"):
        big = sca["runs"][-1]
        add(
            f"scale: {big['clients']} clients converge",
            big.get("converge_s"),
            f"converge (<= {sca['limit_s']:.0f} s)",
            bool(big.get("converged")),
        )
    return rows


def markdown(res: dict[str, Any]) -> str:
    """The results as Markdown tables (what BENCHMARKS.md shows)."""
    m = res["machine"]
    lines = [
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}; "
        f"{m['implementation']} {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + f"; commit {m['commit']}{' (nolag/ modified)' if m['nolag_dirty'] else ''}; "
        f"load average at start {', '.join(f'{x:.1f}' for x in m['load_avg'])}.",
        "",
    ]
    s = res["sections"]
    ing = s.get("ingest")
    if ing and "variants" in ing:
        v = ing["variants"]
        base = v.get("batched", {}).get("median_events_per_s")
        lines += [
            f"**Ingest** ({ing['n']:,} frames over {ing['actors']:,} actors, median of "
            f"{ing['repeat']}, interleaved):",
            "",
            "| reader | events/s (median) | runs | x batched ceiling | exact counts |",
            "|---|---:|---|---:|---|",
        ]
        labels = {
            "nolag": "(a) nolag, presence callbacks",
            "recv_loop": "(b) websocket-client recv() + unpackb",
            "batched": "(c) batched decode only (ceiling)",
            "official": "(d) official asyncio SDK, callbacks",
        }
        for key, label in labels.items():
            if key not in v:
                why = ing.get("errors", {}).get(key) or ing.get("official_unavailable", "-")
                lines.append(f"| {label} | unavailable: {why} | | | |")
                continue
            e = v[key]
            runs = ", ".join(f"{x / 1000:.0f}k" for x in e["runs_events_per_s"])
            rel = e["median_events_per_s"] / base if base else None
            exact = {True: "yes", False: "NO"}.get(e.get("counts_exact"), "n/a")
            lines.append(
                f"| {label} | {e['median_events_per_s']:,.0f} | {runs} | {_fmt(rel)} | {exact} |"
            )
        if "official_versions" in ing:
            ov = ing["official_versions"]
            lines += [
                "",
                "Official SDK: "
                + ", ".join(f"{k} {val}" for k, val in ov.items())
                + " (own virtualenv).",
            ]
        lines.append("")
    lat = s.get("latency")
    if lat and "runs" in lat:
        lines += [
            f"**Latency** (set_presence on one client → presence:update callback on another, "
            f"through a `nolag broker` process; {lat['runs'][0]['count']} updates per rate):",
            "",
            "| rate | who | n | p50 ms | p99 ms | max ms | p99 nolag / bare |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for x in lat["runs"]:
            for who in ("bare", "nolag"):
                q = x[who]
                ratio = _fmt(x["p99_ratio"]) if who == "nolag" else ""
                lines.append(
                    f"| {x['rate']:.0f}/s | {who} | {q['n']} | {_fmt(q['p50_ms'], 3)} | "
                    f"{_fmt(q['p99_ms'], 3)} | {_fmt(q['max_ms'], 3)} | {ratio} |"
                )
        lines.append("")
    cac = s.get("cache")
    if cac and "reads" in cac:
        lines += [
            "**Cache** (a NoLag client filled by the firehose; memory on a bare PresenceStore "
            "under tracemalloc):",
            "",
            "| actors | get_all_presence() unchanged | get_presence() | first get_all after a"
            " change | bytes / actor | fill (s) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r, mem in zip(cac["reads"], cac["memory"]):
            lines.append(
                f"| {r['actors']:,} | {r['get_all_presence_ns']:.0f} ns | "
                f"{r['get_presence_ns']:.0f} ns | {r['get_all_after_change_ns'] / 1e3:,.0f} µs | "
                f"{mem['bytes_per_actor']:.0f} | {r['fill_s']:.2f} |"
            )
        lines += [
            "",
            f"Largest / smallest: get_all_presence {_fmt(cac['get_all_ratio_largest_smallest'])}, "
            f"get_presence {_fmt(cac['get_ratio_largest_smallest'])}, first get_all after a "
            f"change {_fmt(cac['after_change_ratio_largest_smallest'], 1)}.",
            "",
        ]
    sca = s.get("scale")
    if sca and "runs" in sca:
        lines += [
            f"**Scale** (N nolag clients in one process, `nolag broker --allow-all` process, "
            f"join storm of project-level presence; bounded at {sca['limit_s']:.0f} s):",
            "",
            "| clients | connect (s) | converge (s) | converged | frames/s | threads/client | "
            "RSS (MiB) | RSS/client (KiB) | broker RSS (MiB) | reconnects |",
            "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        notes = []
        for r in sca["runs"]:
            if "converged" not in r:
                lines.append(f"| {r['clients']} | failed: {r.get('error', '?')} |||||||||")
                continue
            if r.get("error"):
                notes.append(f"{r['clients']} clients: {r['error']}")
            rss = r.get("rss_mib")
            lines.append(
                f"| {r['clients']:,} | {_fmt(r['connect_s'], 1)} | {_fmt(r.get('converge_s'), 1)}"
                f" | {r['clients_converged']}/{r['clients']} | "
                f"{_fmt(r.get('frames_per_s'), 0)} | {_fmt(r['threads_per_client'], 1)} | "
                f"{_fmt(rss, 0)} | {_fmt(r.get('rss_per_client_kib'), 0)} | "
                f"{_fmt(r.get('broker_rss_mib'), 0)} | {r.get('reconnects', '-')} |"
            )
        lines += [""] + [f"Note: {x}." for x in notes] + ([""] if notes else [])
    brk = s.get("broker")
    if brk and "fanout" in brk:
        f, c = brk["fanout"], brk["idle"]
        lines += [
            "**Local broker** (one `nolag broker` process):",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| fan-out: {f['members']} members x {f['updates']} updates, deliveries/s | "
            f"{f['deliveries_per_s']:,.0f}{'' if f['complete'] else ' (incomplete)'} |",
            f"| idle connections held (alive / opened) | {c['alive']:,} / {c['connections']:,} |",
            f"| broker RSS with them (MiB) | {c['broker_rss_mib']:.0f} "
            f"(idle {c['broker_rss_idle_mib']:.0f}) |",
            f"| broker memory per connection (KiB) | {c['broker_kib_per_connection']:.1f} |",
            "",
        ]
    lines += [
        "**Targets** (issue #5):",
        "",
        "| target | measured | goal | met |",
        "|---|---:|---|---|",
    ]
    for t in res["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {t['goal']} | {met} |")
    failed = [k for k, v in s.items() if "error" in v]
    if failed:
        lines += ["", "Failed sections: " + ", ".join(f"{k} ({s[k]['error']})" for k in failed)]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    """Parse flags, run, print Markdown tables; exit 1 if a section failed outright."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only this section (repeatable)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument(
        "--official",
        choices=("auto", "install", "skip"),
        help="the official SDK's venv: use if present (auto), create if missing (install; "
        "the default of a full run), or skip",
    )
    args = parser.parse_args(argv)
    official = args.official or ("auto" if args.quick else "install")
    sections = [s for s in SECTIONS if not args.only or s in args.only]
    res = run_sections(sections, args.quick, official)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    print(markdown(res))
    return 1 if any("error" in v for v in res["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
