#!/usr/bin/env bash
# Installs what runtime/cpp (the C++ runtime wan-rt-cpp) needs to build, from Debian's packages:
# a C++17 compiler, CMake, nlohmann-json, OpenSSL's libcrypto (sha256) and libcurl (Triton over HTTP).
# Idempotent and quiet: when everything is installed it only asks dpkg and returns in well under a second.
# Needs root (or sudo) only when something is missing.
#   scripts/setup_cpp.sh           install what is missing
#   scripts/setup_cpp.sh --check   install nothing: exit 1 naming what is missing
set -euo pipefail

PACKAGES=(g++ make cmake pkg-config nlohmann-json3-dev libssl-dev libcurl4-openssl-dev)

missing=()
for package in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    [[ "$status" == "installed" ]] || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ "${1:-}" == "--check" ]]; then
    echo "setup_cpp.sh: missing ${missing[*]}; run scripts/setup_cpp.sh (as root) to install them" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_cpp.sh: no apt-get here; install the equivalents of: ${missing[*]}" >&2
    exit 1
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "setup_cpp.sh: run as root to install: ${missing[*]} (apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi
echo "setup_cpp.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${SUDO[@]}" apt-get update -qq && \
       "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "setup_cpp.sh: apt-get failed installing ${missing[*]} (log above)" >&2
    exit 1
fi
