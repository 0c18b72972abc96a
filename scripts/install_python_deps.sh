#!/usr/bin/env bash
# Install the project and its Python dependencies into a venv (`make setup` calls it):
#
#   scripts/install_python_deps.sh .venv '.[dev]'        (the venv must exist)
#
# With uv (installed into the venv with pip), which unpacks the wheels in parallel and reuses its
# cache: the 2.7 GB of torch wheels (torch and its CUDA libraries) take about a third of pip's
# time. uv follows pip's own settings (`pip config list`: extra index URLs, find-links and
# constraint files, in pip's order; equal versions come from the first index that has them, as
# with pip). Where uv cannot be installed or fails, plain `pip install -e` does the same job.
# RANKING_INSTALLER=pip skips uv.
set -euo pipefail
venv=${1:?usage: install_python_deps.sh VENV SPEC}
spec=${2:?usage: install_python_deps.sh VENV SPEC}
py="$venv/bin/python"

with_pip() { "$py" -m pip install -e "$spec"; }

if [ "${RANKING_INSTALLER:-uv}" = pip ] || ! "$py" -m pip install -q uv; then
  with_pip
  exit 0
fi

# pip's settings, e.g. global.extra-index-url='a b' or :env:.find-links='/x', as uv flags
flags=()
while IFS= read -r line; do
  key=${line%%=*}
  value=${line#*=}
  value=${value#\'}
  value=${value%\'}
  case "${key##*.}" in
    index-url) flags+=(--index-url "$value") ;;
    extra-index-url) for v in $value; do flags+=(--extra-index-url "$v"); done ;;
    find-links) for v in $value; do flags+=(--find-links "$v"); done ;;
    constraint) for v in $value; do [ -f "$v" ] && flags+=(--constraint "$v"); done ;;
  esac
done < <("$py" -m pip config list 2>/dev/null)

if ! "$venv/bin/uv" pip install --python "$py" --index-strategy unsafe-best-match --compile-bytecode \
    "${flags[@]}" -e "$spec"; then
  echo "uv could not install $spec: installing with pip" >&2
  with_pip
fi
