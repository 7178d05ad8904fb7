#!/usr/bin/env bash
# The run command: builds shcr and runs its demo on this machine.
#
#     scripts/demo.sh [shcr demo options, e.g. --data-dir ./.shcr]
#
# Without a DATABASE_URL, `shcr demo` runs a private PostgreSQL in its data folder; this script
# installs the PostgreSQL server programs (Debian package postgresql) if they are missing.
# Relative paths in the options are taken from the folder you run this from.
set -euo pipefail
script_name=demo
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_toolchain
if [[ -z ${DATABASE_URL:-} ]]; then
    bindir=$(ensure_pg_server "shcr demo runs its own PostgreSQL and")
    log "PostgreSQL server programs: $bindir"
fi

log "building shcr (release; the first build takes a few minutes)"
# In the repository, so that rust-toolchain.toml picks the pinned toolchain.
(cd "$repo" && cargo build --release --locked)
target_dir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    sed -nE 's/.*"target_directory":"([^"]*)".*/\1/p')
[[ -n $target_dir ]] || target_dir=$repo/target

exec "$target_dir/release/shcr" demo "$@"
