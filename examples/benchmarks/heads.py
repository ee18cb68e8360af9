"""What the transformer benchmarks (vit.py, bert.py) share: FAIR against torch-pruning's whole-head
pruning at each target, the baselines' ratio search, and the two tables of the docs page."""

from __future__ import annotations

import collections
import traceback
from typing import Callable, Dict, Iterable, Optional, Tuple

import quality
from torch import nn

TARGETS = (0.5, 0.3)
METHODS = {
    "fair": "FAIR (ours, default pipeline)",
    "l2": "uniform L2 magnitude, heads",
    "taylor": "uniform Taylor, heads",
    "global_l2": "global L2 magnitude, heads",
}


def compare(
    fair_models: Callable[[], Iterable[Tuple[float, nn.Module, str]]],
    pruned_at: Callable[[str, float], nn.Module],
    kept: Callable[[nn.Module], float],
    record: Callable[[nn.Module], dict],
    quick: bool,
    verbose: bool = True,
) -> Dict[str, dict]:
    """``{method: {target: row}}``. ``fair_models()`` yields ``(target, pruned model, note)`` (if it
    raises, FAIR's rows say why); ``pruned_at(method, ratio)`` is a baseline's pruned model (ValueError:
    no model at that ratio, e.g. a layer left without heads); ``kept(model)`` its kept MACs;
    ``record(model)`` the row of a pruned model (one-shot and fine-tuned accuracy, shape)."""
    out: Dict[str, dict] = collections.defaultdict(dict)

    def put(method, t, model, note):
        row = out[method][t] = dict(record(model), note=note)
        if verbose:
            print(
                f"  {method} {t}: kept {row['kept']:.2f} one-shot {row['oneshot']:.1f} ft {row['ft']:.1f} "
                f"({row['shape']})",
                flush=True,
            )

    try:
        for t, model, note in fair_models():
            put("fair", t, model, note)
    except Exception as err:  # recorded in the table, not hidden
        traceback.print_exc()
        for t in TARGETS:
            out["fair"][t] = {"status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"}
    for method in ("l2", "taylor", "global_l2"):

        def kept_at(ratio, method=method):
            try:
                return kept(pruned_at(method, ratio))
            except ValueError:  # that ratio does not give a model
                return 1.0

        ratios, unreachable = quality.search_ratios(
            kept_at, TARGETS, grid=7 if quick else 13, iterations=3 if quick else 6
        )
        for t in TARGETS:
            if ratios[t] is None:
                out[method][t] = {"status": f"reaches {unreachable[t]:.2f} at best"}
            else:
                put(method, t, pruned_at(method, ratios[t]), f"ratio {ratios[t]:.3f}")
    return out


def _row(results: dict, method: str, t) -> Optional[dict]:
    rows = results["methods"].get(method, {})
    return rows.get(t) or rows.get(str(t))  # str: read back from JSON


def _cell(row: Optional[dict], key: str) -> str:
    if not row:
        return "–"
    if key not in row:
        return row.get("status", "–")
    return f"{row[key]:.1f} <sub>({row['kept']:.2f})</sub>" if key == "oneshot" else f"{row[key]:.1f}"


def tables(results: dict, shape_title: str) -> list:
    """Markdown lines: top-1 % one-shot and fine-tuned per method and target, then the shape each chose."""
    lines = [
        "| method | "
        + " | ".join(f"one-shot {t}" for t in TARGETS)
        + " | "
        + " | ".join(f"fine-tuned {t}" for t in TARGETS)
        + " |",
        "|---|" + "---:|" * (2 * len(TARGETS)),
    ]
    for method, label in METHODS.items():
        cells = [_cell(_row(results, method, t), key) for key in ("oneshot", "ft") for t in TARGETS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"| method | kept MACs | {shape_title} |",
        "|---|---:|---|",
        f"| unpruned | 1.00 | {results['shape']} |",
    ]
    for method, label in METHODS.items():
        for t in TARGETS:
            row = _row(results, method, t)
            if row and "shape" in row:
                lines.append(f"| {label} | {row['kept']:.2f} | {row['shape']} |")
    return lines
