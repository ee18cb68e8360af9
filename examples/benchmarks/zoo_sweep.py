"""Try `prune` on the torchvision / timm / Hugging Face models named in issue 14 (random weights,
small inputs, generated labelled data), under ``tolerance=0.3`` and ``target_macs=0.5``. One line
per model and budget: ok or failed, MACs before -> after, seconds, the notes' count or the error.

Needs torchvision and/or timm (not installable on the CPU machines here: it then prints
"skipped: torchvision not installed" and exits cleanly). Run on a machine that has them:

    python examples/benchmarks/zoo_sweep.py                  # every model
    python examples/benchmarks/zoo_sweep.py --only resnet18 shufflenet_v2_x0_5 --size 64
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import traceback

import torch

from lightning_fair import prune

TORCHVISION = [
    "resnet18",
    "resnet50",
    "vgg11_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "densenet121",
    "efficientnet_b0",
    "regnet_x_400mf",
    "squeezenet1_0",
    "mnasnet0_5",
    "shufflenet_v2_x0_5",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
]
TIMM = [
    "resnet18d",
    "rexnet_100",
    "levit_128s",
    "mixer_s16_224",
    "efficientvit_b0",
    "poolformer_s12",
    "convnext_atto",
    "ghostnet_100",
    "deit_tiny_patch16_224",
    "vit_tiny_patch16_224",
    "mobilevit_xxs",
]
#: models that only take their native input size
NATIVE = {
    "vit_b_16": 224,
    "swin_t": 224,
    "levit_128s": 224,
    "mixer_s16_224": 224,
    "deit_tiny_patch16_224": 224,
    "vit_tiny_patch16_224": 224,
    "efficientvit_b0": 224,
    "mobilevit_xxs": 256,
}


def builders(only):
    found = {}
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision

        found.update(
            {
                ("torchvision", n): (lambda n=n: getattr(torchvision.models, n)(weights=None, num_classes=10))
                for n in TORCHVISION
            }
        )
    if importlib.util.find_spec("timm") is not None:
        import timm

        found.update({("timm", n): (lambda n=n: timm.create_model(n, pretrained=False, num_classes=10)) for n in TIMM})
    return {key: build for key, build in found.items() if not only or key[1] in only}


def data(size: int, batches: int = 2, batch_size: int = 40, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch_size, 3, size, size, generator=generator), torch.arange(batch_size) % 10)
        for _ in range(batches)
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="model names to try (default: all)")
    parser.add_argument("--size", type=int, default=64, help="input size where the model accepts any")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    models = builders(set(args.only))
    if not models:
        print(
            "skipped: torchvision not installed"
            if importlib.util.find_spec("torchvision") is None
            else "skipped: no model matches --only"
        )
        return
    for (source, name), build in models.items():
        size = NATIVE.get(name, args.size)
        loader = [(x.to(args.device), y.to(args.device)) for x, y in data(size)]
        for budget in (dict(tolerance=0.3), dict(target_macs=0.5)):
            label = f"{source}:{name} {next(iter(budget.items()))}"
            start = time.perf_counter()
            try:
                model = build().to(args.device).eval()
                result = prune(model, loader, samples_per_class=4, num_projections=16, **budget)
                with torch.no_grad():
                    result.model.eval()(loader[0][0][:2])  # the pruned copy runs
                report = result.report
                print(
                    f"ok     {label}: MACs {report.macs_before} -> {report.macs_after} ({report.macs_ratio:.3f}), "
                    f"{len(report.notes)} notes, {time.perf_counter() - start:.1f} s",
                    flush=True,
                )
                for note in report.notes:
                    print(f"         note: {note[:200]}")
            except Exception as error:  # one line per failure; the next model runs
                print(
                    f"failed {label}: {type(error).__name__}: {str(error)[:300]} ({time.perf_counter() - start:.1f} s)",
                    flush=True,
                )
                for line in traceback.format_exc(limit=-4).splitlines()[1:-1]:  # where it failed
                    print(f"         {line}")


if __name__ == "__main__":
    main()
