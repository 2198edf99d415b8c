"""Every shell command in README.md's fenced code blocks works after the README's install (issue 20, item 5).

The commands are read from README.md when the tests are collected: each one must have a row in
``STAND_INS``, which says how it is exercised. ``slimmer ...`` commands run through the real CLI
(typer app, in this process, in a temporary working directory) with the README's own argv, on small
stand-ins for what is large; a row lists every flag it changes or adds. Install and launcher lines are
checked against pyproject.toml and the launcher's own parser (a test cannot make a fresh venv).
The README's Python block runs in tests/test_readme.py.
"""

from __future__ import annotations

import gzip
import importlib
import random
import re
import runpy
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from typer.testing import CliRunner

from slimmer.cli import app
from slimmer.zoo import ARCHITECTURES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

HEADLINE_IMPORTS = ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "safetensors", "typer", "rich")
"""Distributions the headline ``compress`` imports (loading, pruning, export, verification, rendering)."""


def readme_commands(text: str) -> list[str]:
    """Every shell command of the fenced code blocks of ``text`` (Markdown), in order: blocks tagged with
    a language other than a shell (```python) are skipped, lines ending in a backslash are joined with the
    next, and ``a && b`` chains are split into their commands; whitespace is collapsed to one space, and a
    command that appears twice is listed once."""
    commands = []
    for lang, body in re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        if lang not in ("", "sh", "bash", "shell", "console"):
            continue
        for line in re.sub(r"\\\n", " ", body).splitlines():
            for part in line.split("&&"):
                command = " ".join(part.split())
                if command:
                    commands.append(command)
    return list(dict.fromkeys(commands))


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


# --- stand-ins for what is large ------------------------------------------------------------------------------


def _resnet18_checkpoint(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``model.pt``: a randomly initialized torchvision resnet18 state_dict (the README's architecture)."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), where / "model.pt")


def _resnet20_checkpoint(where: Path) -> None:
    """``model.pt``: a randomly initialized resnet20-fmnist state_dict."""
    torch.manual_seed(0)
    torch.save(ARCHITECTURES.get("resnet20-fmnist").build().state_dict(), where / "model.pt")


def _idx_folder(folder: Path, side: int, n_train: int, n_test: int) -> Path:
    """A folder of gzipped IDX files (MNIST layout) of random ``side``×``side`` uint8 images, labels 0-9."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, arr in (
            ("images-idx3", rng.integers(0, 256, (n, side, side))),
            ("labels-idx1", rng.integers(0, 10, n)),
        ):
            header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))
    return folder


def _tiny_fashion_mnist(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--data fashion-mnist`` finds an IDX folder of random 28×28 images (64 training, 32 test) first, before
    an installed dataset: the flag stays as the README writes it."""
    import slimmer.train.idx

    folder = _idx_folder(where / "fashion-mnist-stand-in", 28, 64, 32)
    monkeypatch.setattr(slimmer.train.idx, "FASHION_MNIST_DIRS", (folder,))


def _tiny_checkpoint_and_idx(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """For the torchrun line's ``--arch ... --data ...``: ``model.pt`` a state_dict of tests/toy_models.py's
    ``Tiny`` (1×8×8 inputs), ``idx`` 64 + 32 random 8×8 images."""
    import toy_models

    torch.manual_seed(0)
    torch.save(toy_models.Tiny().state_dict(), where / "model.pt")
    _idx_folder(where / "idx", 8, 64, 32)


def _resnet20_and_fashion_mnist(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _resnet20_checkpoint(where)
    _tiny_fashion_mnist(where, monkeypatch)


def _hf_folder_and_sentences(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``path/to/model-folder``: a tiny random BERT (hidden 32, 1 layer, 4 heads, FFN 64) saved with
    ``save_pretrained`` beside a WordPiece tokenizer; ``sentences.txt``: 40 short lines of words."""
    transformers = pytest.importorskip("transformers")

    words = "the a of and to in is was it for on with as by at from that this be are or an".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    folder = where / "path" / "to" / "model-folder"
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128,
    )  # fmt: skip
    transformers.BertModel(config).eval().save_pretrained(folder)
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) for _ in range(40)]
    (where / "sentences.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


ENCODER_MODULE = '''"""A token encoder: ids and a mask in, per-token hidden states out (BERT's vocabulary size)."""

import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30522, 16)
        self.up = nn.Linear(16, 32)
        self.act = nn.GELU()
        self.down = nn.Linear(32, 16)
        self.norm = nn.LayerNorm(16)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        return self.norm(h + self.down(self.act(self.up(h))))


def build_encoder() -> nn.Module:
    return Encoder()
'''


def _encoder_package(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mypkg.models:build_encoder``: a package written to the working directory and put on sys.path;
    ``encoder.pt``: its state_dict."""
    (where / "mypkg").mkdir()
    (where / "mypkg" / "__init__.py").write_text("")
    (where / "mypkg" / "models.py").write_text(ENCODER_MODULE)
    for name in ("mypkg", "mypkg.models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(where))
    from mypkg.models import build_encoder  # the file just written

    torch.manual_seed(0)
    torch.save(build_encoder().state_dict(), where / "encoder.pt")


# --- how each kind of command is exercised --------------------------------------------------------------------


@dataclass(frozen=True)
class CliRun:
    """Run the command's slimmer argv through the CLI in a temporary working directory.

    ``setup(cwd, monkeypatch)`` writes the stand-in inputs; ``set_flags`` replaces a flag's value that the
    README gives (``--finetune-steps``...) or adds the flag; ``outputs`` must exist afterwards (relative
    to the working directory)."""

    setup: Callable[[Path, pytest.MonkeyPatch], None] | None
    outputs: tuple[str, ...]
    set_flags: dict[str, str] = field(default_factory=dict)
    via_module_main: bool = False  # run ``python -m slimmer``'s __main__ (sys.argv) instead of CliRunner
    note: str = ""
    verify: Callable[[Path], None] | None = None  # more checks on the working directory afterwards


@dataclass(frozen=True)
class StageCheck:
    """Run the command's slimmer argv through the CLI up to ``target`` (``module:function``), which is
    replaced by a recorder: for a command whose full run another test makes at a cost this module cannot
    pay. ``check(kwargs)`` asserts what the CLI handed on."""

    target: str
    check: Callable[[dict], None]
    note: str


@dataclass(frozen=True)
class Check:
    """A command a test cannot run (it installs, or makes a venv): ``check(command)`` asserts what the
    command needs from the repository."""

    check: Callable[[str], None]
    note: str


def _dependencies(section: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[;\s]", d, maxsplit=1)[0].lower() for d in section}


def _check_venv(command: str) -> None:
    """``python3 -m venv .venv``: the README's Python minimum is pyproject's, and this Python meets it."""
    assert PYPROJECT["project"]["requires-python"] == ">=3.10"
    assert "Python ≥ 3.10" in README.read_text(encoding="utf-8")
    assert sys.version_info >= (3, 10)
    import venv  # noqa: F401 - the stdlib module `python3 -m venv` runs


def _pip_install(needs: set[str] = frozenset()) -> Callable[[str], None]:
    """``pip install .`` or ``pip install ".[EXTRA]"``: the README installs from the clone (PyPI's
    ``slimmer`` is another project, an HTML/CSS minifier from 2009, without our extras); with ``.``,
    everything the headline command imports is a core dependency (torchvision was once only in the test
    extra, and ``--arch torchvision:resnet18`` failed right after this install) and the install creates
    the ``slimmer`` script; an extra must exist and hold ``needs``."""

    def check(command: str) -> None:
        words = shlex.split(command)
        (target,) = words[words.index("install") + 1 :]
        found = re.fullmatch(r"\.(?:\[(\w+)\])?", target)
        assert found, f'{command!r} does not install this repository: write pip install . or ".[EXTRA]"'
        if found[1] is None:
            missing = set(HEADLINE_IMPORTS) - _dependencies(PYPROJECT["project"]["dependencies"])
            assert missing == set(), f"add to [project.dependencies]: {sorted(missing)}"
            assert PYPROJECT["project"]["scripts"]["slimmer"] == "slimmer.entry:main"
        else:
            extras = PYPROJECT["project"]["optional-dependencies"]
            assert found[1] in extras, f"{command!r}: add [{found[1]}] to [project.optional-dependencies]"
            lacking = needs - _dependencies(extras[found[1]])
            assert not lacking, f"[{found[1]}] lacks {sorted(lacking)}"

    return check


def _check_demo_handoff(kwargs: dict) -> None:
    """``slimmer demo`` with no option: the bundled weights and sample, the README's output name."""
    from slimmer.bundled import DEMO_ARCH

    assert Path(kwargs["output"]) == Path("slimmer-demo/resnet20_fmnist.slim.onnx")
    assert kwargs["arch"] == DEMO_ARCH and Path(kwargs["model"]).is_file() and Path(kwargs["data"]).is_file()
    assert kwargs["method"] == "channel" and kwargs["macs_target"] == 0.5 and kwargs["finetune_steps"] > 0
    assert kwargs["quantize"] == "int8"  # the demo shows int8 too (README)


def _check_pytest(command: str) -> None:
    """``.venv/bin/pytest``: CI runs exactly the README's line, and a bare ``pytest`` collects tests/ with one
    xdist worker per core (running the suite from inside itself is not a test)."""
    assert 'python3 -m venv .venv && .venv/bin/pip install ".[test]" && .venv/bin/pytest' in (
        ROOT / ".ci" / "run"
    ).read_text(encoding="utf-8")
    options = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == ["tests"] and "-n auto" in options["addopts"]


def _check_torchrun_parses(command: str) -> None:
    """torchrun (``torch.distributed.run``, installed with torch) reads the README's launcher options and
    hands ``-m slimmer`` the rest of the line."""
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(shlex.split(command)[1:])
    assert args.nproc_per_node == "4" and args.module and args.training_script == "slimmer"
    assert args.training_script_args[:2] == ["compress", "model.pt"]


def _headline_is_90_percent_sparse(cwd: Path) -> None:
    """Issue 2's acceptance run: 90% of resnet18's 21 conv/linear weights are zero in the ONNX file itself."""
    import json

    import onnx
    from onnx import numpy_helper

    report = json.loads((cwd / "model.slim.onnx.report.json").read_text())
    assert report["status"] == "ok" and report["verification"]["passed"] is True
    assert abs(report["sparsity"]["achieved"] - 0.90) <= 0.005
    graph = onnx.load(str(cwd / "model.slim.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    names = list(report["sparsity"]["per_layer"])
    assert len(names) == 21 and all(n in inits for n in names)
    zeros = sum(int((inits[n] == 0).sum()) for n in names) / sum(inits[n].size for n in names)
    assert abs(zeros - 0.90) <= 0.005


STAND_INS: dict[str, CliRun | StageCheck | Check] = {
    "slimmer compress model.pt --arch torchvision:resnet18 --sparsity 0.9": CliRun(
        _resnet18_checkpoint,
        ("model.slim.onnx", "model.slim.onnx.report.json"),
        set_flags={"--input-shape": "1,3,64,64"},
        note="real resnet18 state_dict; 64×64 inputs instead of 224×224 (the same weights are pruned)",
        verify=_headline_is_90_percent_sparse,
    ),
    "python3 -m venv .venv": Check(_check_venv, "Python version floor of the README = pyproject's"),
    ".venv/bin/pip install .": Check(_pip_install(), "from the clone; the headline's imports are core dependencies"),
    ".venv/bin/slimmer demo": StageCheck(
        "slimmer.cli.demo:run_compress",
        _check_demo_handoff,
        note="parsed and handed to compress's runner with the README's output name; the default demo runs"
        " in full (a minute of CPU) in tests/test_demo_and_zoo.py",
    ),
    '.venv/bin/pip install ".[test]"': Check(
        _pip_install({"pytest", "pytest-xdist", "hypothesis", "transformers"}), "from the clone; [test] holds these"
    ),
    ".venv/bin/pytest": Check(_check_pytest, "CI runs the same line; pytest settings"),
    'pip install ".[hf]"': Check(_pip_install({"transformers", "tokenizers"}), "from the clone; [hf] holds these"),
    (
        "slimmer compress path/to/model-folder --method channel --macs-target 0.5 --save-pretrained pruned-folder"
        " --data sentences.txt --finetune-steps 200 --optimizer adamw --lr 2e-4"
    ): CliRun(
        _hf_folder_and_sentences,
        (
            "path/to/model-folder.slim.onnx",
            "path/to/model-folder.slim.onnx.report.json",
            "pruned-folder/config.json",
            "pruned-folder/model.safetensors",
            "pruned-folder/slimmer_plan.json",
            "pruned-folder/modeling_slimmer_pruned.py",
            "pruned-folder/tokenizer.json",
        ),
        set_flags={"--finetune-steps": "2"},
        note="tiny random BERT folder + tokenizer, 40 sentences; 2 fine-tuning steps instead of 200",
    ),
    (
        "slimmer compress encoder.pt --arch mypkg.models:build_encoder --method channel --sparsity 0.5"
        " --input input_ids:int64[1,128]:0..30521 --input attention_mask:int64[1,128]:1"
        " --dynamic-axis input_ids:1 --dynamic-axis attention_mask:1"
    ): CliRun(
        _encoder_package,
        ("encoder.slim.onnx", "encoder.slim.onnx.report.json"),
        note="mypkg/models.py written to the working directory: embedding (30,522 × 16) + FFN 32; flags as written",
    ),
    (
        "slimmer compress model.pt --arch resnet20-fmnist --method channel --macs-target 0.5"
        " --data fashion-mnist --finetune-steps 468 --batch-size 128"
    ): CliRun(
        _resnet20_and_fashion_mnist,
        ("model.slim.onnx", "model.slim.onnx.report.json"),
        set_flags={"--finetune-steps": "2", "--batch-size": "16"},
        note="random resnet20 weights; fashion-mnist = 64 + 32 random IDX images; 2 steps of 16, not 468 of 128",
    ),
    "torchrun --nproc_per_node 4 -m slimmer compress model.pt --arch ... --data ... --finetune-steps 1000": CliRun(
        _tiny_checkpoint_and_idx,
        ("model.slim.onnx", "model.slim.onnx.report.json"),
        set_flags={"--arch": "toy_models:Tiny", "--data": "idx", "--finetune-steps": "2"},
        via_module_main=True,
        note="torchrun's parser reads the line; `-m slimmer`'s __main__ runs the rest in this process, `...` ="
        " toy_models:Tiny and an 8×8 IDX folder, 2 steps (2 real gloo processes: tests/test_ddp_cli.py)",
    ),
}


# --- the tests ------------------------------------------------------------------------------------------------


def _slimmer_argv(command: str) -> list[str]:
    """The arguments after ``slimmer`` (or after torchrun's ``-m slimmer``)."""
    words = shlex.split(command)
    if words[0] == "torchrun":
        return words[words.index("-m") + 2 :]
    assert Path(words[0]).name == "slimmer", command
    return words[1:]


def _with_flags(argv: list[str], set_flags: dict[str, str]) -> list[str]:
    """``argv`` with each flag's value replaced (or the flag appended); an empty value is a switch."""
    argv = list(argv)
    for flag, value in set_flags.items():
        if flag in argv and value:
            argv[argv.index(flag) + 1] = value
        elif flag not in argv:
            argv += [flag, value] if value else [flag]
    return argv


def test_the_readme_has_the_commands_this_module_knows():
    """A README command without a stand-in, or a stand-in for a command the README no longer has, fails."""
    assert len(COMMANDS) >= 10
    missing = [c for c in COMMANDS if c not in STAND_INS]
    assert not missing, f"README command {missing[0]!r} has no stand-in: add one to STAND_INS"
    stale = [c for c in STAND_INS if c not in COMMANDS]
    assert not stale, f"STAND_INS has {stale[0]!r}, which the README no longer shows: remove it"


def test_a_pip_line_that_installs_pypis_slimmer_fails():
    """The README once said ``pip install "slimmer[hf]"``: in a fresh venv pip fetches PyPI's slimmer 0.1.30,
    another project, whose build fails."""
    with pytest.raises(AssertionError, match="does not install this repository"):
        _pip_install({"transformers"})('pip install "slimmer[hf]"')
    with pytest.raises(AssertionError, match=r"add \[nope\]"):
        _pip_install()('pip install ".[nope]"')


def test_the_parser_joins_continued_lines_and_splits_chains():
    text = "```\nslimmer a \\\n    --b 1\nx && y\n```\n```python\nslimmer no\n```\n```sh\nx\n```\n"
    assert readme_commands(text) == ["slimmer a --b 1", "x", "y"]


def _params() -> list:
    """One case per README command; the ones that run a compression are marked slow (a few seconds each)."""
    slow = pytest.mark.slow
    return [
        pytest.param(c, id=f"{i}:{c.split(' --')[0][:40]}", marks=[slow] * isinstance(STAND_INS.get(c), CliRun))
        for i, c in enumerate(COMMANDS)
    ]


@pytest.mark.parametrize("command", _params())
def test_readme_command_works(command, tmp_path, monkeypatch, capsys):
    stand_in = STAND_INS.get(command)
    if stand_in is None:
        pytest.fail(f"README command {command!r} has no stand-in: add one to STAND_INS")
    if isinstance(stand_in, Check):
        stand_in.check(command)
        return
    monkeypatch.chdir(tmp_path)
    if isinstance(stand_in, StageCheck):
        module, name = stand_in.target.split(":")
        calls: list[dict] = []
        monkeypatch.setattr(importlib.import_module(module), name, lambda *args, **kwargs: calls.append(kwargs))
        result = CliRunner().invoke(app, _slimmer_argv(command))
        assert result.exit_code == 0, result.stderr
        assert len(calls) == 1, f"{command!r} did not reach {stand_in.target}"
        stand_in.check(calls[0])
        return
    if command.startswith("torchrun "):
        _check_torchrun_parses(command)
    if stand_in.setup is not None:
        stand_in.setup(tmp_path, monkeypatch)
    argv = _with_flags(_slimmer_argv(command), stand_in.set_flags)
    if stand_in.via_module_main:
        monkeypatch.setattr(sys, "argv", ["slimmer", *argv])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module("slimmer", run_name="__main__")
        code, stderr = exit_.value.code, capsys.readouterr().err
    else:
        result = CliRunner().invoke(app, argv)
        code, stderr = result.exit_code, result.stderr
    assert code in (0, None), f"{shlex.join(argv)} exited {code}:\n{stderr[-3000:]}"
    absent = [name for name in stand_in.outputs if not (tmp_path / name).is_file()]
    assert not absent, f"{shlex.join(argv)} did not write {absent}"
    if stand_in.verify is not None:
        stand_in.verify(tmp_path)
