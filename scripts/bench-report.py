#!/usr/bin/env python3
"""Turns one scripts/bench.sh run (a folder of JSON results) into a BENCHMARKS.md section.

    python3 scripts/bench-report.py target/bench/<time>

Reads <label>.json (shcr bench --json) and <label>-wrk-{read,vread}.json (scripts/bench-read.lua)
for each server measured; with two servers, adds their ratios (shcr / peer).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path


def load(folder: Path) -> dict[str, dict]:
    servers = {}
    for path in sorted(folder.glob("*.json")):
        if "-wrk-" in path.name:
            continue
        result = json.loads(path.read_text())
        if "label" not in result:
            continue
        for extra in ("storage", "scan", "reindex"):
            side = folder / f"{result['label']}-{extra}.json"
            if side.exists():
                result[extra] = json.loads(side.read_text())
        label = result["label"]
        for kind in ("read", "vread"):
            wrk = folder / f"{label}-wrk-{kind}.json"
            if wrk.exists() and wrk.read_text().strip():
                result.setdefault("wrk", {})[kind] = json.loads(wrk.read_text())
        servers[label] = result
    # shcr first, the peer after.
    return dict(sorted(servers.items(), key=lambda kv: kv[0] != "shcr"))


def rows(result: dict) -> dict[str, dict]:
    """Measure name -> {per_second, p50_ms, p99_ms, p999_ms, errors, extra}."""
    out = {}
    for m in result["measures"]:
        if m["name"] == "ingest":
            out["ingest (resources/s; bundle latency)"] = {
                "per_second": m["resources_per_second"],
                "p50_ms": m["p50_ms"],
                "p99_ms": m["p99_ms"],
                "p999_ms": m["p999_ms"],
                "errors": m["errors"],
            }
        else:
            out[f"{m['name']} (shcr bench client)"] = m
    for kind, w in result.get("wrk", {}).items():
        out[f"{kind} (wrk)"] = {
            "per_second": w["requests"] / w["seconds"] if w["seconds"] else float("nan"),
            "p50_ms": w["p50_ms"],
            "p99_ms": w["p99_ms"],
            "p999_ms": w["p999_ms"],
            "errors": w["non_2xx"] + w["socket_errors"],
        }
    return out


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:
        return "—"
    return f"{value:,.{digits}f}"


def main() -> int:
    folder = Path(sys.argv[1])
    servers = load(folder)
    if not servers:
        print(f"no results in {folder}", file=sys.stderr)
        return 1
    first = next(iter(servers.values()))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    labels = list(servers)
    print(f"### {date} — scripts/bench.sh: {' vs '.join(labels)}")
    print()
    loads = ", ".join(
        f"{label} {fmt(r.get('load_average_before'), 2)}→{fmt(r.get('load_average_after'), 2)}"
        for label, r in servers.items()
    )
    print(
        f"{first['cores']} cores; {first['persons']:,} persons / {first['trusts']} trusts → "
        f"{first['bundles']} patient transaction Bundles, {first['resources']:,} resources "
        f"({first['observations']:,} Observations read back); {first['clients']} concurrent clients "
        f"(wrk: 2 threads, {first['clients']} connections); ingest {first['ingest_concurrency']} "
        f"Bundles in flight; {first['warmup']} s warm-up then {first['seconds']} s per latency phase; "
        f"one server at a time, each on a fresh database of the same PostgreSQL server. "
        f"Conditional references {'made literal for both' if first['literal_references'] else 'resolved by the server'}. "
        f"Load average (1 min) before→after: {loads}."
    )
    skipped = sorted({s for r in servers.values() for s in r.get("skipped", [])})
    if skipped:
        print(f"Not measured yet (arrive with their issues): {', '.join(skipped)}.")
    print()
    storage, scan = first.get("storage"), first.get("scan")
    if storage and storage.get("versions"):
        versions = storage["versions"]
        line = (f"shcr storage: {versions:,} versions, database {storage['database_bytes'] / 1e6:,.0f} MB "
                f"({storage['database_bytes'] / versions:,.0f} B per version; resource_version with indexes "
                f"{storage['resource_version_bytes'] / versions:,.0f} B, of which JSON content "
                f"{storage['resource_version_content_bytes'] / versions:,.0f} B)")
        if scan:
            line += (f"; reading every version's JSON back (`\\copy … TO /dev/null`): {scan['scan_seconds']:.2f} s = "
                     f"{versions / scan['scan_seconds']:,.0f} versions/s")
        print(line + ".")
        print()
    reindex = first.get("reindex")
    if reindex and reindex.get("resources"):
        print(f"Index rebuild (`shcr reindex` into an empty folder, one process): {reindex['resources']:,} current "
              f"resources in {reindex['seconds']:.1f} s = {reindex['resources'] / reindex['seconds']:,.0f} resources/s; "
              f"index {reindex['index_bytes'] / 1e6:,.1f} MB = {reindex['index_bytes'] / reindex['resources']:,.0f} B per resource.")
        print()
    table = {label: rows(r) for label, r in servers.items()}
    names = list(dict.fromkeys(n for t in table.values() for n in t))
    if len(labels) == 1:
        print("| measure | throughput /s | p50 ms | p99 ms | p99.9 ms | errors |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in names:
            m = table[labels[0]][name]
            print(f"| {name} | {fmt(m['per_second'], 0)} | {fmt(m['p50_ms'], 2)} | {fmt(m['p99_ms'], 2)} "
                  f"| {fmt(m['p999_ms'], 2)} | {m['errors']} |")
    else:
        a, b = labels[0], labels[1]
        print(f"| measure | {a} /s | {b} /s | throughput {a}÷{b} | {a} p50 / p99 ms | {b} p50 / p99 ms "
              f"| p99 {a}÷{b} | errors {a} / {b} |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name in names:
            x, y = table[a].get(name), table[b].get(name)
            if not x or not y:
                continue
            tput = x["per_second"] / y["per_second"] if y["per_second"] else float("nan")
            p99 = x["p99_ms"] / y["p99_ms"] if y["p99_ms"] else float("nan")
            print(f"| {name} | {fmt(x['per_second'], 0)} | {fmt(y['per_second'], 0)} | {fmt(tput, 2)}× "
                  f"| {fmt(x['p50_ms'], 2)} / {fmt(x['p99_ms'], 2)} | {fmt(y['p50_ms'], 2)} / {fmt(y['p99_ms'], 2)} "
                  f"| {fmt(p99, 2)}× | {x['errors']} / {y['errors']} |")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
