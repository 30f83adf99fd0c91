#!/usr/bin/env bash
# Installs every Debian 12 package infergrid needs to build, run and test.
# Idempotent: when everything is present it only checks with dpkg and exits.
set -euo pipefail

packages=(
  # toolchain
  g++ make cmake ninja-build ccache pkg-config git
  # libraries
  libcaf-dev libtorch-dev libboost1.81-dev libsqlite3-dev libspdlog-dev libfmt-dev
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev
  # runtime: a real BLAS for LibTorch (netlib is 10-20x slower), sqlite3 for inspection
  libopenblas0-pthread sqlite3
  # test clients
  curl python3 python3-requests python3-websockets
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
