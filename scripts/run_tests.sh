#!/usr/bin/env bash
# make test: the test suite (pytest) and the committed notebooks (nbval, `make test-notebooks`)
# side by side. The suite keeps about one of two cores busy (imports, kernel starts, scheduler
# waits), so the notebooks' run (about two minutes, mostly kernel starts) fits beside it. Its
# output is printed after pytest's; the exit status is pytest's, or nbval's if pytest passed.
#   scripts/run_tests.sh PYTHON [pytest args...]
set -uo pipefail
py=${1:?usage: scripts/run_tests.sh PYTHON [pytest args...]}
shift
mkdir -p runs
log=runs/nbval.log
# its own session (setsid), so that an interrupted or failed suite ends the whole nbval run too
setsid make --no-print-directory test-notebooks >"$log" 2>&1 &
nb=$!
trap 'kill -- -"$nb" 2>/dev/null' EXIT
"$py" -m pytest "$@"
rc=$?
wait "$nb"
nbrc=$?
trap - EXIT
echo "== the committed notebooks (nbval, run alongside pytest; log: $log):"
cat "$log"
[ "$rc" -ne 0 ] && exit "$rc"
exit "$nbrc"
