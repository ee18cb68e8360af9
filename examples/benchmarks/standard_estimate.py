"""What a run of standard.py will cost: ``python examples/benchmarks/standard.py --estimate``.

Times a few batches of each model of ``standard.tasks`` (untrained, and uniform-L2 pruned to each
target, which is what fine-tuning and evaluation cost), one ``compute_scores`` and one ratio
search, and multiplies by what :func:`standard.run` does with them: training epochs, fine-tuning
epochs per schedule, method and target, evaluation passes, the gradual steps. Seconds are this
machine's at the time it runs (shared machines vary by a factor of two from hour to hour).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import quality  # noqa: E402
from standard import (  # noqa: E402
    ALWAYS_FINETUNED,
    FINETUNES,
    GRADUAL_METHODS,
    GRADUAL_STEPS,
    GRADUAL_TARGET,
    METHODS,
    TARGETS,
    settings,
    tasks,
)

from lightning_fair import compute_scores  # noqa: E402
from lightning_fair.units.cost import measure


def _seconds_per_batch(model: nn.Module, x: torch.Tensor, train: bool, repeats: int = 3) -> float:
    """Median seconds of one SGD step (``train``) or one eval forward on the batch ``x``."""
    y = torch.zeros(len(x), dtype=torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        if train:
            model.train()
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        else:
            model.eval()
            with torch.no_grad():
                model(x)
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def estimate(
    quick: bool = False,
    models=None,
    threads: int = 1,
    verbose: bool = True,
    ft_images: Optional[int] = None,
    ft_b_images: Optional[int] = None,
) -> dict:
    """Extrapolated seconds of :func:`run` per model, from a few timed batches of each model
    (untrained, and uniform-L2 pruned to each target for the fine-tuning and evaluation costs),
    one timed ``compute_scores`` and one timed ratio search. Prints and
    returns the per-epoch costs and the estimate by part."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        st, data = settings(quick, ft_images, ft_b_images), common.load_data("mnist")
        n_test, n_calib, bs = st["test_images"], len(data.calib), st["batch_size"]
        x64, calib = data.train.x[:bs], common.loader(data.calib, batch_size=100)
        out = {}
        for name, task in tasks(quick).items():
            if models and name not in models:
                continue
            model = task.build()
            example = x64[:1]
            base = measure(model, example)[0]
            start = time.perf_counter()
            ratios, _ = quality.uniform_ratios(model, example, TARGETS, base, grid=13, iterations=5)
            per_prune = (time.perf_counter() - start) / (13 + 5 * len(TARGETS))  # grid, then bisection per target
            start = time.perf_counter()
            compute_scores(model, calib, seed=0)
            score = time.perf_counter() - start
            step, fwd = {1.0: _seconds_per_batch(model, x64, True)}, {1.0: _seconds_per_batch(model, x64, False)}
            for t in TARGETS:
                pruned = quality.tp_uniform(common.clone(model), example, quality.UNIFORM["l2"](), ratios[t])
                step[t], fwd[t] = _seconds_per_batch(pruned, x64, True), _seconds_per_batch(pruned, x64, False)

            def at(kept, table):  # linear in kept MACs between the measured points
                pts = sorted(table.items())
                lo = max((p for p in pts if p[0] <= kept), default=pts[0])
                hi = min((p for p in pts if p[0] >= kept), default=pts[-1])
                w = 0 if hi[0] == lo[0] else (kept - lo[0]) / (hi[0] - lo[0])
                return lo[1] + w * (hi[1] - lo[1])

            def passes(kept, images):  # seconds of forward passes over ``images`` images at ``kept`` MACs
                return images / bs * at(kept, fwd)

            def epochs(kept, key):  # seconds of fine-tuning schedule ``key`` at ``kept`` MACs
                _, _, _, n, images = FINETUNES[key]
                return n * -(-st[images] // bs) * at(kept, step)

            evaluation = lambda kept: 2 * passes(kept, n_test) + passes(kept, st["bn_images"])  # noqa: E731
            batches = -(-min(task.train_limit or len(data.train), len(data.train)) // bs)
            levels = [1.0 - (1.0 - GRADUAL_TARGET) * i / GRADUAL_STEPS for i in range(1, GRADUAL_STEPS + 1)]
            n_tuned = len(ALWAYS_FINETUNED) + 1  # and the best one-shot baseline, if not uniform L2
            cost = {
                "train": task.epochs * batches * step[1.0],
                "scores and searches": score + per_prune * (33 + 2 * 20),
                "one-shot": sum(len(METHODS) * (passes(t, n_test) + passes(t, n_calib)) for t in TARGETS),
                "fine-tuning": sum(n_tuned * sum(epochs(t, k) + evaluation(t) for k in FINETUNES) for t in TARGETS),
                "gradual": len(GRADUAL_METHODS)
                * sum(epochs(k, "a") + 2 * passes(k, n_test) + passes(k, n_calib) for k in levels)
                + score / step[1.0] * sum(at(k, step) for k in [1.0] + levels[:-1])  # FAIR's scores at each step
                + per_prune * 19 * GRADUAL_STEPS
                + evaluation(levels[-1]),  # L2's ratio searches, final evaluation
            }
            out[name] = {
                "seconds_per_epoch": {
                    "train": batches * step[1.0],
                    **{f"finetune_{t}": epochs(t, "a") for t in TARGETS},
                },
                "seconds_per_1000_test_images": {str(k): 1000 / bs * v for k, v in fwd.items()},
                "cost": cost,
                "total": sum(cost.values()),
            }
            if verbose:
                e = out[name]["seconds_per_epoch"]
                print(
                    f"  {name}: training {e['train']:.1f} s/epoch ({batches} batches of {bs}); fine-tuning "
                    + ", ".join(f"{e[f'finetune_{t}']:.1f} s/epoch at {t}" for t in TARGETS)
                    + f" ({-(-st['ft_images'] // bs)} batches); evaluation "
                    + ", ".join(f"{1000 / bs * fwd[k]:.1f}" for k in sorted(fwd, reverse=True))
                    + " s per 1000 images at kept "
                    + "/".join(f"{k:g}" for k in sorted(fwd, reverse=True))
                    + "; estimated "
                    + ", ".join(f"{k} {v:.0f}s" for k, v in cost.items())
                    + f" = {out[name]['total']:.0f}s",
                    flush=True,
                )
        total = sum(m["total"] for m in out.values())
        train = sum(m["cost"]["train"] for m in out.values())
        if verbose:
            print(
                f"  estimated run: {total / 60:.1f} min at this machine's current speed, {threads} thread(s) "
                f"(training {train / 60:.1f} min; {(total - train) / 60:.1f} min with the models cached)",
                flush=True,
            )
        return {"models": out, "total": total, "train": train, "threads": threads}
    finally:
        torch.set_num_threads(previous)
