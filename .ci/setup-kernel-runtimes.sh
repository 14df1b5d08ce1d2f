#!/usr/bin/env bash
# Install what the CubeCL kernel runtimes need on Debian bookworm, idempotently (run as root):
#   - wgpu over Mesa lavapipe (software Vulkan): mesa-vulkan-drivers, libvulkan1;
#   - cubecl `cpu`/`cuda` (cubecl-llvm): Debian's LLVM 22 (llvm-22-dev, libzstd-dev) presented to
#     tracel-llvm-bundler as an installed LLVM 23.1 bundle (the "shim", see docs/BUILD.md), because the
#     bundler's own download cannot reach GitHub here.
# Prints the environment variables to export afterwards (XDG_DATA_HOME only for cargo commands).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKGS=(mesa-vulkan-drivers libvulkan1 llvm-22-dev libzstd-dev)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The shim: the path the bundler derives from $XDG_DATA_HOME (tracel/tracel-llvm-<version>).
SHIM_ROOT="$REPO/.ci/llvm-shim"
SHIM="$SHIM_ROOT/tracel/tracel-llvm-23.1.0-4"
mkdir -p "$SHIM/bin"
ln -sfn /usr/lib/llvm-22/lib "$SHIM/lib"
ln -sfn /usr/lib/llvm-22/include "$SHIM/include"
# --link-static: Debian's llvm-config defaults to the shared lib; Polly exists only as a plugin;
# the absolute z3 path must become -lz3.
printf '%s\n' '#!/bin/sh' \
  '/usr/lib/llvm-22/bin/llvm-config --link-static "$@" | sed -e "s#/usr/lib/x86_64-linux-gnu/libz3.so#-lz3#g; s#-lPollyISL##g; s#-lPolly##g"' \
  > "$SHIM/bin/llvm-config"
chmod +x "$SHIM/bin/llvm-config"
touch "$SHIM/.tracel-llvm-installed"   # marker: the bundler skips the download

# Mesa wants a private runtime dir.
RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}"
mkdir -p "$RUNTIME_DIR"; chmod 0700 "$RUNTIME_DIR"

echo "# kernel runtimes ready; export these (XDG_DATA_HOME on cargo commands that build cubecl cpu/cuda):"
echo "export XDG_RUNTIME_DIR=$RUNTIME_DIR"
echo "export XDG_DATA_HOME=$SHIM_ROOT"
