#!/usr/bin/env bash
# Installs the Debian packages tfkd needs (TTS engines and voices, text sources, audio tools)
# when any is missing. Without root it prints the exact command instead and fails.
set -euo pipefail
PACKAGES=(
  espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
  sox libsndfile1 flac wordnet-base bible-kjv bible-kjv-text
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=sudo
  else
    echo "tfkd needs these Debian packages: ${missing[*]}" >&2
    echo "Run as root: apt-get update && $cmd" >&2
    exit 1
  fi
fi
echo "Installing Debian packages: ${missing[*]}"
${SUDO:-} env DEBIAN_FRONTEND=noninteractive apt-get update -qq
${SUDO:-} env DEBIAN_FRONTEND=noninteractive $cmd -qq >/dev/null
