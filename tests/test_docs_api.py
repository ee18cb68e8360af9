"""README.md, docs/ and examples/lightning/ name the API that exists: every dotted ``lightning_fair.*``
name resolves, the ``--prune.*`` / ``--trainer.callbacks.*`` flags they mention are callback
arguments, their YAML blocks load under FairCLI, and none uses the pre-issue-12 spellings."""

import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

import pytest

from lightning_fair import FairPruneCallback, PruneConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [*sorted((ROOT / "examples").glob("*.py")), *sorted((ROOT / "examples" / "lightning").glob("*"))]
CALLBACK_ARGS = {
    name for name in inspect.signature(FairPruneCallback.__init__).parameters if name not in ("self", "options")
} | {field.name for field in dataclasses.fields(PruneConfig)}


def texts(paths):
    return {str(path.relative_to(ROOT)): path.read_text() for path in paths}


def resolve(name: str):
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(name)


def test_every_dotted_name_resolves():
    names = {}
    for path, text in texts(DOCS + EXAMPLES).items():
        for match in re.finditer(r"\blightning_fair(?:\.[A-Za-z_]\w*)+", text):
            names.setdefault(match.group(0), set()).add(path)
    assert "lightning_fair.lightning.cli.FairCLI" in names and "lightning_fair.demos.digits.ImageClassifier" in names
    missing = {}
    for name, where in sorted(names.items()):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing[name] = sorted(where)
    assert not missing, missing


@pytest.mark.parametrize(
    "old",
    ["screening=True", "result.tolerance", "callback.options", "lightning_fair.cli:", "python -m lightning_fair.cli "],
)
def test_no_pre_issue_12_spelling(old):
    found = [path for path, text in texts(DOCS + EXAMPLES).items() if old in text]
    assert not found, (old, found)


def test_documented_callback_flags_exist():
    flags = set()
    for text in texts(DOCS + EXAMPLES).values():
        flags |= set(re.findall(r"--(?:prune|trainer\.callbacks)\.([a-z_]+)\b", text))  # not --prune.OPTION
    assert {"tolerance", "target_macs", "prune_at", "preset"} <= flags
    # --trainer.callbacks.X may also set Lightning's ModelCheckpoint added beside ours (save_last)
    from lightning.pytorch.callbacks import ModelCheckpoint

    allowed = CALLBACK_ARGS | set(inspect.signature(ModelCheckpoint.__init__).parameters)
    assert flags - {"help"} <= allowed, sorted(flags - {"help"} - allowed)


def yaml_blocks():
    text = (ROOT / "docs" / "lightning.md").read_text()
    return [textwrap.dedent(block) for _, block in re.findall(r"^( *)```yaml\n(.*?)^\1```", text, re.S | re.M)]


@pytest.mark.parametrize("index", range(len(yaml_blocks())))
def test_yaml_blocks_of_lightning_md_load_under_faircli(index, tmp_path, monkeypatch):
    pytest.importorskip("jsonargparse")
    from lightning_fair.lightning.cli import FairCLI

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    path = tmp_path / "block.yaml"
    path.write_text(yaml_blocks()[index])
    cli = FairCLI(
        args=[
            "--model=lightning_fair.demos.digits.ImageClassifier",
            "--data=lightning_fair.demos.digits.DigitsDataModule",
            "-c",
            str(path),
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    assert callback.prune_at == 5
