"""U over the class pairs: the paper's maximum (``pairs="max"``) against the mean (``pairs="mean"``),
each with the default global threshold and with ``allocation="standardised"``, one-shot.

* Standard architectures (standard.py's VGG-11-BN, ResNet-20, ResNet-56, MobileNetV2 at their usual
  widths, trained on MNIST, training seed 0, cached like every benchmark model): 10 classes, 45 pairs;
  kept MACs 0.5 and 0.3, held-out top-1 %.
* A small CNN trained here on a generated 16x16 task with 100 classes (class_cap.py's task: a smooth
  prototype per class plus noise), 4,950 pairs, as many as a language model's 100 next-token classes;
  kept MACs 0.8 and 0.65 (lower leaves it near chance one-shot), held-out top-1 %.

Every cell: ``compute_scores(model, calib, pairs=p)`` once per model and ``p``, then
``prune(copy, calib, target_macs=t, scores=..., allocation=a)`` (the default pipeline otherwise).
The decoder LLM's rows are in llm.py (docs/benchmarks.md, "A pretrained decoder LLM").

Run:  python examples/benchmarks/class_pairs.py [--parts standard,generated] [--quick]
The full run prints the markdown section and writes it to examples/benchmarks/.cache/class_pairs/section.md,
which run_all.py puts after the variant study.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import class_cap  # noqa: E402
import common  # noqa: E402
import standard  # noqa: E402

import lightning_fair  # noqa: E402

PAIRS = ("max", "mean")
ALLOCATIONS = ("global", "standardised")


def cells(label: str, model, calib, test, targets, seed: int = 0) -> dict:
    """``{(pairs, allocation, target): held-out top-1 %}`` for one trained model."""
    out = {}
    for pairs in PAIRS:
        scores = lightning_fair.compute_scores(model, calib, seed=seed, pairs=pairs)
        for allocation in ALLOCATIONS:
            for target in targets:
                result = lightning_fair.prune(
                    common.clone(model), calib, target_macs=target, scores=scores, seed=seed, allocation=allocation
                )
                out[pairs, allocation, target] = common.accuracy(
                    result.model.eval(), test, batch_size=standard.EVAL_BATCH
                )
                print(
                    f"  {label}: pairs={pairs} {allocation} {target}: {out[pairs, allocation, target]:.1f}", flush=True
                )
    return out


def run(parts, quick: bool = False) -> list:
    """Rows ``(label, baseline accuracy, targets, cells)``."""
    torch.set_num_threads(2)
    rows = []
    if "standard" in parts:
        tasks = standard.tasks(quick)
        for name in ("vgg11_bn", "resnet20") if quick else ("vgg11_bn", "resnet20", "resnet56", "mobilenet_v2"):
            task = tasks[name]
            data = common.load_data(task.data)
            model = common.trained_model(task, 0)
            test = standard.first(data.test, 500) if quick else data.test
            base = common.accuracy(model, test, batch_size=standard.EVAL_BATCH)
            targets = (0.5, 0.3)
            rows.append(
                (task.label, base, targets, cells(task.label, model, common.loader(data.calib, 100), test, targets))
            )
    if "generated" in parts:
        model, calib, test = class_cap.trained_generated(100, 16 if quick else 32, epochs=4)
        targets = (0.8, 0.65)
        label = "small CNN, generated, 100 classes"
        base = common.accuracy(model, test)
        rows.append((label, base, targets, cells(label, model, common.loader(calib, 200), test, targets)))
    return rows


def to_markdown(rows: list) -> str:
    head = "| model (unpruned %) | kept MACs | " + " | ".join(f"`{p}`, {a}" for p in PAIRS for a in ALLOCATIONS) + " |"
    lines = [head, "|---|---:|" + "---:|" * (len(PAIRS) * len(ALLOCATIONS))]
    diffs: dict = {"mean": [], "standardised": []}
    for label, base, targets, values in rows:
        for t in targets:
            row = [values[p, a, t] for p in PAIRS for a in ALLOCATIONS]
            best = max(row)
            text = [f"**{v:.1f}**" if v == best else f"{v:.1f}" for v in row]
            lines.append(f"| {label} ({base:.1f}) | {t} | " + " | ".join(text) + " |")
            diffs["mean"].append(values["mean", "global", t] - values["max", "global", t])
            diffs["standardised"].append(values["max", "standardised", t] - values["max", "global", t])
    for key, name in (("mean", '`pairs="mean"`'), ("standardised", '`allocation="standardised"`')):
        d = diffs[key]
        if d:
            lines.append(
                f'\n{name} against the default (`pairs="max"`, global): {sum(d) / len(d):+.2f} points on average, '
                f"better in {sum(x > 0 for x in d)} of {len(d)} cells, worse in {sum(x < 0 for x in d)} "
                f"({min(d):+.1f} to {max(d):+.1f})."
            )
    return "\n".join(lines)


def section(rows: list, seconds: float) -> str:
    """The docs/benchmarks.md subsection: what was run, the table and its generated summary."""
    return "\n".join(
        [
            "### U over the class pairs: the maximum or the mean",
            "",
            'The paper\'s U is the largest W1 distance over the class pairs (`pairs="max"`, the default); '
            '`pairs="mean"` takes their mean (docs/method.md, "Class pairs"). Each with the default global '
            'threshold and with `allocation="standardised"`, one-shot, on the standard architectures (training '
            "seed 0, MNIST, 10 classes: 45 pairs) and on a small CNN trained on a generated task with 100 classes "
            "(class_cap.py's task; 4,950 pairs, as many as the language model's 100 classes). Regenerate with",
            "",
            "```bash",
            f"python examples/benchmarks/class_pairs.py   # {seconds / 60:.0f} min on 2 cores; --quick: a smoke test",
            "```",
            "",
            to_markdown(rows),
        ]
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="standard,generated")
    parser.add_argument("--quick", action="store_true", help="two tiny standard models, 500 test images")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.parts.split(","), args.quick)
    text = section(rows, time.perf_counter() - start)
    print(text)
    if not args.quick and args.parts == "standard,generated":
        folder = common.CACHE_DIR / "class_pairs"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "section.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
