# Helpers shared by scripts/test.sh, scripts/demo.sh and scripts/ensure-services.sh.
# Sourced, not run. Messages go to stderr so that ensure-services.sh's stdout stays eval-able.
# shellcheck shell=bash

# Failures inside $(...) stop the script too, not only the subshell.
shopt -s inherit_errexit

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '%s: %s\n' "${script_name:-shcr}" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# apt_install REASON PACKAGE... — installs Debian packages without questions; as root, or through
# sudo when it needs no password.
apt_install() {
    local reason=$1
    shift
    command -v apt-get >/dev/null ||
        die "$reason, and apt-get is not here: install the packages $* with this system's package manager"
    local sudo=()
    if ! is_root; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            die "$reason: run this as root, or install them first: sudo apt-get install -y $*"
        fi
    fi
    log "$reason: installing $* (apt-get install -y $*)"
    # A fresh machine may have no package lists yet; a failing mirror must not stop an install
    # that the lists already allow.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
        log "warning: apt-get update failed; trying the install with the lists already here"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >&2 ||
        die "apt-get install $* failed"
}

# --- PostgreSQL server programs --------------------------------------------------------------

has_pg_server() { [[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres ]]; }

# pg_bindir [MAJOR] — prints the folder holding initdb, pg_ctl and postgres: the given major
# version's Debian folder first (an existing cluster needs its own version), then
# `pg_config --bindir`, then the highest /usr/lib/postgresql/N/bin, then pg_ctl's folder in PATH.
pg_bindir() {
    local dir
    if [[ -n ${1:-} ]] && has_pg_server "/usr/lib/postgresql/$1/bin"; then
        echo "/usr/lib/postgresql/$1/bin"
        return 0
    fi
    if command -v pg_config >/dev/null && dir=$(pg_config --bindir 2>/dev/null) && has_pg_server "$dir"; then
        echo "$dir"
        return 0
    fi
    local versions
    versions=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | grep -E '^[0-9]+$' | sort -rn || true)
    for dir in $versions; do
        if has_pg_server "/usr/lib/postgresql/$dir/bin"; then
            echo "/usr/lib/postgresql/$dir/bin"
            return 0
        fi
    done
    if dir=$(command -v pg_ctl) && dir=$(dirname "$(readlink -f "$dir")") && has_pg_server "$dir"; then
        echo "$dir"
        return 0
    fi
    return 1
}

# ensure_pg_server REASON — prints the server programs' folder, installing `postgresql` if needed.
ensure_pg_server() {
    local dir
    if dir=$(pg_bindir); then
        echo "$dir"
        return 0
    fi
    apt_install "$1 needs the PostgreSQL server programs (initdb, pg_ctl, postgres)" postgresql
    dir=$(pg_bindir) || die "postgresql is installed but initdb/pg_ctl/postgres are still not found"
    echo "$dir"
}

# --- Chromium (the developer portal test renders /docs in a real browser) -------------------

# ensure_chromium REASON — prints the path of a Chromium that can run headless, installing
# Debian's `chromium` if none is here.
ensure_chromium() {
    local name path
    for name in chromium chromium-browser google-chrome; do
        if path=$(command -v "$name"); then
            echo "$path"
            return 0
        fi
    done
    apt_install "$1" chromium
    path=$(command -v chromium) || die "chromium is installed but not on the PATH"
    echo "$path"
}

# --- Rust toolchain --------------------------------------------------------------------------

# The toolchain pinned in rust-toolchain.toml, with rustfmt and clippy.
ensure_toolchain() {
    local channel
    channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$repo/rust-toolchain.toml")
    [[ -n $channel ]] || die "no channel in $repo/rust-toolchain.toml"
    if ! command -v rustup >/dev/null; then
        command -v cargo >/dev/null ||
            die "no Rust toolchain: install rustup, then run this again (it installs Rust $channel)"
        log "warning: rustup is not here, so the pinned Rust $channel cannot be selected; using $(cargo --version)"
        return 0
    fi
    if ! rustup run "$channel" rustc --version >/dev/null 2>&1; then
        log "installing Rust $channel (pinned in rust-toolchain.toml)"
        rustup toolchain install "$channel" --profile minimal --component rustfmt,clippy >&2 ||
            die "could not install Rust $channel"
    fi
    local installed missing=()
    installed=$(rustup component list --toolchain "$channel" --installed 2>/dev/null || true)
    local component
    for component in rustfmt clippy; do
        grep -q "^$component" <<<"$installed" || missing+=("$component")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "adding ${missing[*]} to Rust $channel"
        rustup component add --toolchain "$channel" "${missing[@]}" >&2 ||
            die "could not add ${missing[*]} to Rust $channel"
    fi
}

# duration SECONDS — "3m07s"
duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
