#!/usr/bin/env bash
# Chart checks: lints and renders helm/shcr for the default, production-like and ci/ values, and
# validates every rendered manifest against the Kubernetes schemas (scripts/helm-check.py).
#
#     scripts/helm-check.sh
#
# The tools come from PyPI, pinned in scripts/helm-check.requirements.txt: helm-python-sdk
# (Helm's own Go library, no helm binary) and kubernetes-validate (the Kubernetes OpenAPI schemas,
# bundled). They are installed once into target/tools/helm-venv; later runs are offline.
set -euo pipefail
script_name=helm-check
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"

requirements=$repo/scripts/helm-check.requirements.txt
venv=${SHCR_TOOLS_DIR:-$repo/target/tools}/helm-venv
stamp=$venv/.requirements.sha256
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)

if [[ ! -x $venv/bin/python || ! -f $stamp || $(<"$stamp") != "$wanted" ]]; then
    command -v python3 >/dev/null || apt_install "the chart checks need Python" python3 python3-venv
    python3 -m venv --help >/dev/null 2>&1 || apt_install "the chart checks need venv" python3-venv
    log "installing the chart tools into $venv (once; pinned in ${requirements#"$repo"/})"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$requirements" ||
        die "pip could not install the chart tools (from PyPI, see $requirements)"
    echo "$wanted" >"$stamp"
fi

# Helm's loader logs every symbolic link it follows (files/ links to the data folders); the rest
# of its output, and the script's own, passes through.
"$venv/bin/python" "$repo/scripts/helm-check.py" 2> >(grep -v 'found symbolic link in path' >&2)
