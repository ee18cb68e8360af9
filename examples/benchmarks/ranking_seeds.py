"""ranking="utilization" (FAIR's U, the default) vs ranking="utilization_x_consumers" on the standard
models of standard.py over several *training* seeds, one-shot and after fine-tune (a), with the best
torch-pruning baseline of each cell (issue 11: the evidence for or against changing the default).

Per (model, training seed): the model is trained (or read from the cache) exactly as standard.py
does; the scores are computed once (``seed`` = the training seed, as standard.py); both rankings prune
from them to each target with the default pipeline (same counts, asserted); the four baselines of
standard.py (uniform L2 / Taylor, global L2 / LAMP, each + BatchNorm re-estimation) give the best
one-shot baseline; FAIR (both rankings) and that baseline are fine-tuned with schedule (a) and
measured as "ft / ft + BN re-estimated". One JSON per (model, seed) in ``--out``; ``--summary``
prints the table and the paired differences.

Run:  python examples/benchmarks/ranking_seeds.py [--models vgg11_bn,resnet20,resnet56,mobilenet_v2] [--seeds 0,1,2]
      python examples/benchmarks/ranking_seeds.py --summary
Trains what the cache lacks (standard.py's settings; about 4 min per seed for the four models on
2 cores); about 40 min in all for 4 models x 3 seeds from a cache with the trained models.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import quality  # noqa: E402
import standard  # noqa: E402

import lightning_fair  # noqa: E402
from lightning_fair import compute_scores  # noqa: E402

RANKINGS = {"fair": "utilization", "fair_x": "utilization_x_consumers"}
BASELINES = ("l2", "taylor", "global_l2", "lamp")
SHORT = {"l2": "L2", "taylor": "Taylor", "global_l2": "global L2", "lamp": "LAMP"}
LABEL = {"vgg11_bn": "VGG-11-BN", "resnet20": "ResNet-20", "resnet56": "ResNet-56", "mobilenet_v2": "MobileNetV2"}
OUT = HERE / ".cache" / "ranking_seeds"


def baselines(run, out, put) -> None:
    """The baselines of standard.oneshot (same functions, same order)."""
    targets = standard.TARGETS
    ratios, _ = quality.uniform_ratios(run.model, run.example, targets, run.base_macs)
    for method in ("l2", "taylor"):
        for t in targets:
            if ratios[t] is None:
                out[method][t] = {"status": "unreachable"}
            else:
                put(method, t, *run.uniform(run.model, method, t, ratios[t]))
    for method in ("global_l2", "lamp"):
        make = quality.GLOBAL[method]
        (ratios_g, _), source = quality.global_ratios(run.model, run.example, targets, run.base_macs, make, run.calib)
        for t in targets:
            if ratios_g[t] is None:
                out[method][t] = {"status": "unreachable"}
                continue
            pruned = quality.clone_with_grads(source)
            capped = quality.tp_global(pruned, run.example, make(), ratios_g[t])
            pruned = common.recalibrate_batchnorm(pruned, run.data.calib)
            put(method, t, pruned, f"ratio {ratios_g[t]:.3f}" + (f", {capped} capped" if capped else ""))


def measure(name: str, seed: int, out_dir: Path) -> dict:
    run = standard.ModelRun(standard.tasks()[name], seed, standard.settings(False), defaultdict(float))
    out = defaultdict(dict)

    def put(method, t, pruned, note):
        out[method][t] = {"model": pruned, "kept": run.kept(pruned), "note": note, "oneshot": run.accuracy(pruned)}

    scores = compute_scores(run.model, run.calib, seed=run.seed)  # as standard.oneshot
    shapes = {}
    for key, ranking in RANKINGS.items():
        for t in standard.TARGETS:
            result = lightning_fair.prune(
                common.clone(run.model), run.calib, target_macs=t, scores=scores, seed=run.seed, ranking=ranking
            )
            shapes[key, t] = [tuple(p.shape) for p in result.model.parameters()]
            put(key, t, result.model.eval(), f"{result.level_name} {result.level:.3g}")
    for t in standard.TARGETS:
        assert shapes["fair", t] == shapes["fair_x", t], "the two rankings removed different counts"
    baselines(run, out, put)
    record = {"model": name, "seed": seed, "unpruned": run.accuracy(run.model), "best": {}}
    for t in standard.TARGETS:
        best = standard.best_oneshot_baseline(out, t)
        record["best"][str(t)] = best
        for method in ["fair", "fair_x"] + ([best] if best else []):
            tuned = run.finetune(common.clone(out[method][t]["model"]), "a")
            out[method][t]["ft_a"], out[method][t]["ft_a_bn"] = run.accuracies(tuned)
    record["methods"] = {
        m: {str(t): {k: v for k, v in r.items() if k != "model"} for t, r in d.items()} for m, d in out.items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}-seed{seed}.json").write_text(json.dumps(record, indent=1))
    return record


def summary(out_dir: Path) -> str:
    rows = {}
    documented = HERE / ".cache" / "results.json"  # the run behind docs/benchmarks.md (seed 0)
    for path in sorted(out_dir.glob("*-seed*.json")):
        r = json.loads(path.read_text())
        if not any(b in r["methods"] for b in BASELINES) and r["seed"] == 0 and documented.exists():
            # a record made without baselines: seed 0's are those of docs/benchmarks.md
            r["methods"].update(json.loads(documented.read_text())["standard"]["models"][r["model"]]["methods"])
        for t in map(str, standard.TARGETS):
            scored = {
                b: r["methods"][b][t]["oneshot"] for b in BASELINES if "oneshot" in r["methods"].get(b, {}).get(t, {})
            }
            best = max(scored, key=scored.get)
            rows[r["model"], r["seed"], t] = {
                "unpruned": r["unpruned"],
                "fair": r["methods"]["fair"][t],
                "fair_x": r["methods"]["fair_x"][t],
                "best": best,
                "bb": r["methods"][best][t],
            }

    def f(x):
        return "–" if x is None else f"{x:.1f}"

    lines = [
        "| model | kept | seed | unpruned | U one-shot | U×C one-shot | best baseline one-shot | U (a) / +BN | "
        "U×C (a) / +BN | baseline (a) / +BN |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for (m, s, t), r in sorted(rows.items(), key=lambda kv: (list(LABEL).index(kv[0][0]), -float(kv[0][2]), kv[0][1])):
        a, x, b = r["fair"], r["fair_x"], r["bb"]
        lines.append(
            f"| {LABEL[m]} | {t} | {s} | {r['unpruned']:.1f} | {f(a['oneshot'])} | {f(x['oneshot'])} | "
            f"{f(b['oneshot'])} ({SHORT[r['best']]}) | {f(a.get('ft_a'))} / {f(a.get('ft_a_bn'))} | "
            f"{f(x.get('ft_a'))} / {f(x.get('ft_a_bn'))} | {f(b.get('ft_a'))} / {f(b.get('ft_a_bn'))} |"
        )
    for title, left, right in (
        ("U×C minus U", "fair_x", "fair"),
        ("U×C minus the best baseline", "fair_x", "bb"),
        ("U minus the best baseline", "fair", "bb"),
    ):
        lines.append(f"\n{title}:")
        for column in ("oneshot", "ft_a", "ft_a_bn"):
            d = [
                round(r[left][column] - r[right][column], 1)
                for r in rows.values()
                if r[right].get(column) is not None and r[left].get(column) is not None
            ]
            if d:
                lines.append(
                    f"  {column}: {len(d)} cells, better {sum(v > 0 for v in d)} / worse {sum(v < 0 for v in d)}"
                    f" / equal {sum(v == 0 for v in d)}; mean {statistics.mean(d):+.2f}, worst {min(d):+.1f}, "
                    f"best {max(d):+.1f}"
                )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vgg11_bn,resnet20,resnet56,mobilenet_v2")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--summary", action="store_true", help="print the table of what --out holds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out_dir = Path(args.out)
    if not args.summary:
        for name in args.models.split(","):
            for seed in map(int, args.seeds.split(",")):
                start = time.perf_counter()
                measure(name, seed, out_dir)
                print(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    print(summary(out_dir))


if __name__ == "__main__":
    main()
