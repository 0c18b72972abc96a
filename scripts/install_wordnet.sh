#!/usr/bin/env bash
# Install WordNet 3.0 (Debian/Ubuntu package wordnet-base: /usr/share/wordnet/data.noun with its
# hypernym pointers), read by ranking_lib.retrieval.semantic for the WordNet-graded metrics.
# Idempotent: returns at once when the files are there. Without them `evaluate` still computes
# every class-level metric and says in one line that the WordNet-graded ones were left out.
#
#   sudo scripts/install_wordnet.sh        (or as root; `make setup` calls it)
#
# About 6.5 MB download (28 MB installed), no dependencies.
set -euo pipefail

if [ -f /usr/share/wordnet/data.noun ]; then
  echo "WordNet already installed (/usr/share/wordnet/data.noun)"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "error: no apt-get; install WordNet 3.0 by hand (Debian package wordnet-base) and pass --wordnet-dir" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing: wordnet-base"
export DEBIAN_FRONTEND=noninteractive
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
  $SUDO apt-get update -qq
fi
$SUDO apt-get install -y -qq --no-install-recommends wordnet-base
test -f /usr/share/wordnet/data.noun && echo "WordNet installed: /usr/share/wordnet/data.noun"
