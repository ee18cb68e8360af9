"""CPU latency of FAIR-pruned models vs their originals, next to the MACs ratio.

For each (original, pruned) pair, in one process, eval mode, ``torch.inference_mode``, after a
warm-up, the original and the pruned model are timed **interleaved** (alternating which goes
first) at batch 1 and batch 64, and the median over repeats is reported (each batch-1 repeat
times a few calls back to back so it lasts about 2 ms and the clock's resolution does not
matter). Next to it: the MACs and parameters from :func:`lightning_fair.units.cost.measure` (per
sample) and the fraction of non-zero weights. ``torch.set_num_threads`` is fixed: 1 by default;
``--threads 1,2`` adds rows at 2 threads, which on a machine shared with other jobs mostly time the
contention (with as many busy threads as cores, another process stalls the thread pool: on the
project's shared 2-core development machine under load, batch-1 forwards went from 0.4 ms to 140 ms).

Default models (when none are passed): ``zoo.vgg_bn``, ``zoo.resnet``, ``zoo.mobilenet_v2`` at
1x28x28, seeded random init, pruned with ``lightning_fair.prune(..., target_macs=0.5)`` on
calibration batches of sklearn digits resized to 28x28 (generated labelled data if sklearn is
missing); where 0.5 cannot be reached in one shot, the reachable minimum is used and reported.
One more row applies ``torch.nn.utils.prune.l1_unstructured`` (50% of every Conv/Linear weight,
made permanent with ``prune.remove``) to vgg_bn: zeroed weights in dense tensors save neither
time nor MACs.

Run:  python examples/benchmarks/latency.py            (about 20 s on 2 cores)
      python examples/benchmarks/latency.py --quick    (fewer repeats)
      python examples/benchmarks/latency.py --threads 1,2

From Python: ``run(quick=False, models=None) -> dict``, ``to_markdown(results) -> str``,
``plot(results, img_dir) -> [png paths]``; ``models = {name: (original, pruned)}`` or
``{name: (original, pruned, example_input)}`` (``example_input`` ``[1, C, H, W]``; a dict value
with ``original``/``pruned``/``example_inputs`` keys, or a top-level ``"example_inputs"`` tensor,
also work).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import re
import statistics
import sys
import time
from typing import Dict, Iterable, Optional, Sequence

import torch
from torch import nn

INPUT_SHAPE = (1, 28, 28)
BATCH_SIZES = (1, 64)
REPEATS = {1: 100, 64: 30}
QUICK_REPEATS = {1: 10, 64: 3}
WARMUP = {1: 10, 64: 2}
MIN_REPEAT_SECONDS = 2e-3
TARGET_MACS = 0.5
DEFAULT_ARCHS = ("vgg_bn", "resnet", "mobilenet_v2")


# ---------------------------------------------------------------------- models
def calibration_batches(num_batches: int = 8, batch_size: int = 64, image_size: int = 28, seed: int = 0):
    """``(batches, source)``: labelled calibration batches (sklearn digits resized, else generated)."""
    try:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        y = torch.tensor(digits.target, dtype=torch.long)
        source = f"sklearn digits resized to {image_size}x{image_size}"
    except Exception:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(num_batches * batch_size, 1, image_size, image_size, generator=generator)
        y = torch.randint(0, 10, (num_batches * batch_size,), generator=generator)
        source = f"generated N(0, 1) images {image_size}x{image_size}, random labels"
    n = min(len(x), num_batches * batch_size)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)], source


def prune_to_target(model: nn.Module, batches, target_macs: float = TARGET_MACS, seed: int = 0) -> tuple:
    """``(pruned copy, achieved target, note)``: FAIR one-shot at ``target_macs``, or at the reachable
    minimum if the target cannot be reached (the note says so)."""
    from lightning_fair import compute_scores, prune

    example = batches[0][0][:1]
    scores = compute_scores(model, batches, seed=seed)
    target, note = float(target_macs), ""
    try:
        result = prune(model, scores=scores, example_inputs=example, target_macs=target, inplace=False, seed=seed)
    except ValueError as exc:
        match = re.search(r"target_macs>=([0-9.]+)", str(exc))
        if not match:
            raise
        target = math.ceil(float(match.group(1)) * 1000) / 1000
        note = f"target_macs={target_macs} unreachable in one shot; used the reachable minimum {target}"
        result = prune(model, scores=scores, example_inputs=example, target_macs=target, inplace=False, seed=seed)
    return result.model.eval(), target, note


def unstructured_copy(model: nn.Module, amount: float = 0.5) -> nn.Module:
    """A copy with ``amount`` of each Conv/Linear weight zeroed by L1 magnitude, masks made permanent."""
    from torch.nn.utils import prune as tprune

    dense = copy.deepcopy(model)
    for module in dense.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            tprune.l1_unstructured(module, "weight", amount=amount)
            tprune.remove(module, "weight")
    return dense.eval()


def default_models(
    quick: bool = False, seed: int = 0, target_macs: float = TARGET_MACS, archs: Sequence[str] = DEFAULT_ARCHS
) -> tuple:
    """``({name: (original, pruned, example_input)}, info)`` for the default zoo models."""
    from lightning_fair.demos import zoo

    batches, source = calibration_batches(num_batches=4 if quick else 8, image_size=INPUT_SHAPE[-1], seed=seed)
    models, info = {}, {"calibration": f"{sum(len(b[1]) for b in batches)} images, {source}", "notes": {}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: more threads only add overhead, and stall on a busy machine
    try:
        for arch in archs:
            torch.manual_seed(seed)
            original = zoo.MODELS[arch](in_channels=INPUT_SHAPE[0], num_classes=10).eval()
            pruned, target, note = prune_to_target(original, batches, target_macs, seed)
            name = f"{arch} FAIR target_macs={target:g}"
            models[name] = (original, pruned, torch.zeros(1, *INPUT_SHAPE))
            if note:
                info["notes"][name] = note
    finally:
        torch.set_num_threads(threads)
    return models, info


def _unpack_entries(models: dict) -> Dict[str, tuple]:
    shared = models.get("example_inputs", models.get("example_input"))
    out = {}
    for name, entry in models.items():
        if name in ("example_inputs", "example_input"):
            continue
        example = shared
        if isinstance(entry, dict):
            original, pruned = entry["original"], entry["pruned"]
            example = entry.get("example_inputs", entry.get("example_input", example))
        elif isinstance(entry, (tuple, list)) and len(entry) in (2, 3):
            original, pruned = entry[0], entry[1]
            if len(entry) == 3:
                example = entry[2]
        else:
            raise TypeError(f"models[{name!r}] must be (original, pruned[, example_input]), got {type(entry).__name__}")
        original, pruned = _as_module(original), _as_module(pruned)
        if example is None:
            example = _guess_input(original)
        if not isinstance(example, torch.Tensor):
            raise TypeError(f"models[{name!r}]: example_input must be a tensor, got {type(example).__name__}")
        out[name] = (original, pruned, example[:1].detach().cpu())
    return out


def _as_module(obj) -> nn.Module:
    if not isinstance(obj, nn.Module) and hasattr(obj, "model") and isinstance(obj.model, nn.Module):
        obj = obj.model  # a PruneResult
    if not isinstance(obj, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(obj).__name__}")
    return obj


def _guess_input(model: nn.Module) -> torch.Tensor:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return torch.zeros(1, module.in_channels, *INPUT_SHAPE[1:])
        if isinstance(module, nn.Linear):
            return torch.zeros(1, module.in_features)
    raise ValueError("cannot infer the input shape; pass (original, pruned, example_input)")


# ---------------------------------------------------------------------- timing
def _cpu(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu() if any(p.device.type != "cpu" for p in model.parameters()) else model


def _nonzero_fraction(model: nn.Module) -> float:
    params = list({id(p): p for p in model.parameters()}.values())
    total = sum(p.numel() for p in params)
    return float(sum(int(torch.count_nonzero(p)) for p in params)) / max(total, 1)


def time_pair(original: nn.Module, pruned: nn.Module, inputs: torch.Tensor, repeats: int, warmup: int) -> dict:
    """Interleaved medians (ms per forward) of two models on the same input; models in eval mode."""
    models = (original, pruned)
    with torch.inference_mode():
        for _ in range(warmup):
            for m in models:
                m(inputs)
        # calls per repeat, so a repeat of the original lasts >= MIN_REPEAT_SECONDS
        start = time.perf_counter()
        original(inputs)
        single = max(time.perf_counter() - start, 1e-6)
        inner = max(1, min(50, math.ceil(MIN_REPEAT_SECONDS / single)))
        samples = ([], [])
        for rep in range(repeats):
            order = (0, 1) if rep % 2 == 0 else (1, 0)
            for i in order:
                m = models[i]
                start = time.perf_counter()
                for _ in range(inner):
                    m(inputs)
                samples[i].append((time.perf_counter() - start) / inner * 1e3)
    return {
        "original_ms": statistics.median(samples[0]),
        "pruned_ms": statistics.median(samples[1]),
        "calls_per_repeat": inner,
        "repeats": repeats,
        "original_ms_iqr": _iqr(samples[0]),
        "pruned_ms_iqr": _iqr(samples[1]),
    }


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _iqr(values) -> float:
    if len(values) < 4:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


# --------------------------------------------------------------------------- run
def run(
    quick: bool = False,
    models: Optional[dict] = None,
    *,
    threads: Optional[Iterable[int]] = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    repeats: Optional[dict] = None,
    target_macs: float = TARGET_MACS,
    unstructured: bool = True,
    seed: int = 0,
    verbose: bool = False,
) -> dict:
    """Time pruned models against their originals on CPU.

    Args:
        quick: 10 repeats at batch 1 and 3 at batch 64 (default: 100 and 30).
        models: ``{name: (original, pruned)}`` or ``{name: (original, pruned, example_input)}``;
            default: :func:`default_models` (zoo vgg_bn, resnet, mobilenet_v2 pruned to
            ``target_macs``). The models are not modified (train/eval flags restored).
        threads: thread counts to run at (default: 1 only; more threads on a machine shared with
            other jobs time the contention, see the module docstring).
        batch_sizes: default (1, 64).
        repeats: ``{batch_size: repeats}``.
        unstructured: add a row with 50% L1 unstructured pruning (made permanent) of the first
            original model.

    Returns:
        plain data: ``{"config": {...}, "rows": [{model, kind, threads, macs_*, params_*,
        macs_ratio, macs_reduction, nonzero_*, "b1": {original_ms, pruned_ms, speedup, ...},
        "b64": {...}}], "notes": {...}, "seconds": total}``.
    """
    t0 = time.perf_counter()
    from lightning_fair.units.cost import measure

    default_threads = torch.get_num_threads()
    load_before = _loadavg()
    if threads is None:
        threads = (1,)
    threads = tuple(int(t) for t in threads)
    repeats = dict(repeats or (QUICK_REPEATS if quick else REPEATS))
    info = {"calibration": None, "notes": {}}
    if models is None:
        models, info = default_models(quick=quick, seed=seed, target_macs=target_macs)
    pairs = [(name, "structured", o, p, x) for name, (o, p, x) in _unpack_entries(models).items()]
    if unstructured and pairs:
        name, _, original, _, example = pairs[0]
        base = name.split(" ")[0]
        pairs.append(
            (
                f"{base} unstructured 50% (l1_unstructured, permanent)",
                "unstructured",
                original,
                unstructured_copy(_cpu(original)),
                example,
            )
        )

    rows = []
    flags = {}
    try:
        for _, _, o, p, _ in pairs:
            for m in (o, p):
                flags.update({mod: mod.training for mod in m.modules()})
        for name, kind, original, pruned, example in pairs:
            original, pruned = _cpu(original).eval(), _cpu(pruned).eval()
            macs_o, params_o = measure(original, example)
            macs_p, params_p = measure(pruned, example)
            base = {
                "model": name,
                "kind": kind,
                "input_shape": list(example.shape[1:]),
                "macs_original": macs_o,
                "macs_pruned": macs_p,
                "macs_ratio": macs_p / macs_o,
                "macs_reduction": macs_o / max(macs_p, 1),
                "params_original": params_o,
                "params_pruned": params_p,
                "params_ratio": params_p / params_o,
                "nonzero_original": _nonzero_fraction(original),
                "nonzero_pruned": _nonzero_fraction(pruned),
            }
            for t in threads:
                torch.set_num_threads(t)
                row = dict(base, threads=t)
                for bs in batch_sizes:
                    generator = torch.Generator().manual_seed(seed + bs)
                    inputs = torch.randn(bs, *example.shape[1:], generator=generator)
                    timing = time_pair(original, pruned, inputs, repeats.get(bs, 10), WARMUP.get(bs, 2))
                    timing["speedup"] = timing["original_ms"] / timing["pruned_ms"]
                    row[f"b{bs}"] = timing
                rows.append(row)
                if verbose:
                    print(_row_line(row, batch_sizes), file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(default_threads)
        for module, flag in flags.items():
            module.training = flag
    return {
        "config": {
            "threads": list(threads),
            "default_threads": default_threads,
            "batch_sizes": list(batch_sizes),
            "repeats": {str(k): v for k, v in repeats.items()},
            "min_repeat_ms": MIN_REPEAT_SECONDS * 1e3,
            "target_macs": target_macs,
            "quick": bool(quick),
            "torch": torch.__version__,
            "calibration": info.get("calibration"),
            "cpu_count": os.cpu_count(),
            "load_average": [load_before, _loadavg()],
        },
        "notes": info.get("notes", {}),
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------- reporting
def _row_line(row, batch_sizes):
    parts = [f"{row['model']} [{row['threads']}t]: MACs kept {row['macs_ratio']:.3f}"]
    for bs in batch_sizes:
        b = row[f"b{bs}"]
        parts.append(f"b{bs} {b['original_ms']:.3f} -> {b['pruned_ms']:.3f} ms ({b['speedup']:.2f}x)")
    return ", ".join(parts)


NOISY = 0.25


def _noisy(timing: dict) -> bool:
    return any(timing[f"{k}_ms_iqr"] > NOISY * timing[f"{k}_ms"] for k in ("original", "pruned"))


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def to_markdown(results: dict) -> str:
    """A markdown section: heading, table, and a paragraph reading the numbers."""
    cfg, rows = results["config"], results["rows"]
    sizes = cfg["batch_sizes"]
    lines = ["### Latency on CPU", ""]
    reps = ", ".join(f"{cfg['repeats'].get(str(bs), '?')} at batch {bs}" for bs in sizes)
    lines.append(
        f"torch {cfg['torch']}, CPU, `torch.set_num_threads` = {' and '.join(map(str, cfg['threads']))} "
        f"(process default {cfg['default_threads']}, {cfg['cpu_count']} cores), eval mode, `torch.inference_mode`; "
        f"original and pruned interleaved in one process after a warm-up, median of repeats ({reps}; a batch-1 "
        f"repeat runs a few calls back to back to last ≥ {cfg['min_repeat_ms']:g} ms). Speed-up = original ms / "
        "pruned ms; MACs kept and params kept from `lightning_fair.units.cost.measure` (per sample); nonzero = "
        "fraction of non-zero parameters in the pruned model."
        + (
            f" Calibration for the pruned models: {cfg['calibration']}, seeded untrained weights."
            if cfg.get("calibration")
            else ""
        )
        + (
            f" 1-minute load average {cfg['load_average'][0]} before, {cfg['load_average'][1]} after the run."
            if cfg.get("load_average") and None not in cfg["load_average"]
            else ""
        )
        + (
            " More threads: `run(threads=(1, 2))` or `--threads 1,2`; on a machine shared with other jobs they "
            "measure the contention more than the models."
            if len(cfg["threads"]) == 1 and cfg["threads"][0] == 1
            else ""
        )
    )
    lines.append("")
    head = "| model | threads |"
    align = "|---|---:|"
    for bs in sizes:
        head += f" b{bs} orig (ms) | b{bs} pruned (ms) | b{bs} speed-up |"
        align += "---:|---:|---:|"
    head += " MACs kept | 1 / MACs kept | params kept | nonzero |"
    align += "---:|---:|---:|---:|"
    lines += [head, align]
    for r in rows:
        line = f"| {r['model']} | {r['threads']} |"
        for bs in sizes:
            b = r[f"b{bs}"]
            mark = "†" if _noisy(b) else ""
            line += f" {b['original_ms']:.3f} | {b['pruned_ms']:.3f} | {b['speedup']:.2f}x{mark} |"
        line += (
            f" {r['macs_ratio']:.3f} ({_si(r['macs_original'])} → {_si(r['macs_pruned'])}) | "
            f"{r['macs_reduction']:.2f}x | {r['params_ratio']:.3f} | {r['nonzero_pruned']:.2f} |"
        )
        lines.append(line)
    lines.append("")
    if any(_noisy(r[f"b{bs}"]) for r in rows for bs in sizes):
        lines.append(
            f"† noisy: the interquartile range of the repeats exceeds {NOISY:.0%} of the median "
            "(other load on the machine); read that speed-up with care."
        )
        lines.append("")
    for name, note in results.get("notes", {}).items():
        lines.append(f"Note ({name}): {note}.")
        lines.append("")
    lines.append(_reading(results))
    return "\n".join(lines) + "\n"


def _reading(results: dict) -> str:
    cfg, rows = results["config"], results["rows"]
    sizes = cfg["batch_sizes"]
    small, large = min(sizes), max(sizes)
    structured = [r for r in rows if r["kind"] == "structured"]
    dense = [r for r in rows if r["kind"] == "unstructured"]
    parts = []
    if structured:
        one = [r for r in structured if r["threads"] == min(cfg["threads"])]
        eff_large = [r[f"b{large}"]["speedup"] / r["macs_reduction"] for r in one]
        eff_small = [r[f"b{small}"]["speedup"] / r["macs_reduction"] for r in one]
        parts.append(
            f"At {min(cfg['threads'])} thread{'s' if min(cfg['threads']) > 1 else ''} the FAIR-pruned models keep "
            f"{min(r['macs_ratio'] for r in one):.0%}-{max(r['macs_ratio'] for r in one):.0%} of the MACs and run "
            f"{min(r[f'b{large}']['speedup'] for r in one):.2f}-{max(r[f'b{large}']['speedup'] for r in one):.2f}x "
            f"faster at batch {large} (realising {min(eff_large):.0%}-{max(eff_large):.0%} of the MACs reduction) and "
            f"{min(r[f'b{small}']['speedup'] for r in one):.2f}-{max(r[f'b{small}']['speedup'] for r in one):.2f}x "
            f"at batch {small} ({min(eff_small):.0%}-{max(eff_small):.0%})."
        )
        mean_small = statistics.mean(r[f"b{small}"]["speedup"] for r in one)
        mean_large = statistics.mean(r[f"b{large}"]["speedup"] for r in one)
        worst = min(one, key=lambda r: r[f"b{large}"]["speedup"] / r["macs_reduction"])
        text = (
            "Structured pruning leaves dense, smaller layers, so the MACs saving shows up as time, but not all "
            "of it: BatchNorm, pooling, activations, depthwise convs and per-layer dispatch cost time that "
            "falls less than the conv MACs, and pruned channel counts are no longer multiples of the kernels' "
            "vector widths. "
        )
        if mean_large > mean_small:
            text += (
                f"On average the speed-up is larger at batch {large} ({mean_large:.2f}x) than at batch {small} "
                f"({mean_small:.2f}x), where a small model's forward is mostly fixed overhead."
            )
        else:
            text += (
                f"On average the speed-up at batch {large} ({mean_large:.2f}x) is not larger than at batch "
                f"{small} ({mean_small:.2f}x) here."
            )
        text += (
            f" Furthest behind its MACs ratio at batch {large}: {worst['model'].split(' ')[0]} "
            f"({worst[f'b{large}']['speedup']:.2f}x for {worst['macs_reduction']:.2f}x fewer MACs)."
        )
        parts.append(text)
        more = [r for r in structured if r["threads"] != min(cfg["threads"])]
        if more:
            parts.append(
                f"With {max(cfg['threads'])} threads the speed-ups at batch {large} are "
                f"{min(r[f'b{large}']['speedup'] for r in more):.2f}-{max(r[f'b{large}']['speedup'] for r in more):.2f}x"
                "; with several threads any other load on the machine stalls the thread pool, so "
                "these rows are much noisier than the 1-thread ones."
            )
    if dense:
        d = dense[0]
        parts.append(
            f"The unstructured row ({d['threads']} thread{'s' if d['threads'] > 1 else ''}) zeroes {1 - d['nonzero_pruned']:.0%} of the weights but keeps every tensor dense: "
            f"MACs kept {d['macs_ratio']:.2f}, params kept {d['params_ratio']:.2f}, and speed-ups of "
            + ", ".join(f"{d[f'b{bs}']['speedup']:.2f}x at batch {bs}" for bs in sizes)
            + ", i.e. no saving (any difference is timing noise): masks need sparse kernels to pay off, "
            "channel removal does not."
        )
    return " ".join(parts)


def plot(results: dict, img_dir) -> list:
    """Write ``latency.png``: per model, speed-up at each batch size next to 1 / MACs kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(img_dir, exist_ok=True)
    cfg, rows = results["config"], results["rows"]
    sizes = cfg["batch_sizes"]
    thread_counts = cfg["threads"]
    fig, axes = plt.subplots(1, len(thread_counts), figsize=(5.5 * len(thread_counts) + 1, 4.6), squeeze=False)
    for ax, t in zip(axes[0], thread_counts):
        mine = [r for r in rows if r["threads"] == t]
        labels = [
            r["model"]
            .replace(" (l1_unstructured, permanent)", "")
            .replace(" FAIR ", "\nFAIR ")
            .replace(" unstructured", "\nunstructured")
            for r in mine
        ]
        series = [(f"speed-up, batch {bs}", [r[f"b{bs}"]["speedup"] for r in mine]) for bs in sizes]
        series.append(("1 / MACs kept", [r["macs_reduction"] for r in mine]))
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series):
            xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(mine))]
            ax.bar(xs, values, width, label=label, hatch="//" if label.startswith("1 /") else None, alpha=0.85)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(mine)), labels, fontsize=7)
        ax.set_ylabel("x (original / pruned)")
        ax.set_title(f"CPU, {t} thread{'s' if t > 1 else ''}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(str(img_dir), "latency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10/3 repeats, 4 calibration batches")
    parser.add_argument("--threads", help="comma-separated thread counts, e.g. 1,2")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--img-dir", help="also write latency.png here")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")] if args.threads else None
    results = run(quick=args.quick, threads=threads, verbose=True)
    print(to_markdown(results))
    print(f"({results['seconds']:.1f} s)")
    if args.json:
        import json

        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    if args.img_dir:
        print("\n".join(plot(results, args.img_dir)))


if __name__ == "__main__":
    main()
