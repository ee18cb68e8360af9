"""Run lightning_fair's collectives in 2 CPU processes (gloo) and save what each rank got.

Used by tests/test_distributed.py:  python tests/ddp_worker.py OUT_DIR
Each rank scores and prunes with its own shard of the calibration batches (every other batch),
``distributed=True``; rank 0 also runs the single-process reference on all batches.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def batches():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images[:360], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target[:360])
    return [(x[i : i + 40], y[i : i + 40]) for i in range(0, 360, 40)]  # 9 batches: ranks get 5 and 4


def model():
    from lightning_fair.demos import zoo

    torch.manual_seed(0)
    net = zoo.small_cnn(width=8)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return net.eval()


def run(rank: int, world: int, out: str, port: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from lightning_fair import compute_scores, prune

    mine = batches()[rank::world]
    options = dict(samples_per_class=100, num_projections=16, seed=3)  # 100 >= images per class: all are used
    scores = compute_scores(model(), mine, distributed=True, criterion="screening", **options)
    result = prune(model(), mine, target_macs=0.5, distributed=True, **options)
    torch.save(
        {"scores": scores.state_dict(), "removed": result.removed, "state": result.model.state_dict()},
        os.path.join(out, f"rank{rank}.pt"),
    )
    if rank == 0:
        single = compute_scores(model(), batches(), criterion="screening", **options)
        alone = prune(model(), batches(), target_macs=0.5, **options)
        torch.save(
            {"scores": single.state_dict(), "removed": alone.removed, "state": alone.model.state_dict()},
            os.path.join(out, "single.pt"),
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    mp.spawn(run, args=(2, sys.argv[1], port), nprocs=2, join=True)
