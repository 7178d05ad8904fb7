#!/usr/bin/env bash
# Installs the OIDC test provider (npm oidc-provider, pinned by tests/oidc/package-lock.json)
# that tests/oidc.rs starts on loopback.
#
#     scripts/oidc-provider.sh
#
# Runs `npm ci` only when tests/oidc/node_modules does not match the lock file; later runs are
# offline. Installs Debian's nodejs and npm if node is missing (oidc-provider 9 wants Node 20+).
set -euo pipefail
script_name=oidc-provider
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dir=$repo/tests/oidc
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install "the OIDC provider test runs on Node.js" nodejs npm
fi
major=$(node --version | sed -E 's/^v([0-9]+).*/\1/')
((major >= 20)) || log "warning: Node $(node --version) is older than oidc-provider 9 supports (20+)"

stamp=$dir/node_modules/.shcr-lock.sha256
wanted=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [[ -f $stamp && $(<"$stamp") == "$wanted" && -f $dir/node_modules/oidc-provider/package.json ]]; then
    log "oidc-provider installed ($(node -p "require('$dir/node_modules/oidc-provider/package.json').version"))"
    exit 0
fi
log "installing the OIDC test provider (npm ci in ${dir#"$repo"/})"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in $dir"
echo "$wanted" >"$stamp"
