#!/bin/bash
# The papermill pipeline (all notebooks -> PDF report) as a batch job, for any scheduler.
# Called by slurm/report.sbatch and pbs/report.pbs from the repository root, with:
#   PROFILE (default gpu), DATA (dataset root, required unless the profile has one), RUN (run dir),
#   RUNNER_ARGS (extra flags for report/run_pipeline.py, e.g. "--no-pdf"),
#   REQUEUE_CMD (how to put this job back in the queue), RESTARTS / MAX_RESTARTS,
#   REQUEUED_MARK (a file touched when the job is requeued, before the requeue command runs:
#   that command may end this script, as scontrol requeue does; removed if the requeue fails).
# Exit status: the runner's (0 done, 1 a notebook failed, 2 bad settings, 3 PDF failed,
# 4 a notebook's kernel died). A dead kernel (out of memory, node trouble) requeues the job up
# to MAX_RESTARTS times; training resumes from its last checkpoint, so nothing is redone.
set -uo pipefail
PROFILE=${PROFILE:-gpu}
RUN=${RUN:-runs/$PROFILE}
PYTHON=${PYTHON:-.venv/bin/python}
MAX_RESTARTS=${MAX_RESTARTS:-2}
RESTARTS=${RESTARTS:-0}

# The Jupyter kernel is pinned to this checkout's interpreter (the runner checks that the
# `python3` kernelspec under .venv runs it); per-job runtime dirs keep concurrent jobs' kernel
# connection files apart on a shared home directory.
export JUPYTER_RUNTIME_DIR=${TMPDIR:-/tmp}/jupyter-runtime-${JOB_ID:-$$}
mkdir -p "$JUPYTER_RUNTIME_DIR"
export RANKING_PROGRESS=lines

if [ ! -x "$PYTHON" ]; then
    make setup || { echo "error: make setup failed" >&2; exit 2; }
fi
args=(report/run_pipeline.py --profile "$PROFILE" --run-dir "$RUN")
[ -n "${DATA:-}" ] && args+=(--data-dir "$DATA")
# shellcheck disable=SC2206  # RUNNER_ARGS is a list of flags
[ -n "${RUNNER_ARGS:-}" ] && args+=(${RUNNER_ARGS})
echo "job ${JOB_ID:-local} on $(hostname): $PYTHON ${args[*]} (restart $RESTARTS of $MAX_RESTARTS)"
"$PYTHON" "${args[@]}"
rc=$?
if [ "$rc" -eq 4 ]; then
    if [ "$RESTARTS" -lt "$MAX_RESTARTS" ] && [ -n "${REQUEUE_CMD:-}" ]; then
        echo "a kernel died (exit 4): requeueing ($REQUEUE_CMD); the next attempt resumes from the last checkpoint" >&2
        # the mark goes down first: the scheduler may end this script while the requeue runs
        [ -n "${REQUEUED_MARK:-}" ] && touch "$REQUEUED_MARK"
        if eval "$REQUEUE_CMD"; then
            exit 0
        fi
        [ -n "${REQUEUED_MARK:-}" ] && rm -f "$REQUEUED_MARK"
        echo "error: requeue failed" >&2
    else
        echo "error: a kernel died (exit 4) and the job has been restarted $RESTARTS time(s): giving up" >&2
    fi
fi
exit "$rc"
