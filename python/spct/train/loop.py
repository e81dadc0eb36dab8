"""The optimizer loop every stage shares: global batches, gradient accumulation, DDP, checkpoints, resume.

A stage hands `train` two functions: `make_batch(step) -> list` (the global batch of that step, a pure function
of the step so a resumed or distributed run sees the same data) and `micro_loss(model, examples) -> (loss,
metrics)` (the mean loss over a micro-batch). The global batch is cut into micro-batches of `micro_batch_size`;
rank r of W takes micro-batches r, r + W, ...; each loss is divided by the micro-batches per rank and DDP averages
over ranks, so every run computes the mean over all micro-batches of the step, whatever W is.

Under `torchrun` (WORLD_SIZE > 1) the process group is initialised with gloo on the CPU and NCCL on GPUs.
Rank 0 writes checkpoints (atomically, `spct.train.checkpoint`) every `save_every` steps and at the end, and one
JSON line of metrics every `log_every` steps to `output_dir/metrics.jsonl`. A NaN or infinite loss stops the run
before the optimizer step, so the last checkpoint stays the last good one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from spct._atomic import append_lines, write_text
from spct.train.checkpoint import check_finite, latest_checkpoint, load_checkpoint, save_checkpoint

__all__ = ["Dist", "barrier", "batch_indices", "init_distributed", "train"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """The process group under torchrun (gloo on the CPU, NCCL with GPUs), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if world == 1:
        return Dist(0, 1, device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), world, device)


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def batch_indices(num_items: int, step: int, batch_size: int, seed: int) -> list[int]:
    """The item indices of a step's global batch: epochs of seeded permutations, read batch_size at a time."""
    if num_items < 1:
        raise ValueError("no training items")
    out: list[int] = []
    position = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, num_items)
        perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = perm[offset: offset + batch_size - len(out)].tolist()
        out += take
        position += len(take)
    return out


class MetricsLog:
    """output_dir/metrics.jsonl, one object per logged step; on resume, lines past the resumed step are dropped."""

    def __init__(self, path: Path, resumed_step: int):
        self.path = path
        if path.exists():
            keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resumed_step]
            write_text(path, "".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        append_lines(self.path, [json.dumps(record)])


def _mean_metrics(parts: Sequence[dict], d: Dist) -> dict:
    """Metrics averaged over this rank's micro-batches, then over ranks."""
    names = sorted({k for p in parts for k in p})
    local = torch.tensor([sum(p.get(k, 0.0) for p in parts) / max(1, len(parts)) for k in names], dtype=torch.float64)
    if d.world > 1 and names:
        dist.all_reduce(local)
        local /= d.world
    return dict(zip(names, local.tolist()))


def train(cfg, model: torch.nn.Module, make_batch: Callable[[int], list], micro_loss: Callable, *, d: Dist,
          resume: bool, on_step: Callable[[int], None] | None = None, progress: bool | None = None) -> int:
    """Runs steps until cfg.max_steps; returns the number of steps this call ran. on_step(step) runs after each
    optimizer step (e.g. to hand new weights to the rollout engine). progress: a bar over optimizer steps on stderr
    (rank 0), the loss as its postfix; None = when stderr is a terminal."""
    out = Path(cfg.output_dir)
    micro = cfg.batch_size // cfg.micro_batch_size
    if micro % d.world:
        raise ValueError(f"batch_size / micro_batch_size = {micro} micro-batches must divide among {d.world} "
                         "processes; change micro_batch_size or the number of processes")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=0.0)
    start = 0
    found = latest_checkpoint(out)
    if found is not None and not resume:
        raise ValueError(f"{out} already holds checkpoints ({found.name}); pass --resume to continue that run or "
                         "choose another output_dir")
    if found is not None:
        start = load_checkpoint(found, model, optimizer)["step"]
    log = MetricsLog(out / "metrics.jsonl", start) if d.main else None
    wrapped = model
    if d.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.device] if d.device.type == "cuda"
                                                            else None)
    bar = _progress(start, cfg.max_steps, progress) if d.main else None
    for step in range(start, cfg.max_steps):
        began = time.perf_counter()
        batch = make_batch(step)
        pieces = [batch[i: i + cfg.micro_batch_size] for i in range(0, len(batch), cfg.micro_batch_size)]
        mine = pieces[d.rank:: d.world]
        optimizer.zero_grad(set_to_none=True)
        parts = []
        for i, examples in enumerate(mine):
            sync = d.world == 1 or i == len(mine) - 1  # DDP all-reduces on the last micro-batch only
            with contextlib.nullcontext() if sync else wrapped.no_sync():
                loss, metrics = micro_loss(wrapped, examples)
                (loss / len(mine)).backward()
            parts.append({"loss": float(loss.detach()), **metrics})
        metrics = _mean_metrics(parts, d)
        check_finite(metrics["loss"], step + 1)
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        check_finite(norm, step + 1)
        optimizer.step()
        if on_step is not None:
            on_step(step + 1)
        done = step + 1
        if d.main and (done % cfg.log_every == 0 or done == cfg.max_steps):
            log.write({"step": done, **metrics, "grad_norm": float(norm), "lr": cfg.learning_rate,
                       "seconds": round(time.perf_counter() - began, 3)})
        if done % cfg.save_every == 0 or done == cfg.max_steps:
            if d.main:
                save_checkpoint(out, done, model, optimizer, keep=cfg.keep_checkpoints)
            barrier(d)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
    if bar is not None:
        bar.close()
    return cfg.max_steps - start


def _progress(start: int, total: int, progress: bool | None):
    """A tqdm bar over optimizer steps on stderr, or None: progress off (None: when stderr is not a terminal)."""
    if not (sys.stderr.isatty() if progress is None else progress):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=start, unit="step", desc="training", file=sys.stderr, dynamic_ncols=True)
