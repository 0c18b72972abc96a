#!/usr/bin/env bash
# Install Debian/Ubuntu packages for the project's setup scripts (install_pdf_deps.sh,
# install_wordnet.sh): as root or through sudo, the package lists refreshed only when they are
# missing or older than a day.
#
#   scripts/apt_install.sh "HINT WITHOUT APT" PACKAGE...
#
# HINT is printed after "error: no apt-get; " where apt-get is missing.
set -euo pipefail

hint="$1"
shift
if ! command -v apt-get >/dev/null; then
  echo "error: no apt-get; $hint" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing: $*"
export DEBIAN_FRONTEND=noninteractive
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
  $SUDO apt-get update -qq
fi
$SUDO apt-get install -y -qq --no-install-recommends "$@"
