"""``evaluate(..., distributed=True)`` and the callback's logged after-pruning metrics on 2 CPU processes.

Used by tests/test_distributed_evaluate.py:

    python tests/ddp_evaluate_worker.py plain OUT_DIR       # torch.multiprocessing, gloo
    python tests/ddp_evaluate_worker.py lightning OUT_DIR   # Lightning's DDP, FairPruneCallback(dataloader=shard)

The two ranks get shards of different sizes (rank 0: 3 batches of 40, rank 1: 2 batches of 40 and
one of 17), so the mean over all samples differs from the mean of the two ranks' means. Each rank
saves what it got and the single-process result on both shards' batches together.
"""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES = [40, 40, 40, 40, 40, 17]  # batches; rank r gets batches r, r + 2, r + 4


def batches():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    out, start = [], 0
    for size in SIZES:
        out.append((x[start : start + size], y[start : start + size]))
        start += size
    return out


def shard(rank: int, world: int = 2):
    return batches()[rank::world]


def plain(rank: int, world: int, out: str, port: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from lightning_fair import evaluate
    from lightning_fair.demos import zoo

    torch.manual_seed(0)
    model = zoo.small_cnn(width=8).train()  # evaluate switches to eval mode and back
    saved = {
        "synced": evaluate(model, shard(rank), distributed=True),
        "local": evaluate(model, shard(rank)),  # distributed=False: this rank's shard only, no collective
        "single": evaluate(model, [b for r in range(world) for b in shard(r)]),
        "training": all(m.training for m in model.modules()),
    }
    torch.save(saved, os.path.join(out, f"plain_rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def lightning(out: str) -> None:
    import lightning as L
    from lightning.pytorch.loggers import Logger

    from lightning_fair import FairPruneCallback, evaluate
    from lightning_fair.demos.digits import DigitsDataModule, ImageClassifier

    class Recorder(Logger):
        """Every rank keeps what the callback logs (Lightning's own loggers write on rank zero only)."""

        def __init__(self):
            super().__init__()
            self.metrics = {}

        name, version = "recorder", 0

        def log_metrics(self, metrics, step=None):
            self.metrics.update(metrics)

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ImageClassifier(width=8)
    recorder = Recorder()
    # the script runs once per rank (Lightning's launcher sets LOCAL_RANK in the second process)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    callback = FairPruneCallback(
        prune_at="validate",
        tolerance=0.2,
        dataloader=shard(rank),
        samples_per_class=8,
        num_projections=8,
        progress=False,
        verbose=False,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        callbacks=[callback],
        logger=recorder,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=out,
    )
    trainer.validate(model, datamodule=DigitsDataModule(batch_size=64, val_size=128), verbose=False)
    assert trainer.global_rank == rank and callback.events, "the callback did not prune"
    both = [b for r in range(2) for b in shard(r)]
    torch.save(
        {
            "logged": {k: v for k, v in recorder.metrics.items() if k.startswith("fair/calibration")},
            "single": evaluate(model, both),  # the pruned model (the same on both ranks), one process
            "local": evaluate(model, shard(rank)),
        },
        os.path.join(out, f"lightning_rank{rank}.pt"),
    )


if __name__ == "__main__":
    mode, directory = sys.argv[1], sys.argv[2]
    if mode == "plain":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = str(s.getsockname()[1])
        mp.spawn(plain, args=(2, directory, free), nprocs=2, join=True)
    else:
        lightning(directory)
