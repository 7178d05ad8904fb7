#!/usr/bin/env bash
# The test command: formatting, lints and every test, against real PostgreSQL and NATS.
#
#     scripts/test.sh [extra `cargo test` arguments]
#
# Installs what is missing (the pinned Rust toolchain's rustfmt and clippy; PostgreSQL or NATS
# when no server can be reached), runs each step even after an earlier one failed, and exits
# non-zero if any failed.
set -euo pipefail
script_name=test
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"

started=$SECONDS
failed=()
results=()

section() { printf '\n==== %s ====\n' "$*"; }

# step NAME COMMAND... — runs a step, records its outcome and time.
step() {
    local name=$1 begun=$SECONDS status=0
    shift
    section "$name"
    "$@" || status=$?
    local took
    took=$(duration $((SECONDS - begun)))
    if [[ $status -eq 0 ]]; then
        results+=("ok      $name ($took)")
    else
        results+=("FAILED  $name ($took, exit $status)")
        failed+=("$name")
    fi
}

section "Rust toolchain"
ensure_toolchain
cargo --version
rustc --version

section "Services"
# Assigned first, so that a failure stops here instead of vanishing inside eval.
exports=$("$repo/scripts/ensure-services.sh")
eval "$exports"
# The embedded cluster behind `shcr demo` has its own test, which runs initdb and pg_ctl.
ensure_pg_server "the embedded PostgreSQL test" >/dev/null
printf 'DATABASE_URL=%s\nNATS_URL=%s\n' "$DATABASE_URL" "$NATS_URL"

if [[ ${CI:-} == true ]]; then
    # A fresh clone builds everything once: incremental data would only cost time and disk.
    export CARGO_INCREMENTAL=0
fi
if [[ -d $repo/.sqlx ]]; then
    # sqlx's query! macros check against the prepared .sqlx/ data, not the admin database above.
    export SQLX_OFFLINE=true
fi

step "cargo fmt" cargo fmt --all -- --check
# The Helm chart: lint, render (default, production-like and ci/ values) and schema validation.
step "helm chart" "$repo/scripts/helm-check.sh"
# tests/governance renders the developer portal in headless Chromium.
CHROMIUM_PATH=$(ensure_chromium "the developer portal test renders /docs in headless Chromium")
export CHROMIUM_PATH
printf 'CHROMIUM_PATH=%s\n' "$CHROMIUM_PATH"
# The real OIDC provider (npm oidc-provider) that tests/oidc.rs starts on loopback.
step "oidc provider" "$repo/scripts/oidc-provider.sh"
step "cargo clippy" cargo clippy --locked --all-targets -- -D warnings

test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
run_tests() {
    local status=0
    cargo test --locked "$@" 2>&1 | tee "$test_log" || status=${PIPESTATUS[0]}
    return "$status"
}
step "cargo test" run_tests "$@"

# One line with every test binary's counts added up.
read -r passed failed_tests ignored < <(
    sed -nE 's/^test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/p' "$test_log" |
        awk '{p += $1; f += $2; i += $3} END {print p + 0, f + 0, i + 0}'
)

section "Summary"
printf '%s\n' "${results[@]}"
printf 'total time %s\n' "$(duration $((SECONDS - started)))"
if [[ ${#failed[@]} -gt 0 ]]; then
    printf 'failed: %s\n' "${failed[*]}"
fi
printf 'tests: %d passed, %d failed, %d skipped\n' "$passed" "$failed_tests" "$ignored"
[[ ${#failed[@]} -eq 0 ]]
