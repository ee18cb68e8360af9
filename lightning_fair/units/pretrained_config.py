"""What a Hugging Face config says about a pruned model's shapes (the ``shapes`` option).

A standard config holds one head count and one MLP width for all layers, so a model whose layers
were pruned to different widths does not load with ``from_pretrained`` (size mismatch). Two ways out:

- ``shapes="uniform"``: every layer of a kind keeps the same count
  (:class:`lightning_fair.allocation.budgets.UniformShapes`); a layer whose width no config field
  holds is kept whole (:func:`fixed_layers`: BERT's and ViT's heads, whose size the config derives
  from the hidden size; a pooler); after removal :func:`write_config` sets the fields, and the
  ``save_pretrained`` folder loads with stock ``from_pretrained``.
- ``shapes="per_layer"``: the config keeps its original counts.

Either way the config carries the pruning history and the counts from before the first pruning
(:func:`record_in_config`, under :data:`CONFIG_KEY`), which
:func:`lightning_fair.removal.pretrained.load_pretrained` replays on a model built from them (stock
``from_pretrained`` ignores the entry).

The config fields of each unit family are the family's own (``UnitFamily.config_fields``); those of
plain Linear layers (a BERT's intermediate layer) are in :data:`PLAIN_WIDTHS`.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Dict, List, Optional, Tuple

from torch import nn

from .families import family_of_module, find_units

__all__ = [
    "CONFIG_KEY",
    "PLAIN_WIDTHS",
    "TOUCHED_FIELDS",
    "allowed_removals",
    "config_problem",
    "fixed_layers",
    "layer_fields",
    "pretrained_models",
    "record_in_config",
    "write_config",
]

#: the config attribute holding a per-layer pruning history (and the counts the config had before)
CONFIG_KEY = "lightning_fair_pruning"

#: Linear layers whose output width a config field holds, by ``config.model_type`` (name patterns)
PLAIN_WIDTHS: Dict[str, Dict[str, str]] = {
    **{
        kind: {"*.intermediate.dense": "intermediate_size"}
        for kind in ("bert", "roberta", "xlm-roberta", "camembert", "electra")
    },
    # transformers 5's ViT blocks name their MLP ``mlp.fc1`` (earlier: ``intermediate.dense``)
    **{
        kind: {"*.intermediate.dense": "intermediate_size", "*.mlp.fc1": "intermediate_size"}
        for kind in ("vit", "deit")
    },
    "distilbert": {"*.ffn.lin1": "hidden_dim"},
}

#: every config field :func:`write_config` may set (their values before pruning travel with a
#: per-layer history, so that the model is first built as it was)
TOUCHED_FIELDS = (
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "shared_expert_intermediate_size",
    "num_local_experts",
    "num_experts",
    "hidden_dim",
)


def pretrained_models(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(prefix, module)`` of the outermost Hugging Face models in ``model`` (itself, or e.g. the
    ``self.model`` of a LightningModule): modules with a ``config`` and ``save_pretrained``."""
    found: List[Tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(_local(prefix, name) is not None for prefix, _ in found):
            continue  # inside one found already
        if hasattr(module, "save_pretrained") and hasattr(getattr(module, "config", None), "to_dict"):
            found.append((name, module))
    return found


def _local(prefix: str, name: str) -> Optional[str]:
    """``name`` relative to the submodule ``prefix`` (None: outside it)."""
    if not prefix:
        return name
    return name[len(prefix) + 1 :] if name.startswith(prefix + ".") else None


def layer_fields(hf_model: nn.Module) -> Dict[str, Optional[Dict[str, int]]]:
    """``{layer: config fields holding its current width}`` for every unit-family module and every
    Linear of ``hf_model`` (None: no config field holds it)."""
    config = hf_model.config
    out: Dict[str, Optional[Dict[str, int]]] = {}
    for name, units in find_units(hf_model).items():
        family = family_of_module(units.module)
        out[name] = family.config_fields(name, units, config) if family is not None else None
    patterns = PLAIN_WIDTHS.get(getattr(config, "model_type", ""), {})
    for name, module in hf_model.named_modules():
        if name in out or not isinstance(module, nn.Linear):
            continue
        field = next((f for p, f in patterns.items() if fnmatch.fnmatchcase(name, p)), None)
        out[name] = {field: module.out_features} if field else None
    return out


def config_problem(config, fields: Dict[str, int]) -> str:
    """Why ``config`` with ``fields`` set would not save (its own validation, e.g. Gemma3's
    ``hidden_size % num_attention_heads == 0``), or "" if it would."""
    validate = getattr(config, "validate", None)
    if validate is None:
        return ""
    trial = copy.deepcopy(config)
    for field, value in fields.items():
        setattr(trial, field, value)
    try:
        trial.validate()
    except Exception as error:  # noqa: BLE001 (any validation failure is the answer)
        return str(getattr(error, "__cause__", None) or error).strip().splitlines()[-1]
    return ""


def _removals(config, fields: Dict[str, int]) -> Optional[List[int]]:
    """The unit counts a module described by ``fields`` may lose with the config still valid: for
    grouped-query heads, the multiples of the key-value heads (every group keeps the same number of
    query heads) whose remaining head count the config accepts (Llama's and Gemma3's configs ask for
    ``hidden_size % num_attention_heads == 0``); None for any count (one less is accepted)."""
    heads, groups = fields.get("num_attention_heads"), fields.get("num_key_value_heads")
    if heads and groups:
        return [
            r
            for r in range(0, heads, groups)
            if not r or not config_problem(config, {**fields, "num_attention_heads": heads - r})
        ]
    field, value = next(iter(fields.items()))
    if value > 1 and config_problem(config, {**fields, field: value - 1}):
        return [0]
    return None


def allowed_removals(model: nn.Module, layers: List[str]) -> Dict[str, List[int]]:
    """``{layer: unit counts it may lose}`` for the ``layers`` inside a Hugging Face model whose
    config restricts them (:func:`_removals`; ``[0]``: none, or no config field holds the width);
    layers free to lose any count are not listed."""
    allowed: Dict[str, List[int]] = {}
    for prefix, hf_model in pretrained_models(model):
        fields = layer_fields(hf_model)
        seen: Dict[tuple, Optional[List[int]]] = {}
        for name in layers:
            local = _local(prefix, name)
            if local is None:
                continue
            own = fields.get(local)
            key = tuple(sorted((own or {}).items()))
            if key not in seen:
                seen[key] = [0] if own is None else _removals(hf_model.config, own)
            counts = seen[key]
            if counts is not None:
                allowed[name] = counts
    return allowed


def fixed_layers(model: nn.Module, layers: List[str], allowed: Optional[Dict[str, List[int]]] = None) -> Dict[str, str]:
    """``{layer: why}`` for the scored ``layers`` inside a Hugging Face model that ``shapes="uniform"``
    keeps whole: no config field holds their width, or the config accepts no smaller count
    (``allowed``: :func:`allowed_removals`). Layers outside such a model are free (their counts
    are only made equal)."""
    allowed = allowed_removals(model, layers) if allowed is None else allowed
    fixed: Dict[str, str] = {}
    for prefix, hf_model in pretrained_models(model):
        fields = layer_fields(hf_model)
        kind = getattr(hf_model.config, "model_type", type(hf_model.config).__name__)
        for name in layers:
            local = _local(prefix, name)
            if local is None or allowed.get(name, None) != [0]:
                continue
            if fields.get(local) is None:
                why = f"no field of the {kind} config holds its width"
            else:
                why = f"the {kind} config accepts no smaller count"
            fixed[name] = (
                f"kept whole under shapes='uniform': {why} (shapes='per_layer' prunes it; "
                "lightning_fair.load_pretrained reloads that)"
            )
    return fixed


def write_config(model: nn.Module, state: Optional[dict] = None) -> Dict[str, Dict[str, int]]:
    """Set the config fields of every Hugging Face model in ``model`` to its layers' counts
    (``shapes="uniform"``); ``{prefix: fields set}``. With the pruning ``state``, the history and the
    counts from before the first pruning go into the config too (:func:`record_in_config`), so that
    ``load_pretrained`` also reloads the folder, and a later per-layer pruning can be replayed.

    Raises:
        ValueError: layers that one field describes have different counts (the model was pruned
            per layer before); nothing is changed.
    """
    plans = {}
    for prefix, hf_model in pretrained_models(model):
        values: Dict[str, set] = {}
        for fields in layer_fields(hf_model).values():
            for field, value in (fields or {}).items():
                values.setdefault(field, set()).add(int(value))
        differ = {f: sorted(v) for f, v in values.items() if len(v) > 1}
        problem = "" if differ else config_problem(hf_model.config, {f: next(iter(v)) for f, v in values.items()})
        if problem:
            raise ValueError(
                f"shapes='uniform': the {prefix or 'model'}'s config refuses the pruned counts ({problem}); "
                "keep shapes='per_layer' and reload with lightning_fair.load_pretrained"
            )
        if differ:
            raise ValueError(
                f"shapes='uniform' cannot describe {prefix or 'the model'} in its config: layers differ in "
                f"{differ} (it was pruned with shapes='per_layer' before); prune a fresh model, or keep "
                "shapes='per_layer' and reload with lightning_fair.load_pretrained"
            )
        config = hf_model.config
        plans[prefix] = (
            config,
            {f: next(iter(v)) for f, v in values.items() if getattr(config, f, None) != next(iter(v))},
        )
    if state is not None:  # before the fields change: the counts it records are the original ones
        record_in_config(model, state)
    for prefix, (config, fields) in plans.items():
        for field, value in fields.items():
            setattr(config, field, value)
    return {prefix: fields for prefix, (_, fields) in plans.items()}


def record_in_config(model: nn.Module, state: dict) -> None:
    """Put the pruning ``state`` (history rows, example input) of ``model`` into the config of every
    Hugging Face model in it, with names relative to that model and the config's counts from before
    the first pruning (``shapes="per_layer"``): ``save_pretrained`` writes it to config.json."""
    for prefix, hf_model in pretrained_models(model):
        config = hf_model.config
        earlier = getattr(config, CONFIG_KEY, None)
        original = (earlier or {}).get("config") or {
            field: getattr(config, field) for field in TOUCHED_FIELDS if hasattr(config, field)
        }
        rows = []
        for name, is_out, idxs in state["history"]:
            local = _local(prefix, name)
            if local is not None:
                rows.append([local, bool(is_out), [int(i) for i in idxs]])
        record = {key: copy.deepcopy(value) for key, value in state.items() if key != "history"}
        setattr(config, CONFIG_KEY, {**record, "history": rows, "config": dict(original)})
