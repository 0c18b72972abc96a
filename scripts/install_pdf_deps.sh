#!/usr/bin/env bash
# Install the PDF toolchain of the report (nbconvert's LaTeX route: pandoc + XeLaTeX) on
# Debian/Ubuntu. Idempotent: returns at once when everything is already there.
#
#   sudo scripts/install_pdf_deps.sh        (or as root; `make setup` calls it)
#
# ~115 MB download, about 1 minute on a fresh Debian 12 machine. poppler-utils (pdftoppm,
# pdftotext) is included to look at the rendered pages.
set -euo pipefail

PACKAGES=(pandoc texlive-xetex texlive-fonts-recommended texlive-plain-generic lmodern poppler-utils)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ] && command -v xelatex >/dev/null && command -v pandoc >/dev/null; then
  echo "PDF toolchain already installed (xelatex, pandoc)"
  exit 0
fi

"$(dirname "$0")/apt_install.sh" "install by hand: ${missing[*]} (or use --no-pdf for an HTML report)" "${missing[@]}"
xelatex --version | head -1
pandoc --version | head -1
