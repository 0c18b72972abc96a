#!/bin/bash
# Multi-node training with torchrun, for any scheduler; run once per node (srun / pbsdsh).
#   NNODES, HEAD (rendezvous host), NPROC (processes per node: GPUs, or CPU ranks),
#   PORT (default 29500), PROFILE, DATA, RUN, EXTRA (more ranking_lib flags).
# The c10d rendezvous assigns node ranks, so every node runs the same command. Triplets must
# exist in RUN (the job runs `prepare` and `sample` once before launching this).
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
# shellcheck disable=SC2206
extra=(${EXTRA:-})
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc-per-node "$NPROC" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:${PORT:-29500}" --rdzv-id "${JOB_ID:-ranking}" \
    -m ranking_lib "${STEP:-train}" --profile "$PROFILE" --run-dir "$RUN" ${DATA:+--data-dir "$DATA"} "${extra[@]}"
