"""A small Vision Transformer: FAIR vs torch-pruning's head pruning, one-shot and after fine-tuning.

The ViT of models.py (timm's layout: fused-qkv attention, GELU MLP, class token, position
embedding; 4x4 patches of the 28x28 MNIST images, so 49 patch tokens and the class token) is
trained here (cached, seed 0) and pruned to kept MACs 0.5 and 0.3 of its Linear/Conv MACs:

* FAIR's default pipeline, ``lightning_fair.prune(model, calib, target_macs=t)``: attention heads
  (a head's q, k, v rows and its columns of ``proj``) and MLP hidden neurons are the units; the
  embedding dimension (the residual stream) is kept.
* torch-pruning 1.6 ``MetaPruner`` with head pruning, the way its timm ViT example prunes
  (``num_heads={attn.qkv: heads}``, ``prune_num_heads=True``, ``prune_head_dims=False``,
  ``head_pruning_ratio`` = ``pruning_ratio``), the residual stream kept as for FAIR
  (``patch_embed``, ``attn.proj``, ``mlp.fc2`` and ``head`` in ``ignored_layers``): uniform L2
  magnitude, uniform Taylor, and global L2 magnitude (one ranking over all heads and neurons);
  the ratio is searched to each target.

Each pruned model is then fine-tuned with Adam (``--finetune`` schedule below) from the same
weights. Held-out top-1 % on the 1000 test images. No BatchNorm here, so there is nothing to
re-estimate.

Run:  python examples/benchmarks/vit.py            # prints the markdown section (docs/benchmarks.md)
      python examples/benchmarks/vit.py --quick    # a tiny ViT, a smoke test of every code path
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import heads  # noqa: E402
import models  # noqa: E402
import quality  # noqa: E402

import lightning_fair  # noqa: E402
from lightning_fair.units.cost import measure

#: Adam, cosine to 0: (epochs, training images per epoch, lr)
FINETUNE = (1, 1000, 5e-4)


@dataclass(frozen=True)
class ViTTask(common.Task):
    """The ViT of models.py on MNIST, trained with Adam (one-cycle learning rate peaking at ``lr``)."""

    def build(self) -> nn.Module:
        return models.MODELS[self.builder](**dict(self.kwargs))


def task(quick: bool) -> ViTTask:
    if quick:
        return ViTTask(
            "vit_quick",
            "vit",
            "mnist",
            common._kw(dim=32, depth=2, num_heads=4),
            epochs=2,
            lr=2e-3,
            train_limit=1000,
            label="ViT, dim 32, depth 2, 4 heads",
        )
    return ViTTask(
        "vit",
        "vit",
        "mnist",
        common._kw(dim=128, depth=4, num_heads=8, mlp_ratio=2.0),
        epochs=20,
        lr=1e-3,
        label="ViT, dim 128, depth 4, 8 heads of 16, MLP 256",
    )


def attentions(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, models.Attention)]


def shape(model: nn.Module) -> str:
    """Heads and MLP widths per block, e.g. ``heads 8/6/5/3, MLP 256/200/180/90``."""
    heads = "/".join(str(a.num_heads) for a in attentions(model))
    mlp = "/".join(str(m.fc1.out_features) for m in model.modules() if isinstance(m, models.Mlp))
    return f"heads {heads}; MLP {mlp}"


def tp_heads(model: nn.Module, example, importance, ratio: float, global_pruning: bool) -> nn.Module:
    """torch-pruning with whole-head pruning, the residual stream kept; ``num_heads``/``head_dim`` updated."""
    import torch_pruning as tp

    ignored = [model.head, model.patch_embed]
    for m in model.modules():
        if isinstance(m, models.Block):
            ignored += [m.attn.proj, m.mlp.fc2]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=importance,
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        ignored_layers=ignored,
        num_heads={a.qkv: a.num_heads for a in attentions(model)},
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=ratio,
        max_pruning_ratio=quality.GLOBAL_MAX_RATIO,
        in_channel_groups={},
        out_channel_groups={},
        channel_groups={},
    )
    pruner.step()
    for a in attentions(model):
        if pruner.num_heads[a.qkv] < 1:  # torch-pruning 1.6.1 counts a group it refused (every head) as removed
            raise ValueError(f"torch-pruning left no head at ratio {ratio:.3f}")
        a.num_heads = pruner.num_heads[a.qkv]
        a.head_dim = a.qkv.out_features // (3 * a.num_heads)
    model.zero_grad(set_to_none=True)
    return model.eval()


class Run:
    def __init__(self, t: ViTTask, quick: bool, seed: int = 0):
        self.task, self.quick, self.seed = t, quick, seed
        self.data = common.load_data(t.data)
        self.model = common.trained_model(t, seed)
        self.example = self.data.calib.x[:1]
        self.calib = common.loader(self.data.calib, batch_size=100)
        self.base_macs, self.params = measure(self.model, self.example)
        self.test = self.data.test if not quick else common.Split(self.data.test.x[:500], self.data.test.y[:500])

    def accuracy(self, model: nn.Module) -> float:
        return common.accuracy(model, self.test, batch_size=100)

    def kept(self, model: nn.Module) -> float:
        return quality.kept_macs(model, self.example, self.base_macs)

    def baseline(self, method: str, ratio: float, source: nn.Module) -> nn.Module:
        import torch_pruning as tp

        importance = tp.importance.TaylorImportance() if method == "taylor" else tp.importance.MagnitudeImportance(p=2)
        model = quality.clone_with_grads(source) if method == "taylor" else common.clone(source)
        return tp_heads(model, self.example, importance, ratio, global_pruning=method == "global_l2")

    def finetune(self, model: nn.Module) -> nn.Module:
        epochs, images, lr = FINETUNE
        return common.train_epochs(
            model,
            self.data.train,
            epochs,
            lr,
            64,
            self.seed + 7919,
            limit=256 if self.quick else images,
            optimizer="adam",
            schedule="cosine",
        )

    def record(self, model: nn.Module) -> dict:
        row = {"kept": self.kept(model), "oneshot": self.accuracy(model), "shape": shape(model)}
        return dict(row, ft=self.accuracy(self.finetune(model)))


def evaluate(run: Run, verbose: bool = True) -> dict:
    def fair_models():
        scores = lightning_fair.compute_scores(run.model, run.calib, seed=run.seed)
        for t in heads.TARGETS:
            result = lightning_fair.prune(
                common.clone(run.model), run.calib, target_macs=t, scores=scores, seed=run.seed
            )
            yield t, result.model.eval(), f"global threshold {result.level:.3g}"

    taylor_source = quality.taylor_gradients(common.clone(run.model), run.calib)

    def pruned_at(method, ratio):
        return run.baseline(method, ratio, taylor_source if method == "taylor" else run.model)

    return heads.compare(fair_models, pruned_at, run.kept, run.record, run.quick, verbose)


def run(quick: bool = False, verbose: bool = True, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    t = task(quick)
    r = Run(t, quick)
    results = {
        "label": t.label,
        "epochs": t.epochs,
        "lr": t.lr,
        "macs": r.base_macs,
        "params": r.params,
        "baseline": r.accuracy(r.model),
        "shape": shape(r.model),
        "quick": quick,
        "test_images": len(r.test),
        "methods": evaluate(r, verbose),
    }
    results["seconds"] = time.perf_counter() - start
    return results


def to_markdown(results: dict) -> str:
    epochs, images, lr = FINETUNE
    lines = [
        f"{results['label']}: {results['macs'] / 1e6:.1f} M MACs (Linear and Conv), {results['params'] / 1e6:.2f} M "
        f"parameters; trained {results['epochs']} epochs (Adam, one-cycle peak lr {results['lr']:g}); held-out "
        f"accuracy before pruning **{results['baseline']:.1f}%** ({results['test_images']} test images); "
        f"{results['seconds']:.0f} s in all, 1 thread. Fine-tune: Adam, {epochs} epoch over "
        f"{256 if results['quick'] else images} training images, lr {lr:g} cosine to 0, from each pruned model.",
        "",
        "Top-1 %: one-shot <sub>(kept MACs reached)</sub>, after the fine-tune; the shape FAIR and the "
        "baselines chose at each target. One trained model (seed 0): a point or two is within what another seed "
        "could change. Kept MACs below the target mean the method's steps are coarse there (whole heads; a "
        "uniform ratio removes the same number from every block): each baseline's ratio search takes the "
        "smallest ratio at or below the target.",
        "",
    ]
    return "\n".join(lines + heads.tables(results, "heads per block; MLP hidden per block")) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny ViT (smoke test)")
    args = parser.parse_args(argv)
    print(to_markdown(run(args.quick)))


if __name__ == "__main__":
    main()
