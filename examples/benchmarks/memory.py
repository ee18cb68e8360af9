"""Peak memory of FAIR score collection: flat in the number of calibration batches, linear in
``samples_per_class``.

For each model and each (number of batches, samples_per_class) this measures

* **buffers** (exact): the bytes held by :class:`lightning_fair.collect.collector.StatisticsCollector`'s
  per-layer statistics, the samples ``[K, n, C, D]`` float32 and the two Taylor sums ``[C]`` float64
  (``collector.class_samples.nbytes + collector.taylor.nbytes``) after ``collector.run(batches)``; next
  to the formula ``K * n * sum_l(C_l * D_l) * 4 + sum_l(C_l) * 16`` (``D_l = P`` projections for a conv map,
  1 for a Linear feature) and the ``[map_size, P]`` projection matrices, also held once;
* **peak RSS** (in a fresh subprocess per point, 1 thread): the resident-memory peak while
  scoring minus the resident memory just before (model built, data generator ready). The child
  runs exactly what :func:`lightning_fair.compute_scores` runs (``StatisticsCollector.run`` then
  ``scores_from_statistics``) on batches generated one at a time from a seeded generator, so the
  data never accumulates. For context, the same child measure for a plain forward+backward of
  the loss over the same batches.

The peak is read from ``/proc/self/status`` ``VmHWM`` after resetting it through
``/proc/self/clear_refs`` (Linux), because ``getrusage(RUSAGE_SELF).ru_maxrss`` of a child
started with ``subprocess`` inherits the *parent's* peak at ``exec`` (Linux keeps the maximum in
the signal struct across ``exec``): run from a parent that already holds a few hundred MiB, its
delta reads 0. The ``ru_maxrss`` delta is still recorded (``maxrss_delta_mib``) and is the
fallback off Linux.

Run:  python examples/benchmarks/memory.py            (batches 2, 8, 32 x n 8, 32, 128; about 1.5 min on 2 cores)
      python examples/benchmarks/memory.py --quick    (batches 2, 8 x n 8, 32; about 30 s)

From Python: ``run(quick=False, models=None) -> dict``, ``to_markdown(results) -> str``,
``plot(results, img_dir) -> [png paths]``; ``models = {name: (model, example_input)}`` with
``example_input`` a ``[1, C, H, W]`` tensor (default: zoo.vgg_bn at 1x28x28, zoo.resnet at
3x32x32, seeded random init; memory does not depend on training).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterable, Optional, Sequence

import torch
from torch import nn

BATCH_COUNTS = (2, 8, 32)
SAMPLES_PER_CLASS = (8, 32, 128)
QUICK_BATCH_COUNTS = (2, 8)
QUICK_SAMPLES_PER_CLASS = (8, 32)
BATCH_SIZE = 64
NUM_PROJECTIONS = 128
MIB = 2**20


# --------------------------------------------------------------------------- data
class GeneratedBatches:
    """Labelled batches made on the fly from a seeded generator (nothing is stored).

    Iterating twice yields the same batches. ``len()`` is the number of batches.
    """

    def __init__(self, num_batches: int, batch_size: int, input_shape: Sequence[int], num_classes: int, seed: int = 0):
        self.num_batches = int(num_batches)
        self.batch_size = int(batch_size)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.num_batches):
            x = torch.randn(self.batch_size, *self.input_shape, generator=generator)
            y = torch.randint(0, self.num_classes, (self.batch_size,), generator=generator)
            yield x, y


def default_models(seed: int = 0) -> Dict[str, tuple]:
    """``{name: (model, example_input)}``: zoo.vgg_bn at 1x28x28 and zoo.resnet at 3x32x32."""
    from lightning_fair.demos import zoo

    torch.manual_seed(seed)
    vgg = zoo.vgg_bn(in_channels=1, num_classes=10).eval()
    torch.manual_seed(seed)
    res = zoo.resnet(in_channels=3, num_classes=10).eval()
    return {
        "vgg_bn (1x28x28)": (vgg, torch.zeros(1, 1, 28, 28)),
        "resnet (3x32x32)": (res, torch.zeros(1, 3, 32, 32)),
    }


# ---------------------------------------------------------------------- measures
def buffer_bytes(collector) -> dict:
    """Exact bytes of a collector's statistics (U's samples, R's two sums) and projection matrices."""
    samples = collector.class_samples.nbytes
    taylor = collector.taylor.nbytes
    projections = collector.class_samples.projection_bytes
    return {
        "samples_bytes": int(samples),
        "taylor_bytes": int(taylor),
        "buffer_bytes": int(samples + taylor),
        "projection_bytes": int(projections),
    }


def layer_shapes(model: nn.Module, example_input: torch.Tensor) -> dict:
    """What the formula needs, from one forward with hooks (independent of the collector):
    ``{"num_classes": K, "layers": {name: (C_l, map_size_l)}}`` for every Conv/Linear layer
    except the last one to run (the output layer, never scored), then for every Conv/Linear whose
    input is not a layer's output seen through the norms and activations after it (a residual
    add, a pooling, ...: U observes such inputs apart) the input's ``(channels, map size)``."""
    from lightning_fair.units.channels import (
        ACTIVATION_TYPES,
        NORM_TYPES,
        PASS_THROUGH_TYPES,
        PRUNABLE_TYPES,
        units_view,
    )

    seen, inputs, observed = {}, {}, {}  # id -> tensor: kept alive, so ids are not reused
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):

            def hook(mod, args, out, name=name):
                view = units_view(out, mod)
                seen[name] = (int(view.shape[1]), int(view.shape[2]))
                observed[id(out)] = out

            def pre_hook(mod, args, name=name):
                x = args[0]
                if observed.get(id(x)) is not x and x is not example_input:
                    observed[id(x)] = x  # the next consumer of the same tensor adds nothing
                    view = units_view(x, mod)
                    inputs[name + "<input>"] = (int(view.shape[1]), int(view.shape[2]))

            handles.append(module.register_forward_hook(hook))
            handles.append(module.register_forward_pre_hook(pre_hook))
        elif isinstance(module, NORM_TYPES + ACTIVATION_TYPES + PASS_THROUGH_TYPES):

            def follow(mod, args, out):
                if id(args[0]) in observed:
                    observed[id(out)] = out

            handles.append(module.register_forward_hook(follow))
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            logits = model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in training.items():
            m.training = flag
    layers = dict(list(seen.items())[:-1])  # dicts keep execution order; the last is the output layer
    layers.update(inputs)
    return {"num_classes": int(logits.shape[1]), "layers": layers}


def predicted_bytes(shapes: dict, samples_per_class: int, num_projections: int) -> int:
    """``K * n * sum_l(C_l * D_l) * 4 + sum_l(C_l) * 16`` with ``D_l = P`` for maps, 1 for scalars
    (the samples, float32, and the two float64 Taylor sums of every scored layer's unit, signed and per-sample
    absolute; the observed layer inputs have samples only)."""
    k = shapes["num_classes"]
    width = sum(c * (num_projections if m > 1 else 1) for c, m in shapes["layers"].values())
    scored = sum(c for name, (c, _) in shapes["layers"].items() if not name.endswith("<input>"))
    return k * int(samples_per_class) * width * 4 + scored * 16


def _rss_now_kib() -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _hwm_kib() -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _maxrss_kib() -> int:
    import resource

    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value // 1024 if sys.platform == "darwin" else value  # bytes on macOS, KiB on Linux


def _child(spec: dict) -> dict:
    """Runs in a fresh interpreter: load the model, score (or plain pass), report memory."""
    import gc

    torch.set_num_threads(int(spec["threads"]))
    model = torch.load(spec["model_path"], weights_only=False, map_location="cpu")
    model.eval()
    generated = GeneratedBatches(
        spec["batches"], spec["batch_size"], spec["input_shape"], spec["num_classes"], spec["seed"]
    )
    trace = []  # resident memory (KiB) before each batch and after the last one

    def batches():
        for batch in generated:
            trace.append(_rss_now_kib() or 0)
            yield batch
        trace.append(_rss_now_kib() or 0)

    gc.collect()
    maxrss_before = _maxrss_kib()
    rss_before = _rss_now_kib()
    hwm_ok = _reset_hwm()
    start = time.perf_counter()
    out = {}
    if spec["mode"] == "scores":
        from lightning_fair.collect.collector import StatisticsCollector
        from lightning_fair.scoring.fair import scores_from_statistics  # FAIR's criterion, as compute_scores

        # compute_scores(model, batches, samples_per_class=n, num_projections=P), in its two steps
        collector = StatisticsCollector(
            model, samples_per_class=spec["samples_per_class"], num_projections=spec["num_projections"]
        ).run(batches())
        hwm_pass = _hwm_kib()
        out.update(buffer_bytes(collector))  # before scoring, which frees each layer's samples once used
        hwm_ok = hwm_ok and _reset_hwm()  # the distance step's own peak, from the RSS it starts at
        scores = scores_from_statistics(collector)
        hwm_distances = _hwm_kib()
        if hwm_ok and None not in (hwm_pass, hwm_distances, rss_before):
            out["pass_peak_delta_mib"] = (hwm_pass - rss_before) / 1024
            out["distance_peak_delta_mib"] = (hwm_distances - rss_before) / 1024
        out["class_counts"] = list(scores.class_counts)
        out["num_batches_seen"] = int(scores.config["num_batches"])
    else:  # a plain forward + backward of the loss per batch: the floor
        for x, y in batches():
            nn.functional.cross_entropy(model(x), y).backward()
        out["num_batches_seen"] = spec["batches"]
    out["seconds"] = time.perf_counter() - start
    hwm_after = _hwm_kib()
    maxrss_after = _maxrss_kib()
    out["maxrss_delta_mib"] = (maxrss_after - maxrss_before) / 1024
    if "pass_peak_delta_mib" in out:
        out["peak_delta_mib"] = max(out["pass_peak_delta_mib"], out["distance_peak_delta_mib"])
        out["peak_source"] = "VmHWM"
    elif hwm_ok and hwm_after is not None and rss_before is not None:
        out["peak_delta_mib"] = (hwm_after - rss_before) / 1024
        out["peak_source"] = "VmHWM"
    else:
        out["peak_delta_mib"] = out["maxrss_delta_mib"]
        out["peak_source"] = "ru_maxrss"
    out["rss_before_mib"] = (rss_before or 0) / 1024
    if rss_before is not None and len(trace) >= 3:
        out["rss_trace_mib"] = [(t - rss_before) / 1024 for t in trace]
        out["rss_growth_mib"] = (trace[-1] - trace[1]) / 1024  # after the first batch -> after the last
    return out


def _run_child(spec: dict, timeout: float = 600) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- run
def run(
    quick: bool = False,
    models: Optional[dict] = None,
    *,
    batch_counts: Optional[Iterable[int]] = None,
    samples_per_class: Optional[Iterable[int]] = None,
    batch_size: int = BATCH_SIZE,
    num_projections: int = NUM_PROJECTIONS,
    measure_rss: bool = True,
    threads: int = 1,
    seed: int = 0,
    verbose: bool = False,
) -> dict:
    """Measure statistics-buffer bytes and peak RSS of score collection.

    Args:
        quick: batches (2, 8) x samples_per_class (8, 32) instead of (2, 8, 32) x (8, 32, 128).
        models: ``{name: (model, example_input)}``, ``example_input`` a ``[1, ...]`` tensor giving
            the input shape; default :func:`default_models`. Models are not modified.
        batch_counts, samples_per_class: override the grids.
        measure_rss: run each point in a fresh subprocess and record its peak RSS; if False, the
            buffers are measured in this process and the RSS columns are None.
        threads: torch threads in the measuring process.

    Returns:
        plain data: ``{"config": {...}, "rows": [ {model, batches, samples_per_class,
        buffer_bytes, predicted_bytes, projection_bytes, peak_delta_mib, plain_peak_delta_mib,
        maxrss_delta_mib, seconds, ...} ], "models": {name: {...}}, "seconds": total}``.
    """
    t0 = time.perf_counter()
    batch_counts = tuple(batch_counts or (QUICK_BATCH_COUNTS if quick else BATCH_COUNTS))
    spcs = tuple(samples_per_class or (QUICK_SAMPLES_PER_CLASS if quick else SAMPLES_PER_CLASS))
    models = default_models(seed) if models is None else models
    rows, model_info = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, entry) in enumerate(models.items()):
            model, example_input = _unpack_entry(name, entry)
            shapes = layer_shapes(model, example_input)
            params = sum(p.numel() for p in model.parameters())
            model_info[name] = {
                "num_classes": shapes["num_classes"],
                "input_shape": list(example_input.shape[1:]),
                "scored_layers": len(shapes["layers"]),
                "units": sum(c for c, _ in shapes["layers"].values()),
                "conv_units": sum(c for c, m in shapes["layers"].values() if m > 1),
                "params": int(params),
            }
            spec_base = {
                "input_shape": list(example_input.shape[1:]),
                "num_classes": shapes["num_classes"],
                "batch_size": int(batch_size),
                "num_projections": int(num_projections),
                "threads": int(threads),
                "seed": int(seed),
            }
            model_path = None
            if measure_rss:
                model_path = os.path.join(tmp, f"model{index}.pt")
                try:
                    torch.save(model, model_path)
                except Exception as exc:  # e.g. a class defined in a closure: cannot be pickled
                    model_info[name]["rss_error"] = f"cannot pickle the model for a subprocess: {exc}"
                    model_path = None
            plain = {}
            for nb in batch_counts:
                if model_path:
                    plain[nb] = _try_child(
                        {**spec_base, "mode": "plain", "model_path": model_path, "batches": nb}, model_info[name]
                    )
                for n in spcs:
                    row = {
                        "model": name,
                        "batches": int(nb),
                        "samples_per_class": int(n),
                        "batch_size": int(batch_size),
                        "num_projections": int(num_projections),
                        "predicted_bytes": predicted_bytes(shapes, n, num_projections),
                    }
                    child = None
                    if model_path:
                        child = _try_child(
                            {
                                **spec_base,
                                "mode": "scores",
                                "model_path": model_path,
                                "batches": nb,
                                "samples_per_class": int(n),
                            },
                            model_info[name],
                        )
                    if child is None:
                        row.update(_in_process(model, nb, n, spec_base))
                        row.update(
                            peak_delta_mib=None,
                            pass_peak_delta_mib=None,
                            distance_peak_delta_mib=None,
                            maxrss_delta_mib=None,
                            peak_source=None,
                            rss_trace_mib=None,
                            rss_growth_mib=None,
                        )
                    else:
                        row.update(
                            {
                                k: child.get(k)
                                for k in (
                                    "samples_bytes",
                                    "taylor_bytes",
                                    "buffer_bytes",
                                    "projection_bytes",
                                    "peak_delta_mib",
                                    "pass_peak_delta_mib",
                                    "distance_peak_delta_mib",
                                    "maxrss_delta_mib",
                                    "peak_source",
                                    "seconds",
                                    "rss_before_mib",
                                    "class_counts",
                                    "rss_trace_mib",
                                    "rss_growth_mib",
                                )
                            }
                        )
                    counts = row.get("class_counts") or [0]
                    row["min_filled"], row["max_filled"] = int(min(counts)), int(max(counts))
                    pl = plain.get(nb)
                    row["plain_peak_delta_mib"] = pl["peak_delta_mib"] if pl else None
                    row["plain_seconds"] = pl["seconds"] if pl else None
                    row["matches_formula"] = row["buffer_bytes"] == row["predicted_bytes"]
                    rows.append(row)
                    if verbose:
                        print(_row_line(row), file=sys.stderr, flush=True)
    summary = _summarize(rows, batch_counts, spcs)
    return {
        "config": {
            "batch_counts": list(batch_counts),
            "samples_per_class": list(spcs),
            "batch_size": int(batch_size),
            "num_projections": int(num_projections),
            "threads": int(threads),
            "seed": int(seed),
            "measure_rss": bool(measure_rss),
            "quick": bool(quick),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "models": model_info,
        "rows": rows,
        "summary": summary,
        "seconds": time.perf_counter() - t0,
    }


def _unpack_entry(name, entry):
    if isinstance(entry, dict):
        model = entry.get("model")
        example = entry.get("example_input", entry.get("example_inputs"))
    elif isinstance(entry, (tuple, list)) and len(entry) == 2:
        model, example = entry
    else:
        raise TypeError(f"models[{name!r}] must be (model, example_input), got {type(entry).__name__}")
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"models[{name!r}]: example_input must be a [1, ...] tensor, got {type(example).__name__}")
    model = model.cpu() if any(p.device.type != "cpu" for p in model.parameters()) else model
    return model, example[:1].detach().cpu()


def _try_child(spec, info):
    try:
        return _run_child(spec)
    except Exception as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        info["rss_error"] = lines[-1][-300:] if lines else type(exc).__name__
        return None


def _in_process(model, nb, n, spec_base):
    from lightning_fair.collect.collector import StatisticsCollector

    threads = torch.get_num_threads()
    torch.set_num_threads(spec_base["threads"])
    try:
        batches = GeneratedBatches(
            nb, spec_base["batch_size"], spec_base["input_shape"], spec_base["num_classes"], spec_base["seed"]
        )
        start = time.perf_counter()
        collector = StatisticsCollector(model, samples_per_class=n, num_projections=spec_base["num_projections"]).run(
            batches
        )
        out = buffer_bytes(collector)
        out["seconds"] = time.perf_counter() - start
        out["class_counts"] = collector.class_counts.tolist()
        out["rss_before_mib"] = None
        return out
    finally:
        torch.set_num_threads(threads)


def _summarize(rows, batch_counts, spcs) -> dict:
    out = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        by_n = {}
        for n in spcs:
            sel = [r for r in mine if r["samples_per_class"] == n]
            peaks = [r["peak_delta_mib"] for r in sel if r["peak_delta_mib"] is not None]
            passes = [r["pass_peak_delta_mib"] for r in sel if r["pass_peak_delta_mib"] is not None]
            by_n[n] = {
                "buffer_bytes": sorted({r["buffer_bytes"] for r in sel}),
                "peak_min_mib": min(peaks) if peaks else None,
                "peak_max_mib": max(peaks) if peaks else None,
                "pass_peak_min_mib": min(passes) if passes else None,
                "pass_peak_max_mib": max(passes) if passes else None,
            }
        constant = all(len(v["buffer_bytes"]) == 1 for v in by_n.values())
        ns = [n for n in spcs if by_n[n]["buffer_bytes"]]
        linear = None
        if constant and len(ns) >= 2:  # bytes = a * n + b, b = taylor bytes
            taylor = mine[0]["taylor_bytes"]
            slopes = {(by_n[n]["buffer_bytes"][0] - taylor) / n for n in ns}
            linear = len(slopes) == 1
        spreads = [v["peak_max_mib"] - v["peak_min_mib"] for v in by_n.values() if v["peak_min_mib"] is not None]
        pass_spreads = [
            v["pass_peak_max_mib"] - v["pass_peak_min_mib"] for v in by_n.values() if v["pass_peak_min_mib"] is not None
        ]
        plain = [r["plain_peak_delta_mib"] for r in mine if r["plain_peak_delta_mib"] is not None]
        growth = [r["rss_growth_mib"] for r in mine if r.get("rss_growth_mib") is not None]
        out[name] = {
            "buffers_constant_in_batches": constant,
            "buffers_linear_in_n": linear,
            "formula_matches": all(r["matches_formula"] for r in mine),
            "max_peak_spread_over_batches_mib": max(spreads) if spreads else None,
            "max_pass_peak_spread_over_batches_mib": max(pass_spreads) if pass_spreads else None,
            "plain_peak_range_mib": [min(plain), max(plain)] if plain else None,
            "rss_growth_range_mib": [min(growth), max(growth)] if growth else None,
            "by_samples_per_class": {str(k): v for k, v in by_n.items()},
        }
    return out


# ---------------------------------------------------------------------- reporting
def _fmt_mib(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _row_line(r):
    return (
        f"{r['model']}: batches {r['batches']}, n {r['samples_per_class']}: buffers {r['buffer_bytes'] / MIB:.3f} MiB "
        f"(formula {r['predicted_bytes'] / MIB:.3f}), peak pass +{_fmt_mib(r['pass_peak_delta_mib'])} MiB, "
        f"distances +{_fmt_mib(r['distance_peak_delta_mib'])} MiB, plain +{_fmt_mib(r['plain_peak_delta_mib'])} MiB, "
        f"{r['seconds']:.2f} s"
    )


def to_markdown(results: dict) -> str:
    """A markdown section: heading, table, and a paragraph reading the numbers."""
    cfg = results["config"]
    rows = results["rows"]
    lines = ["### Memory of score collection", ""]
    lines.append(
        f"Batches of {cfg['batch_size']} images generated one at a time (seeded), "
        f"{cfg['num_projections']} projections, {cfg['threads']} thread(s), torch {cfg['torch']}; models seeded and "
        "untrained (memory does not depend on the weights). *Filled*: fewest-most samples kept per class. "
        "*Buffers*: exact bytes of the collector's samples and its two Taylor sums per unit; *formula*: "
        "K·n·Σ C_l·D_l·4 + Σ C_l·16 (D_l = P for conv maps, 1 for Linear features); *proj.*: the "
        "`[map_size, P]` projection matrices, also allocated once. Peaks are resident-memory peaks minus the "
        "resident memory just before scoring, each row in a fresh process: *pass* = the forward/backward pass "
        "that fills the buffers (*RSS growth*: resident memory after the last batch minus after the first), *distances* = turning them into U (sorting, pairwise W1), *plain* = one "
        "forward+backward of the loss per batch, for scale."
    )
    lines.append("")
    lines.append(
        "| model | batches | samples/class n | filled | buffers (MiB) | formula (MiB) | equal | proj. (MiB) | "
        "peak Δ pass (MiB) | RSS growth, batch 1 → last (MiB) | peak Δ distances (MiB) | peak Δ plain (MiB) | "
        "scoring (s) |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batches']} | {r['samples_per_class']} | {r['min_filled']}-{r['max_filled']} | "
            f"{r['buffer_bytes'] / MIB:.3f} | {r['predicted_bytes'] / MIB:.3f} | "
            f"{'yes' if r['matches_formula'] else 'NO'} | {r['projection_bytes'] / MIB:.2f} | "
            f"{_fmt_mib(r['pass_peak_delta_mib'], 1)} | {_fmt_mib(r.get('rss_growth_mib'), 1)} | "
            f"{_fmt_mib(r['distance_peak_delta_mib'], 1)} | "
            f"{_fmt_mib(r['plain_peak_delta_mib'], 1)} | {r['seconds']:.2f} |"
        )
    lines.append("")
    for name, info in results.get("models", {}).items():
        if info.get("rss_error"):
            lines.append(f"No subprocess peak for {name} (buffers measured in-process instead): {info['rss_error']}")
            lines.append("")
    lines.append(_reading(results))
    return "\n".join(lines) + "\n"


def _reading(results: dict) -> str:
    rows, summary, cfg = results["rows"], results["summary"], results["config"]
    parts = []
    constant = all(s["buffers_constant_in_batches"] for s in summary.values())
    linear = all(s["buffers_linear_in_n"] is not False for s in summary.values())
    formula = all(s["formula_matches"] for s in summary.values())
    parts.append(
        f"The statistics buffers are {'byte-for-byte identical' if constant else 'NOT identical'} across "
        f"{', '.join(map(str, cfg['batch_counts']))} batches, "
        f"{'grow exactly linearly' if linear else 'do NOT grow linearly'} with samples_per_class, and "
        f"{'equal the formula in every row' if formula else 'differ from the formula in some rows'}"
        f"{' (buffers are preallocated for n per class, filled or not)' if constant else ''}."
    )
    per_model = []
    for name, s in summary.items():
        ns = sorted(s["by_samples_per_class"], key=int)
        lo, hi = s["by_samples_per_class"][ns[0]], s["by_samples_per_class"][ns[-1]]
        text = (
            f"{name}: buffers {lo['buffer_bytes'][0] / MIB:.2f} MiB at n={ns[0]} to "
            f"{hi['buffer_bytes'][0] / MIB:.2f} MiB at n={ns[-1]}"
        )
        if s["max_pass_peak_spread_over_batches_mib"] is not None:
            text += (
                f"; the pass's peak moves at most {s['max_pass_peak_spread_over_batches_mib']:.1f} MiB between "
                f"{min(cfg['batch_counts'])} and {max(cfg['batch_counts'])} batches at a fixed n"
            )
            if s["rss_growth_range_mib"]:
                lo_g, hi_g = s["rss_growth_range_mib"]
                text += (
                    f", and resident memory after the last batch is within {lo_g:+.1f} to {hi_g:+.1f} MiB of "
                    "what it was after the first"
                )
        per_model.append(text)
    parts.append("; ".join(per_model) + ".")
    if any(r["pass_peak_delta_mib"] is not None for r in rows):
        extra = [
            (r["pass_peak_delta_mib"] - r["buffer_bytes"] / MIB) / r["plain_peak_delta_mib"]
            for r in rows
            if r["pass_peak_delta_mib"] is not None and r["plain_peak_delta_mib"]
        ]
        per_batch = (
            (
                f" (the pass's peak less its buffers is {min(extra):.1f}-{max(extra):.1f}x the plain pass's: "
                "mainly because each scored layer's output is kept next to the clone handed downstream, for "
                "`autograd.grad` with respect to layer outputs)"
            )
            if extra
            else ""
        )
        parts.append(
            f"So the pass costs a per-batch amount of working memory{per_batch} plus the buffers, and does not "
            "grow with the calibration set: more batches only cost time (what the peak moves between batch "
            "counts is the allocator settling over the first few batches, not kept data; see the RSS growth "
            "column). The distance step's peak depends on how the classes "
            "filled, not on the batch count as such: with equal counts per class the quantile grid has n levels, "
            "with unequal counts (too few batches to fill n) it has the union of all classes' steps, several "
            "times more. `max_pairwise_w1` caps each chunk's quantile grid at 2**25 elements (128 MiB in "
            "float32); the grid, its per-class pieces and its weighted copy coexist, so this step adds up to "
            "roughly 3-4x that beyond the buffers on any model, however large, and is the overall peak at big n. "
            "What grows is samples_per_class (× classes × P per conv channel), "
            "the knob to lower on big models. Peaks are read from VmHWM (reset via /proc/self/clear_refs): a "
            "subprocess's `ru_maxrss` starts at the parent's peak on Linux, so its delta under-reads "
            "(kept as `maxrss_delta_mib` in the results)."
        )
    return " ".join(parts)


def plot(results: dict, img_dir) -> list:
    """Write ``memory.png`` (buffers and peaks vs batches; buffers vs samples_per_class) into ``img_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(img_dir, exist_ok=True)
    rows = results["rows"]
    names = list(dict.fromkeys(r["model"] for r in rows))
    spcs = results["config"]["samples_per_class"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osd^v<>"
    for i, name in enumerate(names):
        for j, n in enumerate(spcs):
            sel = sorted(
                (r for r in rows if r["model"] == name and r["samples_per_class"] == n), key=lambda r: r["batches"]
            )
            xs = [r["batches"] for r in sel]
            color = colors[(i * len(spcs) + j) % len(colors)]
            marker = markers[i % len(markers)]
            if all(r["pass_peak_delta_mib"] is not None for r in sel):
                ax1.plot(
                    xs,
                    [r["pass_peak_delta_mib"] for r in sel],
                    marker=marker,
                    color=color,
                    label=f"{name}, n={n}: peak Δ pass",
                )
            ax1.plot(
                xs,
                [r["buffer_bytes"] / MIB for r in sel],
                marker=marker,
                color=color,
                linestyle=":",
                alpha=0.8,
                label=f"{name}, n={n}: buffers",
            )
            longest = sel[-1] if sel else None
            if longest and longest.get("rss_trace_mib"):
                trace = longest["rss_trace_mib"]
                ax3.plot(range(len(trace)), trace, color=color, label=f"{name}, n={n}")
        sel = [r for r in rows if r["model"] == name and r["batches"] == max(results["config"]["batch_counts"])]
        sel.sort(key=lambda r: r["samples_per_class"])
        xs = [r["samples_per_class"] for r in sel]
        color = colors[(i * len(spcs)) % len(colors)]
        ax2.plot(
            xs,
            [r["buffer_bytes"] / MIB for r in sel],
            "o",
            color=color,
            markersize=8,
            label=f"{name}: buffers (measured)",
        )
        ax2.plot(xs, [r["predicted_bytes"] / MIB for r in sel], "-", color=color, alpha=0.6, label=f"{name}: formula")
        if all(r["pass_peak_delta_mib"] is not None for r in sel):
            ax2.plot(
                xs, [r["pass_peak_delta_mib"] for r in sel], "s--", color=color, alpha=0.6, label=f"{name}: peak Δ pass"
            )
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(results["config"]["batch_counts"], [str(b) for b in results["config"]["batch_counts"]])
    ax1.set_xlabel(f"calibration batches (of {results['config']['batch_size']})")
    ax1.set_ylabel("MiB")
    ax1.set_title("vs number of batches: flat")
    top = max((max(line.get_ydata()) for line in ax1.lines), default=1.0)
    ax1.set_ylim(0, top * 1.5)  # room for the legend above the lines
    ax1.legend(fontsize=6, ncol=2, loc="upper center")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(spcs, [str(n) for n in spcs])
    ax2.set_yscale("log")
    ax2.set_xlabel(f"samples_per_class n ({max(results['config']['batch_counts'])} batches)")
    ax2.set_ylabel("MiB")
    ax2.set_title("vs samples_per_class: buffers linear")
    ax2.legend(fontsize=7)
    ax3.set_xlabel(f"batches done (of {max(results['config']['batch_counts'])})")
    ax3.set_ylabel("resident memory - before scoring (MiB)")
    ax3.set_title("resident memory during the pass")
    if ax3.lines:
        ax3.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(str(img_dir), "memory.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batches 2, 8 x samples_per_class 8, 32")
    parser.add_argument("--no-rss", action="store_true", help="buffers only, in this process (no subprocesses)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--img-dir", help="also write memory.png here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    results = run(quick=args.quick, measure_rss=not args.no_rss, verbose=True)
    print(to_markdown(results))
    print(f"({results['seconds']:.1f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    if args.img_dir:
        print("\n".join(plot(results, args.img_dir)))


if __name__ == "__main__":
    main()
