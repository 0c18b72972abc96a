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
"$(dirname "$0")/apt_install.sh" "install WordNet 3.0 by hand (Debian package wordnet-base) and pass --wordnet-dir" \
  wordnet-base
test -f /usr/share/wordnet/data.noun && echo "WordNet installed: /usr/share/wordnet/data.noun"
