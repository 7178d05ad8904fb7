#!/usr/bin/env bash
# The benchmark harness: one command that measures shcr (and, side by side, a peer FHIR server)
# on this machine and writes BENCHMARKS.md tables.
#
#     scripts/bench.sh [--persons N] [--seconds S] [--clients C] [--compare-helios] [--write]
#
# For each server: a fresh database on the PostgreSQL server of DATABASE_URL (found or started by
# scripts/ensure-services.sh), the server started as its own process on a loopback port, then
#   1. `shcr bench --target-url …`: the generated population's transaction Bundles posted by
#      --ingest-concurrency clients, then read / vread / update of random Observations by
#      --clients concurrent clients (warm-up first), timed per request;
#   2. wrk (Debian package) with scripts/bench-read.lua: read and vread by the same number of
#      connections, a load generator outside both servers' processes.
# Phases of later issues (search mix, $everything, matching, events) run when `shcr bench
# --phases` knows them; until then they are listed as not available.
#
# --compare-helios also measures helios-hfs (the Rust FHIR server published as helios-hfs, with
# its PostgreSQL backend), built outside the repository under $HFS_ROOT (default
# /tmp/helios-hfs) with `cargo install`, on the same data, concurrency and PostgreSQL server. One
# server runs at a time. Results (JSON) and the report go to target/bench/<time>/; --write
# appends the report to BENCHMARKS.md.
set -euo pipefail
script_name=bench
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"

persons=1000
trusts=6
seconds=15
warmup=3
clients=32
ingest_concurrency=4
compare=false
write=false
literal=false
while [[ $# -gt 0 ]]; do
    case $1 in
    --persons) persons=$2 && shift ;;
    --trusts) trusts=$2 && shift ;;
    --seconds) seconds=$2 && shift ;;
    --warmup) warmup=$2 && shift ;;
    --clients) clients=$2 && shift ;;
    --ingest-concurrency) ingest_concurrency=$2 && shift ;;
    --compare-helios) compare=true ;;
    --literal-references) literal=true ;;
    --write) write=true ;;
    -h | --help)
        sed -n '2,22p' "$0"
        exit 0
        ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
# helios-hfs does not resolve conditional references inside a transaction (its README lists
# this as not implemented); the comparison sends both servers the same Bundles with those
# references made literal.
if $compare; then literal=true; fi

ensure_toolchain
command -v wrk >/dev/null || apt_install "the benchmark's load generator is wrk" wrk
command -v psql >/dev/null || apt_install "the benchmark creates its databases with psql" postgresql-client
eval "$("$repo/scripts/ensure-services.sh")"
admin_url=$DATABASE_URL

# Its own target folder unless told otherwise: a CARGO_TARGET_DIR shared with other checkouts
# can have another checkout's binary written over ours between the build and its use.
target_dir=${SHCR_BENCH_TARGET_DIR:-$repo/target}
log "building shcr (release, in ${target_dir})"
CARGO_TARGET_DIR=$target_dir cargo build --release --locked >&2
out=$repo/target/bench/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
log "results in ${out#"$repo"/}"
# A private copy, so that a rebuild during the run cannot change what is measured.
cp "$target_dir/release/shcr" "$out/shcr"
shcr=$out/shcr

free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 12000))
        if ! timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$port" 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free port"
}

db_url() { echo "${admin_url%/*}/$1"; }
create_db() { psql -X -q -d "$admin_url" -c "CREATE DATABASE $1" >/dev/null; }
drop_db() { psql -X -q -d "$admin_url" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null || true; }

server_pid=
server_db=
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ -n $server_db ]]; then drop_db "$server_db"; fi
}
trap cleanup EXIT

# wait_for URL LOG — until URL answers 200 (60 s).
wait_for() {
    local deadline=$((SECONDS + 60))
    until curl -fsS -o /dev/null "$1" 2>/dev/null; do
        kill -0 "$server_pid" 2>/dev/null || {
            tail -n 20 "$2" >&2
            die "the server stopped; log: $2"
        }
        ((SECONDS < deadline)) || die "no answer from $1 within 60 s; log: $2"
        sleep 0.2
    done
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    drop_db "$server_db"
    server_db=
}

# measure LABEL BASE [TOKEN [EXTRA BENCH ARGS...]] — shcr bench and wrk against a running server.
measure() {
    local label=$1 base=$2 token=${3:-}
    shift $(($# < 3 ? $# : 3))
    local args=(bench --target-url "$base" --label "$label" --persons "$persons" --trusts "$trusts"
        --seconds "$seconds" --warmup "$warmup" --clients "$clients"
        --ingest-concurrency "$ingest_concurrency" --json "$out/$label.json"
        --ids-out "$out/$label-ids.txt" "$@")
    if $literal; then args+=(--literal-references); fi
    log "$label: shcr bench (ingest, read, vread, update)"
    BENCH_TOKEN=$token RUST_LOG=warn "$shcr" "${args[@]}" | tee "$out/$label-bench.txt" >&2
    local kind suffix
    for kind in read vread; do
        suffix=
        [[ $kind == vread ]] && suffix=/_history/1
        log "$label: wrk $kind (2 threads, $clients connections, ${warmup}s warm-up, ${seconds}s)"
        BENCH_IDS=$out/$label-ids.txt BENCH_TOKEN=$token BENCH_PATH_SUFFIX=$suffix \
            wrk -t2 -c"$clients" -d"${warmup}s" -s scripts/bench-read.lua "$base" >/dev/null
        BENCH_IDS=$out/$label-ids.txt BENCH_TOKEN=$token BENCH_PATH_SUFFIX=$suffix \
            wrk -t2 -c"$clients" -d"${seconds}s" --latency -s scripts/bench-read.lua "$base" \
            >"$out/$label-wrk-$kind.txt"
        sed -n 's/^WRK_JSON //p' "$out/$label-wrk-$kind.txt" >"$out/$label-wrk-$kind.json"
        cat "$out/$label-wrk-$kind.json" >&2
    done
}

# --- shcr ------------------------------------------------------------------------------------
server_db=shcr_bench_$$
create_db "$server_db"
port=$(free_port)
log "shcr: serving on 127.0.0.1:$port (database $server_db)"
DATABASE_URL=$(db_url "$server_db") SHCR_HOST=127.0.0.1 SHCR_PORT=$port \
    SHCR_DEV_ISSUER__ENABLED=true SHCR_DEV_ISSUER__KEY_FILE=$out/dev-issuer.pem \
    SHCR_DB_MAX_CONNECTIONS=32 SHCR_MAX_BODY_BYTES=67108864 RUST_LOG=warn \
    SHCR_ACCESS__ENFORCE=false SHCR_ACCESS__AUDIT=false \
    "$shcr" serve >"$out/shcr.log" 2>&1 &
server_pid=$!
wait_for "http://127.0.0.1:$port/readyz" "$out/shcr.log"
token=$(SHCR_DEV_ISSUER__KEY_FILE=$out/dev-issuer.pem "$shcr" token --trust RX1 --ttl 7200 \
    --issuer "http://127.0.0.1:$port/dev-issuer")
# Each Bundle is posted as the trust that owns it (shcr refuses a trust's system writing another
# trust's records). Access control and audit are off here: the peer has neither, and
# `shcr bench --phases ingest,access` measures their cost on the same data.
measure shcr "http://127.0.0.1:$port/fhir" "$token" \
    --dev-issuer-key "$out/dev-issuer.pem" --dev-issuer-url "http://127.0.0.1:$port/dev-issuer"
# For the scale story (docs/scaling.md): bytes per stored version, and how fast every version's
# JSON can be read back, the first stage of an index rebuild.
db=$(db_url "$server_db")
psql -X -q -A -t -d "$db" -c "SELECT json_build_object(
    'versions', (SELECT count(*) FROM resource_version),
    'database_bytes', pg_database_size(current_database()),
    'resource_version_bytes', pg_total_relation_size('resource_version'),
    'resource_version_content_bytes', (SELECT sum(pg_column_size(content)) FROM resource_version),
    'change_feed_bytes', pg_total_relation_size('change_feed'))" >"$out/shcr-storage.json"
scan_started=$(date +%s.%N)
psql -X -q -d "$db" -c "\copy (SELECT content FROM resource_version) TO '/dev/null'"
scan_seconds=$(awk -v a="$scan_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
printf '{"scan_seconds": %s}\n' "$scan_seconds" >"$out/shcr-scan.json"
log "storage: $(cat "$out/shcr-storage.json"); full scan of the versions' JSON: ${scan_seconds}s"
# An index rebuild from PostgreSQL (`shcr reindex`) into a fresh folder, timed: the rate behind
# the rebuild estimates of docs/scaling.md.
reindex_line=$(DATABASE_URL=$db RUST_LOG=warn "$shcr" reindex --index-dir "$out/index" | tail -n 1)
log "reindex: $reindex_line"
read -r indexed reindex_seconds < <(sed -nE 's/^indexed ([0-9]+) resources .* in ([0-9.]+)s.*/\1 \2/p' <<<"$reindex_line")
printf '{"resources": %s, "seconds": %s, "index_bytes": %s}\n' "${indexed:-0}" "${reindex_seconds:-0}" \
    "$(du -sb "$out/index" | cut -f1)" >"$out/shcr-reindex.json"
rm -rf "$out/index"
stop_server

# --- helios-hfs --------------------------------------------------------------------------------
if $compare; then
    hfs_root=${HFS_ROOT:-/tmp/helios-hfs}
    hfs=${HFS_BIN:-$hfs_root/bin/hfs}
    if [[ ! -x $hfs ]]; then
        log "building helios-hfs 0.2.7 (PostgreSQL backend) under $hfs_root; the first build takes a while"
        CARGO_TARGET_DIR=$hfs_root/target cargo install helios-hfs --version 0.2.7 --locked \
            --no-default-features --features R4,postgres --root "$hfs_root" >&2
    fi
    # Its search-parameter data directory: the R4 definitions shcr ships, under the name hfs reads.
    mkdir -p "$out/hfs-data"
    if [[ -f search-params/r4-core.json ]]; then
        cp search-params/r4-core.json "$out/hfs-data/search-parameters-r4.json"
    fi
    server_db=hfs_bench_$$
    create_db "$server_db"
    port=$(free_port)
    log "helios-hfs: serving on 127.0.0.1:$port (database $server_db)"
    HFS_STORAGE_BACKEND=postgres HFS_UI_ENABLED=false HFS_BASE_URL=http://127.0.0.1:$port HFS_LOG_LEVEL=warn \
        HFS_REQUEST_TIMEOUT=300 \
        "$hfs" --host 127.0.0.1 --port "$port" --database-url "$(db_url "$server_db")" \
        --data-dir "$out/hfs-data" --max-body-size 67108864 >"$out/helios-hfs.log" 2>&1 &
    server_pid=$!
    wait_for "http://127.0.0.1:$port/health" "$out/helios-hfs.log"
    "$hfs" --version >"$out/helios-hfs-version.txt" 2>&1 || true
    measure helios-hfs "http://127.0.0.1:$port"
    stop_server
fi

python3 "$repo/scripts/bench-report.py" "$out" >"$out/report.md"
cat "$out/report.md"
if $write; then
    printf '\n%s\n' "$(cat "$out/report.md")" >>"$repo/BENCHMARKS.md"
    log "appended to BENCHMARKS.md"
fi
