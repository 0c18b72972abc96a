"""Several processes, one run: `torchrun` training and embedding (gloo on CPU, NCCL on CUDA).

    torchrun --nproc-per-node 2 -m ranking_lib train --profile demo --run-dir runs/x
    torchrun --nnodes 2 --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        --nproc-per-node 4 -m ranking_lib train --profile gpu ...

What is shared and how (`Trainer` and `workflow.embed` call into this module):

* **The global batch.** ``batch_size`` is the global batch. Every rank computes the same
  step's triplets (a function of seed and step, as in one process) and its augmentation, then
  runs only its shard: triplets ``[r*B/W, (r+1)*B/W)``. A run therefore resumes with any world
  size that divides the batch, and its batches are those of a one-process run.
* **Gradient semantics.** The embeddings of all ranks are all-gathered (`gather_rows`: the
  other ranks' rows as constants, the own rows keep their graph, as pytorch-metric-learning's
  distributed wrapper does). Every rank evaluates the *global* loss -- the hinge over all B
  triplets and batch-hard negatives searched over all 3B images -- so mining sees the global
  batch. Each rank's backward then yields the part of the global gradient that flows through
  its own rows; `all_reduce_gradients` sums them, which is exactly the one-process gradient
  (the sum over rows), up to the order of floating-point additions. We sum explicitly rather
  than wrap the model in DDP: the trainer calls the network's pieces (stage features, head)
  rather than its ``forward``, which DDP needs to see, and one coalesced all-reduce per step is
  all DDP would do here. BatchNorm statistics must be frozen (``freeze_bn``, the default)
  for the equality to hold: per-rank batch statistics would differ from global ones.
* **Writes.** Only rank 0 writes checkpoints, logs, summaries and embeddings (atomically, as
  always) and holds the run-dir lock; the other ranks read.
* **Embedding.** Each rank embeds a contiguous slice of the images; rank 0 gathers them in
  order and writes the same npz files as one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ranking_lib.core.errors import RankingError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n items (the first n % W ranks get one more)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def context() -> DistContext:
    """The current process group's ranks (one process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


def init_from_env(device: str) -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``): NCCL for CUDA devices, gloo for the CPU. Each CUDA rank
    uses device ``cuda:LOCAL_RANK``; CPU ranks split the cores between them."""
    if not launched_by_torchrun():
        return SINGLE
    if not dist.is_available():
        raise RankingError("this torch build has no torch.distributed")
    if dist.is_initialized():
        return context()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local)
    else:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    dist.init_process_group("nccl" if cuda else "gloo")
    return context()


def rank_device(device: str, ctx: DistContext) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; anything else is unchanged."""
    if ctx.enabled and device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return device


def gather_rows(x: torch.Tensor, ctx: DistContext) -> list[torch.Tensor]:
    """Every rank's `x` (same shape on all ranks), in rank order; the own entry keeps its graph."""
    if not ctx.enabled:
        return [x]
    parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[ctx.rank] = x
    return parts


def all_reduce_gradients(params, ctx: DistContext) -> None:
    """Sum the gradients of `params` over the ranks (one coalesced all-reduce)."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_to_main(x: torch.Tensor, ctx: DistContext) -> torch.Tensor | None:
    """Rank 0 gets the rank-ordered concatenation of every rank's `x` (row counts may differ by
    one, see `DistContext.shard`); other ranks get None."""
    if not ctx.enabled:
        return x
    n = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, n)
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros((most,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)  # all_gather, not gather: gloo and NCCL both have it
    if not ctx.is_main:
        return None
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])


def main_first(ctx: DistContext, build):
    """`build()` on rank 0, then on the others once it is done: a cache rank 0 writes (frozen-stage
    or golden features) is then read, not rebuilt, by every other rank."""
    if ctx.is_main:
        out = build()
    barrier(ctx)
    if not ctx.is_main:
        out = build()
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
