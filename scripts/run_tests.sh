#!/usr/bin/env bash
# make test: the test suite (pytest) in two processes over disjoint test files, and the committed
# notebooks (nbval, `make test-notebooks`), side by side.
#
# One pytest process keeps about one of two cores busy (imports, kernel and server starts,
# scheduler waits); the files that mostly start other processes (notebook runs, the browser,
# torchrun, Slurm, the install) run in a second one, the notebooks' nbval run in a third. The
# outputs of the second and third follow the first's; the exit status is the first non-zero of
# the three, in that order.
#   scripts/run_tests.sh PYTHON [pytest args for every pytest process...]
set -uo pipefail
py=${1:?usage: scripts/run_tests.sh PYTHON [pytest args...]}
shift
# Threads that wait for work sleep instead of spinning: with three processes on two cores, torch's
# OpenMP threads spinning for their next parallel region took the cores from the others (three
# copies of one training test side by side: 135 s spinning, 67 s passive, on the 2-core EPYC).
export OMP_WAIT_POLICY=PASSIVE
SECOND=(tests/test_browser.py tests/training/test_distributed.py tests/test_install.py tests/test_notebooks.py tests/test_slurm.py)
mkdir -p runs
second_log=runs/pytest-second.log nbval_log=runs/nbval.log
# each in its own session (setsid), so that an interrupted or failed run ends all of it
setsid "$py" -m pytest -p no:cacheprovider "$@" "${SECOND[@]}" >"$second_log" 2>&1 &
second=$!
setsid make --no-print-directory test-notebooks >"$nbval_log" 2>&1 &
nbval=$!
trap 'kill -- -"$second" -"$nbval" 2>/dev/null' EXIT
"$py" -m pytest "$@" "${SECOND[@]/#/--ignore=}"
rc=$?
wait "$second"
rc2=$?
wait "$nbval"
rc3=$?
trap - EXIT
echo "== the second pytest process (${SECOND[*]}; log: $second_log):"
cat "$second_log"
echo "== the committed notebooks (nbval; log: $nbval_log):"
cat "$nbval_log"
for code in "$rc" "$rc2" "$rc3"; do
    [ "$code" -ne 0 ] && exit "$code"
done
exit 0
