"""torch-pruning's DependencyGraph, built and searched so that what it cannot follow ends a group,
not the prune.

- :func:`build_graph` traces the model (every parameter unfrozen while tracing, flags restored
  after). Where torch-pruning's index mapping fails on a reshape it cannot follow (a ShuffleNet
  channel shuffle: ZeroDivisionError in ``update_reshape_index_mapping``), the graph is completed
  without that reshape's mapping and the reshape is listed in ``unmapped_reshapes(graph)``: the
  coupled groups through it are left whole.
- :func:`bounded_group` is ``get_pruning_group`` with a cap on the work (torch-pruning's search
  can loop through index mappings that keep producing new indices; seen on torchvision's
  ``swin_t``, growing memory without bound): over the cap, :class:`GroupSearchTooLarge`.
- :class:`GraphState` keeps what pruning a free-standing ``nn.Parameter`` (ConvNeXt's layer
  scale ``gamma``, a ViT's ``cls_token``) changes in the graph: torch-pruning re-points its nodes
  at the pruned copy, so putting the model back without it leaves the graph stale.
- :func:`forward_problem` says why a forward fails (or changes the output's shape), or "".
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from collections.abc import Mapping
from typing import Iterator, List, Optional

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.group import Group

from ..runtime.batches import call_model, traceable_output
from ..runtime.guards import preserved_modes
from ..units.experts import find_experts

__all__ = [
    "GraphState",
    "GroupSearchTooLarge",
    "bounded_group",
    "build_graph",
    "forward_problem",
    "forward_shapes",
    "following_batchnorm",
    "frozen_index_mapping",
    "leaving_one",
    "output_shapes",
    "side_size",
    "unmapped_reshapes",
]

#: most group items (and most indices over all items) one group search may produce (measured: at
#: most 66 items and 68k indices in ResNet-50 at 224; a runaway search grows without bound)
MAX_GROUP_ITEMS = 5_000
MAX_GROUP_INDICES = 1_000_000
_UNMAPPED = "_lightning_fair_unmapped_reshapes"


class GroupSearchTooLarge(RuntimeError):
    """torch-pruning's coupled-group search went past :data:`MAX_GROUP_ITEMS` / :data:`MAX_GROUP_INDICES`,
    could not start (the module is not in the graph) or failed in torch-pruning's index mapping."""


def build_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    """torch-pruning's DependencyGraph of ``model`` (train/eval flags and ``requires_grad`` as they were).

    Example:
        >>> from lightning_fair.demos import zoo
        >>> graph = build_graph(zoo.small_cnn(), torch.randn(1, 1, 8, 8))
        >>> unmapped_reshapes(graph)
        []
    """
    graph = tp.DependencyGraph()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        # torch-pruning traces grad_fn: a frozen layer fed by inputs without grad leaves no trace
        for param in model.parameters():
            param.requires_grad_(True)
        with preserved_modes(model), torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            # parameters outside Conv/Linear/norm layers (cls and position tokens): torch-pruning prunes
            # them along their channel dimension, which is what the embedding groups need; the planner
            # keeps those groups whole unless prune_embedding, so its warning says nothing to act on
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            try:
                graph.build_dependency(
                    model,
                    example_inputs=example_inputs,
                    # a dict of keyword inputs: the entries the forward names (torch-pruning passes all)
                    forward_fn=call_model if isinstance(example_inputs, Mapping) else None,
                    output_transform=traceable_output,
                    unwrapped_parameters=vector_parameters(model),
                )
            except ArithmeticError as error:
                if not _raised_in(error, "update_index_mapping") or not hasattr(graph, "module2node"):
                    raise
                _complete_index_mapping(graph)  # traced and linked: only the index mapping is missing
    finally:
        for name, param in model.named_parameters():
            if name in flags:
                param.requires_grad_(flags[name])
    graph.__dict__.setdefault(_UNMAPPED, [])
    return graph


#: modules whose own parameters torch-pruning prunes itself
_WRAPPED = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.PReLU,
    nn.Embedding,
    nn.MultiheadAttention,
    nn.RNNBase,
)


def vector_parameters(model: nn.Module) -> list:
    """``[(parameter, 0)]`` for every 1-d parameter of a module torch-pruning does not know (an
    RMSNorm's weight, a per-channel scale), pruned along their only dimension as torch-pruning would
    by default, and for the 3-d expert tensors and router of a mixture-of-experts block (whose first
    dimension is the experts, removed by :mod:`lightning_fair.units.experts`, not by the graph):
    declared, so torch-pruning does not warn about each."""
    experts = {id(m) for units in find_experts(model).values() for m in (units.output, units.router)}
    found = []
    for module in model.modules():
        if isinstance(module, _WRAPPED):
            continue
        found += [(p, 0) for p in module.parameters(recurse=False) if p.dim() == 1 or id(module) in experts]
    return found


def _raised_in(error: BaseException, function: str) -> bool:
    return any(frame.name == function for frame in traceback.extract_tb(error.__traceback__))


def _raised_in_file(error: BaseException, path: str) -> bool:
    return any(path in frame.filename.replace("\\", "/") for frame in traceback.extract_tb(error.__traceback__))


def _complete_index_mapping(graph: tp.DependencyGraph) -> None:
    unmapped = []
    for node in list(graph.module2node.values()):
        if node.type == ops.OPTYPE.RESHAPE:
            try:
                index_mapping.update_reshape_index_mapping(graph, node)
            except ArithmeticError:
                node.type = ops.OPTYPE.ELEMENTWISE  # torch-pruning's mapping skips it from now on
                unmapped.append(node)
    graph.__dict__[_UNMAPPED] = unmapped
    index_mapping.update_index_mapping(graph)


def unmapped_reshapes(graph: tp.DependencyGraph) -> list:
    """The graph nodes of reshapes whose channel mapping torch-pruning could not work out."""
    return graph.__dict__.get(_UNMAPPED, [])


@contextlib.contextmanager
def _bounded_search() -> Iterator[None]:
    added = [0, 0]
    original = Group.add_dep

    def add_dep(self, dep, idxs):
        added[0] += 1
        added[1] += len(idxs)
        if added[0] > MAX_GROUP_ITEMS or added[1] > MAX_GROUP_INDICES:
            raise GroupSearchTooLarge(
                f"torch-pruning's coupled-group search did not end ({added[0]} items, {added[1]} indices): its index "
                "mappings keep producing new indices (reshapes, strided slices or windows it does not follow)"
            )
        original(self, dep, idxs)

    Group.add_dep = add_dep
    try:
        yield
    finally:
        Group.add_dep = original


@contextlib.contextmanager
def frozen_index_mapping(graph: tp.DependencyGraph) -> Iterator[None]:
    """Within the block, ``graph.get_pruning_group`` does not work out the index mapping again
    (torch-pruning does it at every call: most of a group search on a transformer). Valid while
    no channel is removed: the mapping depends on the channel counts only."""
    index_mapping.update_index_mapping(graph)
    original = index_mapping.update_index_mapping

    def update(other):
        if other is not graph:
            original(other)

    index_mapping.update_index_mapping = update
    try:
        yield
    finally:
        index_mapping.update_index_mapping = original


def bounded_group(graph: tp.DependencyGraph, module: nn.Module, idxs=None) -> Group:
    """``graph.get_pruning_group`` of ``module``'s output channels ``idxs`` (default: all), or
    GroupSearchTooLarge (also for a module missing from the graph)."""
    if module not in graph.module2node:
        raise GroupSearchTooLarge(
            "not in torch-pruning's graph (its forward never runs: its weights are used by a functional call?)"
        )
    idxs = range(graph.get_out_channels(module)) if idxs is None else idxs
    function = graph.get_pruner_of_module(module).prune_out_channels
    with _bounded_search():
        try:
            return graph.get_pruning_group(module, function, [int(i) for i in idxs])
        except (IndexError, ArithmeticError) as error:
            if not _raised_in_file(error, "torch_pruning/dependency/index_mapping"):
                raise
            raise GroupSearchTooLarge(
                f"torch-pruning's index mapping fails on its channels ({type(error).__name__}: "
                f"{error}; a split or reshape it does not follow, e.g. after a channel shuffle)"
            ) from error


class GraphState:
    """The graph's references to free-standing parameters and its pruning history, restorable."""

    def __init__(self, graph: tp.DependencyGraph):
        self.graph = graph
        self.module2node = dict(graph.module2node)
        self.param_to_name = dict(graph._param_to_name)
        self.node_modules = [(node, node.module) for node in graph.module2node.values()]
        self.history = list(graph._pruning_history)

    def restore(self) -> None:
        graph = self.graph
        graph.module2node.clear()
        graph.module2node.update(self.module2node)
        graph._param_to_name.clear()
        graph._param_to_name.update(self.param_to_name)
        for node, module in self.node_modules:
            node.module = module
        graph._pruning_history[:] = self.history


def side_size(graph: tp.DependencyGraph, target, out_side: bool, handler) -> Optional[int]:
    """Channels of ``target`` on the side an item prunes (None if torch-pruning does not know)."""
    try:
        if out_side:
            return graph.get_out_channels(target)
        return graph.get_in_channels(target) if graph.is_in_channel_pruning_fn(handler) else None
    except Exception:  # an op torch-pruning has no size for
        return None


def leaving_one(limits: list, order: torch.Tensor, count: int, n: int, g: int = 1) -> torch.Tensor:
    """The first ``count`` positions of ``order`` (root channels of a group of ``n``, folded into
    ``n / g`` positions by ``g`` channel groups) that leave every coupled item a channel: ``limits``
    holds ``(root idxs of the item's channels, its number of channels)`` per item. torch-pruning
    refuses a group that would empty one (e.g. a ghost module's primary conv, half of the output).

    Example:
        >>> leaving_one([(torch.tensor([0, 1]), 2)], torch.tensor([0, 1, 2]), 2, 3).tolist()
        [0, 2]
    """
    if not limits:
        return order[:count]
    hits = torch.stack([torch.bincount(roots, minlength=n).reshape(g, n // g).sum(0) for roots, _ in limits])
    sizes = torch.tensor([size for _, size in limits])
    if bool((hits[:, order[:count]].sum(1) < sizes).all()):
        return order[:count]
    taken, removed = [], torch.zeros_like(sizes)
    for position in order.tolist():
        if len(taken) == count:
            break
        if bool((removed + hits[:, position] < sizes).all()):
            taken.append(position)
            removed += hits[:, position]
    return torch.tensor(taken, dtype=torch.long)


def output_shapes(output) -> List[tuple]:
    """The shapes of the tensors in a model's output (in order)."""
    output = traceable_output(output)
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [shape for item in output for shape in output_shapes(item)]
    return []


def forward_shapes(model: nn.Module, example_inputs) -> List[tuple]:
    """The output shapes of one eval-mode forward of ``example_inputs`` (flags restored)."""
    with preserved_modes(model), torch.no_grad():
        model.eval()
        return output_shapes(call_model(model, example_inputs))


def forward_problem(model: nn.Module, example_inputs, expected: List[tuple]) -> str:
    """Why one eval-mode forward of ``example_inputs`` fails or changes the output shapes ("" if it does not)."""
    try:
        shapes = forward_shapes(model, example_inputs)
    except Exception as error:  # what the pruned model raises: reported, the group is left whole
        return f"{type(error).__name__}: {str(error)[:200]}"
    return "" if shapes == expected else f"the output shapes change from {expected} to {shapes}"


def following_batchnorm(graph, module: nn.Module) -> Optional[nn.Module]:
    """The BatchNorm (with running statistics) that alone reads ``module``'s output in torch-pruning's
    ``graph``, or None: where a bias-free layer's intercept can go, and what scales what it writes."""
    node = graph.module2node.get(module) if graph is not None else None
    if node is None or len(node.outputs) != 1:
        return None
    after = node.outputs[0].module
    if isinstance(after, nn.modules.batchnorm._BatchNorm) and after.running_mean is not None:
        return after
    return None
