"""How far BatchNorm's running statistics trail the weights after a short fine-tune of a pruned model.

One standard-architecture model (standard.py, cached, seed 0) pruned to ``TARGET`` kept MACs by
FAIR's default pipeline, uniform L2 and global L2 (each with BatchNorm re-estimated, as in the
benchmark), then fine-tuned with schedule (a) (SGD, 16 steps, cosine). For each BatchNorm layer the
running statistics after the fine-tune are compared with the same weights' statistics re-estimated on
500 training images: ``mean-lag`` = mean |running mean - re-estimated mean| / re-estimated std,
``logvar-lag`` = mean |log running var - log re-estimated var|. Printed: accuracy after the fine-tune
without / with re-estimation, the relative weight change of the fine-tune, the mean lags over layers
and the six layers that lag most.

Measured here (ResNet-56, kept MACs 0.3, 1 thread): FAIR 81.3 / 93.7 %, mean lags 0.016 / 0.038,
weight change 1.4 %; uniform L2 92.0 / 94.8 %, 0.016 / 0.040, 1.5 %; global L2 92.3 / 94.8 %,
0.015 / 0.035, 1.5 %. The lag is the same size; FAIR's pruned model loses more accuracy to it.

Run:  python examples/benchmarks/bn_lag.py resnet56 0.3      # models: vgg11_bn resnet20 resnet56 mobilenet_v2
"""

from __future__ import annotations

import argparse
import collections
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import quality  # noqa: E402
import standard  # noqa: E402

import lightning_fair  # noqa: E402


def lag(run: standard.ModelRun, pruned: nn.Module, label: str) -> None:
    before = {n: p.detach().clone() for n, p in pruned.named_parameters()}
    tuned = run.finetune(copy.deepcopy(pruned), "a")
    fresh = dict(common.recalibrate_batchnorm(tuned, standard.first(run.data.train, 500)).named_modules())
    rows = []
    for name, m in tuned.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            r = fresh[name]
            mean_lag = ((m.running_mean - r.running_mean).abs() / r.running_var.sqrt()).mean().item()
            var_lag = (m.running_var.log() - r.running_var.log()).abs().mean().item()
            rows.append((mean_lag + var_lag, name, m.num_features, mean_lag, var_lag))
    change = sum(((p.detach() - before[n]) ** 2).sum() for n, p in tuned.named_parameters()).sqrt()
    change = (change / sum((w**2).sum() for w in before.values()).sqrt()).item()
    acc, acc_bn = run.accuracies(tuned)
    n = max(len(rows), 1)
    print(
        f"{label}: after (a) {acc:.1f} / re-estimated {acc_bn:.1f} %; weight change {100 * change:.1f} %; "
        f"mean-lag {sum(r[3] for r in rows) / n:.3f}, logvar-lag {sum(r[4] for r in rows) / n:.3f}"
    )
    for _, name, width, mean_lag, var_lag in sorted(rows, reverse=True)[:6]:
        print(f"    {name:28s} width {width:4d}  mean-lag {mean_lag:.3f}  logvar-lag {var_lag:.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=list(standard.tasks()))
    parser.add_argument("target", type=float, help="kept MACs, e.g. 0.3")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run = standard.ModelRun(standard.tasks()[args.model], 0, standard.settings(False), collections.defaultdict(float))
    t = args.target
    scores = lightning_fair.compute_scores(run.model, run.calib, seed=0)
    lag(
        run,
        lightning_fair.prune(common.clone(run.model), run.calib, target_macs=t, scores=scores, seed=0).model.eval(),
        "FAIR (default pipeline)",
    )
    ratios, _ = quality.uniform_ratios(run.model, run.example, [t], run.base_macs)
    lag(run, run.uniform(run.model, "l2", t, ratios[t])[0], "uniform L2")
    make = quality.GLOBAL["global_l2"]
    (ratios_g, _), source = quality.global_ratios(run.model, run.example, [t], run.base_macs, make, run.calib)
    pruned = quality.clone_with_grads(source)
    quality.tp_global(pruned, run.example, make(), ratios_g[t])
    lag(run, common.recalibrate_batchnorm(pruned, run.data.calib), "global L2")


if __name__ == "__main__":
    main()
