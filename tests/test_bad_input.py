"""Bad input, wholesale (issue 9, section 5): one table of bad inputs across the CLI, data files, configs and
plugins, each run through ``harness.cli.main`` in-process; three rows also run as a real ``python -m harness``.

Every row must end with a non-zero exit, exactly one line on stderr that names the bad value and says what to do
(the row's regex), no traceback, and the runs dir exactly as it was: a finished record sits in it before every
row and must be byte-identical afterwards, with no file or folder added or removed beside it.

The one exception to "one line": errors that argparse finds itself (a typed flag given a value of the wrong type,
a missing required flag, a positional outside its choices) print argparse's usage line(s) first. For those rows
(``usage=True``) the *last* line must be argparse's ``harness ...: error: ...`` and carry the message.

No row may load a model or train: ``harness.runner.load_model`` is replaced by a guard that fails the row, so
bad input found only once the model is loading shows up as a failure.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from harness import METHODS, TASKS, AdapterConfig
from harness.cli import main
from harness.config import ReducerConfig, make_config
from harness.records import new_record, write_record
from tests.conftest import tiny_llama, trained_record_fields, undecodable_png

AVAILABLE = re.escape(", ".join(METHODS.names()))  # every registered method: a new one changes no case

Setup = Callable[[Path], None]

RUN = "run --methods lora --task commonsense --preset smoke --data-dir {data} --runs-dir {runs} --out {out} --quiet".split()
PARAMS = ["params", "--model", "{tiny}", "--methods", "lora"]
PLUGIN_ARG = ["--plugin", "{tmp}/plugin.py"]
CONFIG_JSON = "model/config.json"


def over(base: list[str], extra: tuple[str, ...]) -> list[str]:
    """``base`` with ``extra`` flags last, a flag of ``extra`` that ``base`` gives (and its value) taken out of
    ``base``: a single-value flag given twice with two values is refused (its own row, ``flag-given-twice``)."""
    given = {a.partition("=")[0] for a in extra if a.startswith("--")} - {"--option", "--also", "--plugin"}
    kept, i = [], 0
    while i < len(base):
        if base[i] in given:
            i += 2 if i + 1 < len(base) and not base[i + 1].startswith("--") else 1  # the flag and its value
            continue
        kept.append(base[i])
        i += 1
    return [*kept, *extra]


def run(*extra: str) -> list[str]:
    """``harness run`` on the small valid data, with ``extra`` flags last (replacing the same flags of ``RUN``)."""
    return over(RUN, extra)


def bench(*extra: str) -> list[str]:
    """``harness bench`` of lora on the small valid data into ``{tmp}/bench``, with ``extra`` flags last."""
    return over(["bench", "--methods", "lora", "--data-dir", "{data}", "--out", "{tmp}/bench", "--rounds", "1"], extra)


def smolvlm_config(relative: str) -> Setup:
    """A stock SmolVLM config (a vision-language model without LLaVA's layout) in the folder ``relative``."""

    def setup(tmp: Path) -> None:
        from transformers import SmolVLMConfig

        SmolVLMConfig().save_pretrained(tmp / relative)

    return setup


def params(*extra: str) -> list[str]:
    """``harness params`` on a tiny Llama config (q,k,v,o,gate,up,down projections; 4 layers)."""
    return over(PARAMS, extra)


def write(relative: str, content: str | bytes) -> Setup:
    def setup(tmp: Path) -> None:
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def arc_test(records: object) -> Setup:
    """Replace the small data's ARC-Easy test split with ``records`` (anything JSON can hold)."""
    return write("data/ARC-Easy/test.json", json.dumps(records))


def plugin(source: str) -> Setup:
    return write("plugin.py", source)


# One ARC-Easy-style example in LLM-Adapters format: fits every protocol, cloze included.
GOOD = {
    "instruction": "Please choose the correct answer to the question: Which is a liquid?\n\n"
    "Answer1: water Answer2: rock\n\nAnswer format: answer1/answer2",
    "input": "",
    "output": "the correct answer is answer1",
    "answer": "answer1",
}
NO_ANSWER = {k: v for k, v in GOOD.items() if k != "answer"}

METHOD_PLUGIN = '''
from dataclasses import dataclass

from harness import METHODS, AdapterConfig
from methods.lora import LoraLinear


@dataclass(frozen=True)
class GainLoraConfig(AdapterConfig):
    gain: float = 1.0


@METHODS.register("{name}")
class GainLoraLinear(LoraLinear):
    """LoRA with a float option ``gain`` (a plugin for tests)."""

    config_cls = GainLoraConfig
'''
SLOW_PLUGIN = '''
from harness import METHODS
from tests.conftest import DeltaOnlyLinear


@METHODS.register("slow_lora")
class SlowLoraLinear(DeltaOnlyLinear):
    """LoRA through delta alone: no fast path (a plugin for tests)."""
'''
TINY_MODEL_HINT = "give a model folder, a config.json, 'embedded', or one of meta-llama/Meta-Llama-3-8B"


def mm_run(*extra: str) -> list[str]:
    """``harness run`` of the multimodal task on a LLaVA-format folder ``{tmp}/mm``."""
    base = [
        "run",
        "--methods",
        "lora",
        "--task",
        "multimodal",
        "--preset",
        "smoke",
        "--data-dir",
        "{tmp}/mm",
        "--runs-dir",
        "{runs}",
        "--quiet",
    ]
    return over(base, extra)


GPT = {"from": "gpt", "value": "a cat"}
LLAVA_GOOD = {
    "id": "a",
    "image": "images/ok.png",
    "domain": "general",
    "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"}, GPT],
}


def llava(train: list[dict]) -> Setup:
    """A LLaVA-format folder: ``train.json`` as given, a valid one-record test set, a real and a broken PNG."""

    def setup(tmp: Path) -> None:
        from PIL import Image

        folder = tmp / "mm" / "images"
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "ok.png")
        (folder / "broken.png").write_bytes(b"\x89PNG not really")
        undecodable_png(folder / "undecodable.png")  # passes verify(), fails to decode
        test = {**LLAVA_GOOD, "id": "t", "kind": "open", "question": "What?", "answers": ["a cat"], "metric": "exact"}
        (tmp / "mm" / "train.json").write_text(json.dumps(train))
        (tmp / "mm" / "test.json").write_text(json.dumps([test]))

    return setup


def bad(case_id: str, argv: list[str], match: str, setup: Setup | None = None, *, usage: bool = False):
    """One row: ``argv`` ({tmp}, {data}, {runs}, {out}, {tiny}, {file} filled in), the regex the error line must
    match, an optional ``setup(tmp)`` that writes the bad file, ``usage`` for argparse-level errors."""
    return pytest.param(argv, match, setup, usage, id=case_id)


CASES = [
    # --- the CLI: names ---
    bad(
        "unknown-method",
        run("--methods", "lroa"),
        r"unknown method 'lroa' \(did you mean 'lora'\?\); available: .*lora",
    ),
    bad(
        "unknown-method-in-a-list",
        run("--methods", "lora,nope"),
        rf"unknown method 'nope'; available: {AVAILABLE}, base, all",
    ),
    bad(
        "unknown-method-near-base",
        run("--methods", "bsae,lora"),
        rf"unknown method 'bsae' \(did you mean 'base'\?\); available: {AVAILABLE}, base, all \(a plugin's method: harness --plugin FILE \.\.\., or harness\.load_plugin\(FILE\) in Python\)$",
    ),
    bad("empty-methods", run("--methods", ","), rf"no method given; available: {AVAILABLE}, base, all$"),
    bad("unknown-task", run("--task", "commonsens"), r"unknown task 'commonsens' \(did you mean 'commonsense'\?\)"),
    bad("unknown-preset", run("--preset", "fast"), r"unknown preset 'fast'; available: smoke, embedded, paper"),
    bad("unknown-protocol", run("--protocol", "vibes"), r"unknown protocol 'vibes' for task 'commonsense'; choose one"),
    bad("missing-task", ["run", "--methods", "lora"], r"the following arguments are required: --task", usage=True),
    bad("unknown-list-kind", ["list", "widgets"], r"invalid choice: 'widgets' \(choose from", usage=True),
    # --- the CLI: a single-value flag given twice (from a review: the last one won, lora was dropped silently) ---
    bad(
        "flag-given-twice",
        [*RUN, "--methods", "effilora"],
        r"--methods is given twice \('lora', then 'effilora'\); give it once \(a list is one flag: --methods "
        r"lora,effilora\)$",
    ),
    bad(
        "typed-flag-given-twice",
        run("--rank", "8", "--rank", "4"),
        r"--rank is given twice \(8, then 4\); give it once$",
    ),
    bad(
        "flag-given-twice-by-prefix",
        run("--task", "commonsense", "--tas=multimodal"),
        r"--task is given twice \('commonsense', then 'multimodal'\)",
    ),
    bad("bench-flag-given-twice", [*bench(), "--rounds", "2"], r"--rounds is given twice \(1, then 2\)"),
    bad(
        "params-flag-given-twice",
        params("--model", "{tiny}", "--model", "x"),
        r"--model is given twice \('.*tiny\.json', then 'x'\)",
    ),
    # --- the CLI: seeds and options ---
    bad("seeds-not-integers", run("--seeds", "0,x"), r"--seeds '0,x' must be comma-separated integers, e\.g\. 0,1,2"),
    bad("seeds-empty", run("--seeds", ","), r"--seeds is empty; e\.g\. --seeds 0,1,2"),
    bad(  # from a review: k won silently, and both entered the run id
        "reducer-k-and-drop-ratio",
        run("--methods", "effilora", "--option", "k=3", "--option", "drop_ratio=0.5"),
        r"k=3 and drop_ratio=0\.5 both set the Reducer's K \(drop_ratio = 1 - K/L\): give one",
    ),
    bad("option-without-equals", run("--option", "drop_ratio"), r"--option 'drop_ratio' must look like key=value"),
    bad(
        "option-of-one-method-given-to-two",
        run("--methods", "moslora,lora", "--option", "mixer_init=zeros"),
        r"unknown option 'mixer_init' for method 'lora'.*; every --option goes to each method of --methods: give a "
        r"method's own option in a run of that method alone$",
    ),
    bad(  # an option no method of the list takes: a typo, not another method's (a review)
        "option-no-method-of-two-takes",
        run("--methods", "lora,hydralora", "--option", "mixr_init=zeros"),
        r"unknown option 'mixr_init' for method 'lora'[^;]*; available: [^;]*$",
    ),
    bad(
        "option-unknown-key",
        run("--option", "mixer_init=zeros"),
        r"unknown option 'mixer_init' for method 'lora'.*; available: .*alpha",
    ),
    bad(
        "option-float-wrong-type",
        run("--methods", "effilora", "--option", "drop_ratio=abc"),
        r"option drop_ratio='abc' must be a number",
    ),
    bad("option-int-wrong-type", run("--option", "r=abc"), r"option r='abc' must be an integer"),
    bad(
        "reducer-n-suppressed-zero",
        run("--methods", "effilora", "--option", "n_suppressed=0"),
        r"reducer n_suppressed must be >= 1, or unset for half the layers \(got 0\)",
    ),
    bad(  # from a review: the scores cannot move, and "importance" ran as random selection under its name
        "reducer-one-rollout",
        run("--methods", "effilora", "--option", "rollouts=1"),
        r"reducer rollouts=1 with selection='importance': .*; use rollouts >= 2 \(default 3\), or selection='random'$",
    ),
    bad(
        "reducer-n-suppressed-every-layer",
        run("--methods", "effilora", "--option", "n_suppressed=30"),
        r"reducer n_suppressed=30 suppresses all 30 adapted layers in every trial.*; use n_suppressed < 30",
    ),
    bad(
        "reducer-score-lr-nan",
        run("--methods", "effilora", "--option", "score_lr=nan"),
        r"reducer score_lr must be a finite number > 0 \(got nan\)",
    ),
    bad(
        "reducer-suppression-above-one",
        run("--methods", "effilora", "--option", "suppression=5"),
        r"reducer suppression must be in \[0, 1\): the scale of a suppressed layer \(got 5\.0\)",
    ),
    bad(
        "option-bool-wrong-type",
        run("--methods", "effilora", "--option", "train_shared_a=maybe"),
        r"option train_shared_a='maybe' must be true or false",
    ),
    bad("rank-not-an-int", run("--rank", "x"), r"argument --rank: invalid int value: 'x'", usage=True),
    bad("rank-negative", run("--rank", "-4"), r"rank r must be >= 1 \(got -4\)"),
    bad("alpha-zero", run("--alpha", "0"), r"alpha must be a finite number > 0 \(got 0\.0\)"),
    bad("alpha-nan", run("--alpha", "nan"), r"alpha must be a finite number > 0 \(got nan\)"),
    bad("lr-nan", run("--lr", "nan"), r"epochs and lr must be finite numbers > 0 \(got 1\.0, nan\)"),
    bad("seed-too-large", run("--seeds", "0,99999999999999999999"), r"--seeds 99999999999999999999 is out of range"),
    bad("seed-negative", run("--seeds", "-1"), r"--seeds -1 is out of range; a seed is an integer in 0\.\.4294967295"),
    bad("steps-and-epochs", run("--steps", "3", "--epochs", "2"), r"give --steps or --epochs, not both"),
    bad(
        "train-on-inputs-on-diffusion",
        [*RUN[:4], "diffusion", *RUN[5:], "--train-on-inputs", "true"],
        r"--train-on-inputs does not apply to the diffusion task \(its training never reads it\); leave it out",
    ),
    bad(  # was a failed record after loading, blaming a missing sentencepiece
        "model-folder-without-weights",
        run("--model", "{tmp}/cfgonly"),
        r"model folder '.*cfgonly' holds no weights \(no model\.safetensors, pytorch_model\.bin or .*, nor shards of "
        r"one\); give the folder with the model's",
        lambda tmp: (
            (tmp / "cfgonly").mkdir() or (tmp / "cfgonly" / "config.json").write_bytes((tmp / "tiny.json").read_bytes())
        ),
    ),
    bad(  # from_pretrained reads the folder itself: a trainer's checkpoint-*/ inside it is not its weights
        "model-folder-with-weights-only-in-a-checkpoint",
        run("--model", "{tmp}/trained"),
        r"model folder '.*trained' holds no weights \(no model\.safetensors, .* of one; its checkpoint-5 folder\(s\) "
        r"do: give "
        r"one of those\)",
        lambda tmp: (
            (tmp / "trained" / "checkpoint-5").mkdir(parents=True),
            (tmp / "trained" / "config.json").write_bytes((tmp / "tiny.json").read_bytes()),
            (tmp / "trained" / "checkpoint-5" / "model.safetensors").write_bytes(b""),
        ),
    ),
    bad(  # checked as not this task's before the file: "is not a file" sent the user looking for one
        "hps-checkpoint-on-commonsense-not-a-file",
        run("--hps-checkpoint", "{tmp}/nowhere.pt"),
        r"--hps-checkpoint does not apply to the commonsense task",
    ),
    bad(
        "judge-model-on-commonsense",
        run("--judge-model", "gpt-4o"),
        r"--judge-model does not apply to the commonsense task",
    ),
    bad(
        "model-config-file-without-random-weights", run("--model", "{tiny}"), r"tiny.json. is a file: weights load from"
    ),
    bad("heads-zero", run("--methods", "hydralora", "--heads", "0"), r"heads must be >= 1 \(got 0\)"),
    bad("dropout-one", run("--option", "dropout=1"), r"dropout must be in \[0, 1\) \(got 1\.0\)"),
    bad(
        "targets-regex-does-not-compile",
        run("--targets", "q_proj("),
        r"targets regex 'q_proj\(' does not compile \(.*\); give module names such as q_proj,v_proj or a valid regex",
    ),
    bad(
        "params-targets-regex-does-not-compile",
        params("--targets", "q_proj("),
        r"targets regex 'q_proj\(' does not compile",
    ),
    bad("targets-empty", run("--targets", ","), r"targets is empty; give module names such as q_proj,v_proj"),
    bad(
        "params-targets-match-no-layer",
        params("--targets", "nope_proj"),
        r"target 'nope_proj' matches no linear layer; the model's linear layers: down_proj, gate_proj",
    ),
    bad(  # from a review: the regex is matched against whole names, yet the message listed q_proj and v_proj
        "params-targets-regex-matches-no-whole-name",
        params("--targets", "q_proj|v_proj"),
        r"target regex 'q_proj\|v_proj' matches no linear layer: it must match a whole module name, such as "
        r"'model\.layers\.0\.self_attn\.q_proj' \(for these names in every block: '\.\*\\\.\(q_proj\|v_proj\)', "
        r"or the names alone: q_proj,v_proj\); the model's linear layers end in: down_proj, ",
    ),
    bad(
        "run-targets-match-no-layer",
        run("--targets", "nope_proj"),
        r"target 'nope_proj' matches no linear layer; the model's linear layers: down_proj, .*q_proj",
    ),
    bad(  # into a runs dir not made yet: found before it is made (no empty folders left)
        "run-targets-match-no-layer-into-a-new-runs-dir",
        run("--targets", "nope_proj", "--runs-dir", "{tmp}/new/runs"),
        r"target 'nope_proj' matches no linear layer",
    ),
    bad(
        "base-alone-with-a-rank",
        run("--methods", "base", "--rank", "4"),
        r"--rank/--alpha/--heads/--targets/--option: "
        r"base \(the zero-shot model\) has no adapter to apply it to; leave it out",
    ),  # fmt: skip
    bad("base-alone-on-the-fast-path", run("--methods", "base", "--fast-path"), r"--fast-path: base .* has no adapter"),
    bad(
        "preset-empty",
        run("--preset", ""),
        r"--preset is empty; give it a value \(.none. where the flag takes it\), or leave it out for its default",
    ),
    bad(
        "runs-dir-blank",
        run("--runs-dir", " "),
        r"--runs-dir is empty; give it a value \(.none. where the flag takes it\), or leave it out",
    ),
    bad("leaderboard-runs-dir-empty", ["leaderboard", "--runs-dir", ""], r"--runs-dir is empty; give it a value"),
    bad("option-empty", run("--option", ""), r"--option is empty; give it a value"),
    bad("plugin-without-a-file", ["list", "methods", "--plugin"], r"--plugin needs a file: --plugin my_method\.py"),
    bad("plugin-empty", ["--plugin=", "list", "methods"], r"--plugin needs a file: --plugin my_method\.py"),
    bad(
        "reducer-off-and-a-reducer-shortcut",
        run("--methods", "effilora", "--option", "reducer=off", "--option", "drop_ratio=0.5"),
        r"reducer=off turns the Reducer off, and drop_ratio=0\.5 sets it: leave out one of them",
    ),
    bad(
        "reducer-word-not-understood",
        run("--methods", "effilora", "--option", "reducer=maybe"),
        r"reducer='maybe' not understood; use on or off \(true/false, yes/no, 1/0\), importance or random",
    ),
    bad(
        "rank-given-twice-with-two-values",
        run("--rank", "8", "--option", "r=4"),
        r"--rank 8 and --option r=4 both set r; give it once",
    ),
    bad(
        "val-size-0-leaves-the-reducer-nothing-to-score-with",
        run("--methods", "effilora", "--val-size", "0"),
        r"--val-size 0 leaves effilora's Reducer no validation split to score layers with; give --val-size 1",
    ),
    bad(
        "drop-ratio-out-of-range",
        run("--methods", "effilora", "--option", "drop_ratio=1.5"),
        r"drop_ratio must be in \[0, 1\) \(got 1\.5\); it is 1 - K/L",
    ),
    bad(
        "selection-unknown",
        run("--methods", "effilora", "--option", "selection=best"),
        r"selection='best' is not valid; choose one of: importance, random",
    ),
    bad("reducer-k-zero", run("--methods", "effilora", "--option", "k=0"), r"reducer k must be >= 1 \(got 0\)"),
    # from a review: reducer_seed went unchecked where the method runs no Reducer, a negative one was taken, and
    # one past 64 bits failed in torch ("Overflow when unpacking long long"), naming no option
    bad(
        "reducer-seed-not-an-integer-on-a-method-without-a-reducer",
        run("--option", "reducer_seed=abc"),
        r"option reducer_seed='abc' must be an integer",
    ),
    bad(
        "reducer-seed-negative",
        run("--methods", "effilora", "--option", "reducer_seed=-5"),
        r"option reducer_seed='-5' must be an integer in 0\.\.4294967295$",
    ),
    bad(
        "reducer-seed-negative-on-a-method-without-a-reducer",
        run("--option", "reducer_seed=-5"),
        r"option reducer_seed='-5' must be an integer in 0\.\.4294967295$",
    ),
    bad(
        "reducer-seed-too-large",
        params("--methods", "effilora", "--option", "reducer_seed=1180591620717411303424"),
        r"option reducer_seed='1180591620717411303424' must be an integer in 0\.\.4294967295$",
    ),
    # --- the CLI: training and scoring settings ---
    bad("steps-zero", run("--steps", "0"), r"steps must be >= 1 \(got 0\)"),
    bad("lr-zero", run("--lr", "0"), r"epochs and lr must be finite numbers > 0"),
    bad(
        "train-on-inputs-not-a-bool",
        run("--train-on-inputs", "maybe"),
        r"argument --train-on-inputs: 'maybe' is not true or false",
        usage=True,
    ),
    bad(
        "eval-limit-negative",
        run("--eval-limit", "-1"),
        r"eval_limit must be >= 0 \(got -1\); 0 means no limit$",
    ),
    bad(
        "train-cap-negative",
        run("--train-cap", "-1"),
        r"train_cap must be >= 0 \(got -1\); 0 means no limit$",
    ),
    bad(
        "eval-batch-size-zero",
        run("--eval-batch-size", "0"),
        r"eval batch size must be >= 1 \(got 0\)",
    ),
    bad("template-unknown", run("--template", "nope"), r"template 'nope' does not fit.*--template cloze"),
    bad(
        "template-unknown-with-choice",
        run("--protocol", "choice", "--template", "nope"),
        r"unknown prompt template 'nope'; choose one of: clean, llm-adapters",
    ),
    bad(
        "cloze-protocol-with-clean-template",
        run("--protocol", "cloze", "--template", "clean"),
        r"protocol 'cloze' with template 'clean' does not fit.*pass --protocol cloze --template cloze",
    ),
    # --- the CLI: model, runs dir, output ---
    bad(
        "run-model-path-missing",
        run("--model", "{tmp}/no/such/model"),
        r"no/such/model': no config.json there; give a model folder, a config.json, 'embedded', or one of",
    ),
    bad(
        "run-model-config-not-json",
        run("--model", "{tmp}/model"),
        r"config\.json.*JSON",
        write(CONFIG_JSON, "{"),
    ),
    bad(
        "runs-dir-is-a-file", run("--runs-dir", "{file}"), r"--runs-dir '.*a_file' is a file; pass a folder for the run"
    ),
    bad(
        "runs-dir-is-a-file-without-out",
        [a for a in run("--runs-dir", "{file}") if a not in ("--out", "{out}")],
        r"--runs-dir '.*a_file' is a file; pass a folder for the run records",
    ),
    bad(
        "runs-dir-under-a-file",
        run("--runs-dir", "{file}/runs"),
        r"runs dir '.*a_file/runs' is not writable \(Not a directory\); pass --runs-dir",
    ),
    bad(  # from a review: with --out defaulting to the runs dir, the error named --out, never given
        "runs-dir-under-a-file-without-out",
        [a for a in run("--runs-dir", "{file}/runs") if a not in ("--out", "{out}")],
        r"runs dir '.*a_file/runs' is not writable \(Not a directory\); pass --runs-dir",
    ),
    bad(  # passed the check and failed at mkdir with "File exists"
        "runs-dir-through-a-dangling-symlink",
        run("--runs-dir", "{tmp}/dangling/runs"),
        r"runs dir '.*dangling/runs' goes through '.*dangling', a symlink to '.*gone', which does not exist; "
        r"make its target or pass --runs-dir elsewhere",
        lambda tmp: (tmp / "dangling").symlink_to(tmp / "gone"),
    ),
    bad(  # from a review: --out was ignored without a word
        "run-out-without-a-leaderboard",
        [*run("--out", "{out}"), "--no-leaderboard"],
        r"--out says where the leaderboard goes, and --no-leaderboard writes none; leave one of them out",
    ),
    bad(
        "run-out-is-a-file",
        run("--out", "{file}"),
        r"--out '.*a_file' is a file; pass a folder for the leaderboard files \(or --no-leaderboard without --out\)",
    ),
    bad(
        "leaderboard-runs-dir-is-a-file",
        ["leaderboard", "--runs-dir", "{file}", "--out", "{out}"],
        r"runs dir '.*a_file' is a file; pass --runs-dir the folder that holds the runs",
    ),
    bad(  # from a review: without --out it blamed --out ("leaderboard folder ... is not writable")
        "leaderboard-runs-dir-is-a-file-without-out",
        ["leaderboard", "--runs-dir", "{file}"],
        r"runs dir '.*a_file' is a file; pass --runs-dir the folder that holds the runs$",
    ),
    bad(
        "leaderboard-runs-dir-missing",
        ["leaderboard", "--runs-dir", "{tmp}/none", "--out", "{out}"],
        r"runs dir '.*none' does not exist; run `harness run \.\.\.` first or pass --runs-dir",
    ),
    bad(
        "leaderboard-without-successful-records",
        ["leaderboard", "--runs-dir", "{tmp}/failed_runs", "--out", "{out}"],
        r"no successful run records under '.*failed_runs'.*(harness run|--runs-dir)",
        lambda tmp: _write_fixture(tmp / "failed_runs", status="failed"),
    ),
    bad(
        "leaderboard-out-is-a-file",
        ["leaderboard", "--runs-dir", "{runs}", "--out", "{file}"],
        r"leaderboard folder '.*a_file' is not writable \(Not a directory\); pass --out pointing at a folder",
    ),
    bad(
        "rescore-a-task-without-scorers",
        ["rescore", "--task", "commonsense", "--runs-dir", "{runs}", "--out", "{out}"],
        r"the commonsense task has no optional scorer to score again",
    ),
    bad(
        "rescore-without-a-scorer",
        ["rescore", "--task", "diffusion", "--runs-dir", "{runs}", "--out", "{out}"],
        r"name a scorer to score the runs with: --judge-model, --hps-checkpoint",
    ),
    bad(
        "rescore-unknown-task",
        ["rescore", "--task", "difusion", "--runs-dir", "{runs}", "--judge-model", "j"],
        r"unknown task 'difusion'.*diffusion",
    ),
    bad(
        "rescore-runs-dir-is-a-file",
        ["rescore", "--task", "diffusion", "--runs-dir", "{file}", "--judge-model", "j", "--no-leaderboard"],
        r"--runs-dir '.*a_file' is not a folder of runs; pass the one `harness run` wrote to",
    ),
    bad(  # the finished commonsense run is no diffusion run
        "rescore-without-runs-of-the-task",
        ["rescore", "--task", "diffusion", "--runs-dir", "{runs}", "--judge-model", "j", "--no-leaderboard"],
        r"no successful diffusion run in '.*'; run `harness run --task diffusion` first",
    ),
    bad(
        "rescore-an-unknown-run",
        ["rescore", "--task", "diffusion", "--runs-dir", "{runs}", "--runs", "nope", "--judge-model", "j"],
        r"no successful diffusion run 'nope' in '.*'",
    ),
    bad(
        "rescore-judge-model-on-commonsense",
        ["rescore", "--task", "commonsense", "--runs-dir", "{runs}", "--judge-model", "j"],
        r"the commonsense task has no optional scorer to score again",
    ),
    bad(
        "rescore-out-is-a-file",
        ["rescore", "--task", "diffusion", "--runs-dir", "{runs}", "--judge-model", "j", "--out", "{file}"],
        r"leaderboard folder '.*a_file' is not writable \(Not a directory\); pass --out pointing at a folder",
    ),
    bad(  # every table was built, then "File exists"
        "leaderboard-out-through-a-dangling-symlink",
        ["leaderboard", "--runs-dir", "{runs}", "--out", "{tmp}/dangling/lb"],
        r"leaderboard folder '.*dangling/lb' goes through '.*dangling', a symlink to '.*gone', which does not exist",
        lambda tmp: (tmp / "dangling").symlink_to(tmp / "gone"),
    ),
    bad(  # trained every run, then failed writing the leaderboard, advising to free space
        "run-out-through-a-dangling-symlink",
        run("--out", "{tmp}/dangling/lb"),
        r"leaderboard folder '.*dangling/lb' goes through '.*dangling', a symlink to '.*gone', which does not exist; "
        r"make its target or pass --out elsewhere",
        lambda tmp: (tmp / "dangling").symlink_to(tmp / "gone"),
    ),
    # --- data files ---
    bad(
        "data-dir-missing", run("--data-dir", "{tmp}/nowhere"), r"data dir '.*nowhere' does not exist; pass --data-dir"
    ),
    bad("data-dir-is-a-file", run("--data-dir", "{file}"), r"data dir '.*a_file' is a file, not a folder; pass --data"),
    bad(
        "data-dir-without-benchmarks",
        run("--data-dir", "{tmp}/empty"),
        r"data dir '.*empty' holds no benchmark folder with a test\.json; expected e\.g\. .*ARC-Easy/test\.json",
        lambda tmp: (tmp / "empty" / "notes").mkdir(parents=True),
    ),
    bad(  # from a review: found run by run, a failed record per method and seed
        "val-size-above-the-training-data",
        run("--methods", "lora,lora_fa", "--val-size", "100000"),
        r"only 24 training examples, not enough to hold out val_size=100000; lower it \(--val-size\) or add",
    ),
    bad(
        "data-without-training-files",
        run(),
        r"no training data in '?.*data'?: need .* or at least one <benchmark>/train\.json",
        lambda tmp: [f.unlink() for f in (tmp / "data").rglob("train.json")],
    ),
    bad(
        "test-json-not-json",
        run(),
        r"ARC-Easy/test\.json is not valid JSON \(.* at line 1, column \d+\); fix or remove the file",
        write("data/ARC-Easy/test.json", '[{"instruction": '),
    ),
    bad(
        "test-json-not-utf8",
        run(),
        r"ARC-Easy/test\.json is not valid JSON \(not UTF-8.*\); fix or remove the file",
        write("data/ARC-Easy/test.json", b'[{"instruction": "\xff\xfe"}]'),
    ),
    bad(
        "test-json-an-object",
        run(),
        r"ARC-Easy/test\.json must be a non-empty JSON list of examples with keys instruction, output, answer",
        arc_test(GOOD),
    ),
    bad("test-json-empty-list", run(), r"ARC-Easy/test\.json must be a non-empty JSON list", arc_test([])),
    bad(
        "test-json-list-of-strings",
        run(),
        r"ARC-Easy/test\.json: example 0 lacks one of the string keys .*\(it is a string, not an object\)",
        arc_test(["Which is a liquid?"]),
    ),
    bad(
        "example-missing-answer",
        run(),
        r"ARC-Easy/test\.json: example 1 lacks one of the string keys instruction, output, answer "
        r"\('answer' is missing\).*fix or remove",
        arc_test([GOOD, NO_ANSWER]),
    ),
    bad(
        "example-answer-not-a-string",
        run(),
        r"ARC-Easy/test\.json: example 1 lacks one of the string keys .*\('answer' is a number, not a string\)",
        arc_test([GOOD, {**GOOD, "answer": 1}]),
    ),
    bad(
        "example-without-answer-format-line-under-cloze",
        run(),
        r"ARC-Easy/test\.json: example 1 does not fit the cloze protocol \(no 'Answer format: .*; use --protocol choice",
        arc_test([GOOD, {**GOOD, "instruction": "Which is a liquid, water or rock?"}]),
    ),
    bad(
        "train-json-broken",
        run(),
        r"ARC-Easy/train\.json is not valid JSON \(Expecting value at line 1, column 18\); fix or remove the file",
        write("data/ARC-Easy/train.json", '[{"instruction": '),
    ),
    # --- plugins ---
    bad(
        "plugin-missing",
        ["--plugin", "{tmp}/nope.py", "list", "methods"],
        r"plugin file '.*nope\.py' not found; pass the path of a \.py file",
    ),
    bad(
        "plugin-not-a-py-file",
        ["--plugin", "{tmp}/plugin.txt", "list", "methods"],
        r"plugin '.*plugin\.txt' is not a \.py file; pass the path of a \.py file",
        write("plugin.txt", METHOD_PLUGIN.format(name="txt_lora")),
    ),
    bad(
        "plugin-is-a-folder",
        ["--plugin", "{data}", *run()],
        r"plugin '.*data' is not a \.py file; pass the path of a \.py file",
    ),
    bad(
        "plugin-syntax-error",
        [*PLUGIN_ARG, *run()],
        r"plugin '.*plugin\.py' failed to import \(SyntaxError: .*line 2.*\); fix it or leave out --plugin",
        plugin("import os\ndef broken(:\n"),
    ),
    bad(
        "plugin-import-error",
        [*PLUGIN_ARG, *run()],
        r"failed to import \(ModuleNotFoundError: No module named 'no_such_module_for_harness_tests'\); fix it",
        plugin("import no_such_module_for_harness_tests\n"),
    ),
    bad(
        "plugin-raises-at-import",
        [*PLUGIN_ARG, "list", "methods"],
        r"plugin '.*plugin\.py' failed to import \(RuntimeError: plugin exploded\); fix it or leave out --plugin",
        plugin("raise RuntimeError('plugin exploded')\n"),
    ),
    bad(
        "plugin-registers-a-duplicate-name",
        [*PLUGIN_ARG, *run()],
        r"method 'lora' is already registered \(by methods\.lora\.LoraLinear\); register yours under another",
        plugin(METHOD_PLUGIN.format(name="lora")),
    ),
    bad(  # from a review: it registered, and `--methods base` ran the zero-shot model instead
        "plugin-registers-a-reserved-name",
        [*PLUGIN_ARG, "list", "methods"],
        r"method name 'base' is reserved \(--methods base is the zero-shot model\); name it otherwise",
        plugin(METHOD_PLUGIN.format(name="base")),
    ),
    bad(
        "plugin-registers-an-invalid-name",
        [*PLUGIN_ARG, "list", "methods"],
        r"method name 'My-Lora' must be a lower-case Python identifier \(e\.g\. 'my_lora'\)",
        plugin(METHOD_PLUGIN.format(name="My-Lora")),
    ),
    bad(
        "plugin-option-wrong-type",
        [*PLUGIN_ARG, *run("--methods", "gain_lora", "--option", "gain=loud")],
        r"option gain='loud' must be a number",
        plugin(METHOD_PLUGIN.format(name="gain_lora")),
    ),
    bad(
        "plugin-option-unknown",
        [*PLUGIN_ARG, *run("--methods", "gain_lora", "--option", "gian=2")],
        r"unknown option 'gian' for method 'gain_lora' \(did you mean 'gain'\?\)",
        plugin(METHOD_PLUGIN.format(name="gain_lora")),
    ),
    bad(  # it ran, recorded fast_path: true and made its own leaderboard row, on the reference path
        "fast-path-on-a-plugin-without-one",
        [*PLUGIN_ARG, *run("--methods", "slow_lora", "--fast-path")],
        r"method 'slow_lora' has no fast path \(no delta_factors, or input_weights and factors_from, of its own\): "
        r"--fast-path would record a path the run does not take; leave it out",
        plugin(SLOW_PLUGIN),
    ),
    # --- model configs (`harness params`) ---
    bad("params-unknown-method", params("--methods", "lroa"), r"unknown method 'lroa' \(did you mean 'lora'\?\)"),
    bad(  # from a review: a 20-digit rank overflowed int64 in a 37-line traceback; 10**8 reported 15,415,380%
        "run-rank-beyond-int64",
        run("--rank", "99999999999999999999"),
        r"rank r=99999999999999999999 is above .*k_proj's smaller side \(192: .*\): its update .*; use r <= 192 "
        r"\(--rank; a method whose r is not its update's rank sets rank_bounded = False\)$",
    ),
    bad(
        "params-rank-above-a-layers-width",
        params("--rank", "100000000"),
        r"rank r=100000000 is above model\.layers\.0\.self_attn\.k_proj's smaller side \(16: 32 in, 16 out\)",
    ),
    bad(  # the sandbox switches the hub off: said, not transformers' "check your internet connection" (a review)
        "params-unknown-hub-model",
        ["params", "--model", "no-such-org/no-such-model", "--methods", "lora"],
        r"model 'no-such-org/no-such-model': HF_HUB_OFFLINE set, and the hub's cache \(.*\) holds no config of it; "
        r"connect to the internet \(with HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE unset\)",
    ),
    bad(  # from a review: read as broken JSON ("UnicodeDecodeError"), where harness run says what a GGUF is to it
        "params-model-a-gguf-file",
        ["params", "--model", "{tmp}/model.gguf", "--methods", "lora"],
        r"model '.*/model\.gguf' is a GGUF file, which the harness reads for the embedded model only \(converting it\); "
        r"give a model folder of safetensors or \.bin weights",
        write("model.gguf", b"GGUF\x03\x00\x00\x00\xff\xfe"),
    ),
    bad(
        "params-model-a-gguf-file-by-another-name",
        ["params", "--model", "{tmp}/model.bin", "--methods", "lora"],
        r"model '.*/model\.bin' is a GGUF file, which the harness reads for the embedded model only",
        write("model.bin", b"GGUF\x03\x00\x00\x00\xff\xfe"),
    ),
    bad(  # from a review: "its config does not build (AttributeError ...)", where the config is valid
        "params-vision-language-model-not-llava-layout",
        ["params", "--model", "{tmp}/vlm", "--methods", "lora"],
        r"model '.*/vlm': of vision-language models only LLaVA's layout \(a model\.language_model\) is adapted, and "
        r"its SmolVLMForConditionalGeneration has none; give a LLaVA-layout model \(e\.g\. llava-hf/llava-1\.5-7b-hf\) "
        r"or its language model alone$",
        smolvlm_config("vlm"),
    ),
    bad(
        "params-model-path-missing",
        ["params", "--model", "{tmp}/no/such/model", "--methods", "lora"],
        rf"model '.*/no/such/model': no config\.json there; {TINY_MODEL_HINT}",
    ),
    bad(
        "config-json-not-json",
        ["params", "--model", "{tmp}/model", "--methods", "lora"],
        r"model/config\.json is not valid JSON \(.*line 1.*\); fix it or give a model folder",
        write(CONFIG_JSON, "{"),
    ),
    bad(
        "config-json-a-list",
        ["params", "--model", "{tmp}/model/config.json", "--methods", "lora"],
        r"model/config\.json must hold a JSON object .*; fix it or give a model folder",
        write(CONFIG_JSON, "[1, 2]"),
    ),
    bad(
        "config-json-without-model-type",
        ["params", "--model", "{tmp}/model", "--methods", "lora"],
        r"model/config\.json has no 'model_type' \(e\.g\. \"llama\"\); fix it or give a model folder",
        write(CONFIG_JSON, '{"hidden_size": 32}'),
    ),
    bad(
        "config-json-unknown-model-type",
        ["params", "--model", "{tmp}/model", "--methods", "lora"],
        r"model '.*model': model_type 'nonsense' is not one transformers [\d.]+ knows; fix it or give a model folder",
        write(CONFIG_JSON, '{"model_type": "nonsense"}'),
    ),
    bad(
        "config-json-custom-code",
        ["params", "--model", "{tmp}/model", "--methods", "lora"],
        r"model '.*model': model_type 'mine' comes with the model's own code \(its config's auto_map\), which runs "
        r"only with --trust-remote-code: pass it if you trust that code",
        write(CONFIG_JSON, '{"model_type": "mine", "auto_map": {"AutoConfig": "x.MyConfig"}}'),
    ),
    bad(
        "config-json-field-wrong-type",
        ["params", "--model", "{tmp}/model", "--methods", "lora"],
        r"model '.*model': its config does not build \(.*hidden_size.*\); fix it",
        write(CONFIG_JSON, '{"model_type": "llama", "hidden_size": "big"}'),
    ),
    # --- multimodal data (LLaVA format): one line naming the file and the record, before any model loads ---
    bad(
        "multimodal-missing-image",
        mm_run(),
        r"train\.json: record 1 \(id 'b'\): image 'images/nope\.png' does not exist under .*; add the file or fix",
        llava(train=[LLAVA_GOOD, {**LLAVA_GOOD, "id": "b", "image": "images/nope.png"}]),
    ),
    bad(
        "multimodal-unreadable-image",
        mm_run(),
        r"train\.json: record 0 \(id 'a'\): image 'images/broken\.png' is not a readable image .*; replace or remove",
        llava(train=[{**LLAVA_GOOD, "image": "images/broken.png"}]),
    ),
    bad(
        "multimodal-undecodable-image",
        mm_run(),
        r"train\.json: record 0 \(id 'a'\): image 'images/undecodable\.png' is not a readable image .*; replace or",
        llava(train=[{**LLAVA_GOOD, "image": "images/undecodable.png"}]),
    ),
    bad(
        "multimodal-empty-answer",
        mm_run(),
        r"train\.json: record 0 \(id 'a'\): the gpt answer of turn 1 is empty \(training would teach",
        llava(train=[{**LLAVA_GOOD, "conversations": [LLAVA_GOOD["conversations"][0], {"from": "gpt", "value": " "}]}]),
    ),
    bad(
        "commonsense-answer-not-an-option",
        run("--protocol", "choice", "--template", "clean"),
        r"ARC-Easy/test\.json: example 0: answer 'answer9' is not one of its options \(answer1/answer2\); fix the",
        arc_test([{**GOOD, "answer": "answer9"}]),
    ),
    bad(
        "multimodal-image-tags-do-not-match",
        mm_run(),
        r"train\.json: record 0 \(id 'a'\): the human turns hold 2 <image> token\(s\) for 1 image\(s\)",
        llava(train=[{**LLAVA_GOOD, "conversations": [{"from": "human", "value": "<image><image> Hi"}, GPT]}]),
    ),
    bad(
        "multimodal-empty-conversation",
        mm_run(),
        r"train\.json: record 0 \(id 'a'\): .*conversation.*empty",
        llava(train=[{**LLAVA_GOOD, "conversations": []}]),
    ),
    bad(
        "multimodal-unknown-domain",
        mm_run(),
        r"train\.json: record 0 \(id 'a'\): domain 'poetry' is unknown; use one of general, document, math",
        llava(train=[{**LLAVA_GOOD, "domain": "poetry"}]),
    ),
    bad(
        "multimodal-unknown-train-domain",
        mm_run("--train-domains", "general,maths"),
        r"unknown domain 'maths' in --train-domains; choose from: general, document, math",
        llava(train=[LLAVA_GOOD]),
    ),
    bad(
        "multimodal-train-domain-twice",
        mm_run("--train-domains", "math,general,math"),
        r"--train-domains lists 'math' twice; name each domain once",
        llava(train=[LLAVA_GOOD]),
    ),
    bad(
        "multimodal-train-domains-empty",
        mm_run("--train-domains", ","),
        r"--train-domains ',' names no domain; name one or more \(e\.g\. math,document\) or leave it out",
        llava(train=[LLAVA_GOOD]),
    ),
]
BENCH_CASES = [
    bad(
        "bench-unknown-protocol", bench("--protocols", "cloze,vibes"), r"protocol 'vibes' is not one of commonsense's: "
    ),
    bad(
        "bench-task-it-cannot-score",  # it was refused as another task's protocol, advising one that then crashed
        bench("--task", "diffusion"),
        r"--task diffusion: bench times scoring on the causal LM it loads, and the diffusion task scores a model of "
        r"its own; bench can score commonsense \(choice, generate, lm-eval, cloze\): pass --task with one of those, "
        r"or --protocols none",
    ),
    bad("bench-unknown-task", bench("--task", "nope"), r"unknown task 'nope'; available: commonsense, diffusion"),
    bad("bench-data-dir-missing", bench("--data-dir", "{tmp}/nowhere"), r"data dir '.*nowhere' does not exist"),
    bad("bench-out-is-a-file", bench("--out", "{file}"), r"--out '.*a_file' is a file; pass a folder \(bench\.csv"),
    bad(
        "bench-out-under-a-file",
        bench("--out", "{file}/bench"),
        r"output folder '.*a_file/bench' is not writable \(Not a directory\); pass --out pointing at a folder",
    ),
    bad("bench-unknown-option", bench("--option", "nope=1"), r"unknown option 'nope' for method 'lora'; available: "),
    bad("bench-rank-zero", bench("--rank", "0"), r"rank r must be >= 1 \(got 0\)"),
    bad(
        "bench-layers-zero",
        bench("--model", "{tiny}", "--random-weights", "--layers", "0"),
        r"--layers must be >= 1 \(got 0\); leave it out",
    ),
    bad("bench-threads-negative", bench("--threads", "-1"), r"--threads must be >= 1 \(got -1\)"),
]
CASES += BENCH_CASES
SUBPROCESS_CASES = ["plugin-raises-at-import", "params-targets-regex-does-not-compile", "test-json-an-object"]


class ReachedModelLoad(BaseException):
    """The guard's signal: the row got as far as loading a model (BaseException: no ``except Exception`` eats it)."""


@cache
def _small_records(path: Path, n: int) -> str:
    return json.dumps(json.loads(path.read_text())[:n])


@cache
def _fixture_record(status: str) -> str:
    """A finished smoke record (seed 7, which no row runs), as JSON text."""
    from harness.runner import build_specs

    [spec] = build_specs("commonsense", ["lora"], [7], "smoke")
    record = new_record(spec.run_id, spec.to_dict(), {"device": "Test CPU", "torch": "2.x", "transformers": "5.x"})
    record["run"]["status"] = status
    record["eval"] = {"ARC-Easy": {"metric": "acc", "value": 50.0, "n": 4, "protocol": "cloze", "sha256": "x"}}
    record["train"] = trained_record_fields()
    return json.dumps(record)


def _write_fixture(runs: Path, status: str = "success") -> None:
    record = json.loads(_fixture_record(status))
    run_dir = runs / record["run"]["id"]
    run_dir.mkdir(parents=True)
    write_record(run_dir, record)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file under ``folder`` (but Python's bytecode caches of plugins), by relative path, and every folder
    (``None``): bad input makes no empty folder either."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
        if "__pycache__" not in p.parts
    }


def _check_untouched(tmp: Path, before: dict[str, bytes]) -> None:
    """The finished record is byte-identical, and nothing else under ``tmp`` was written, changed or removed."""
    [record] = [name for name in before if name.startswith("runs/") and name.endswith("/record.json")]
    after = _snapshot(tmp)
    assert after.get(record) == before[record], "the finished record changed"
    assert after == before, (
        f"files or folders changed: {sorted(k for k in before.keys() ^ after.keys())} "
        f"{sorted(k for k in before.keys() & after.keys() if before[k] != after[k])}"
    )


def _prepare(tmp: Path, data_dir: Path, setup: Setup | None) -> dict[str, str]:
    """A small valid data dir (two benchmarks), a runs dir holding a finished record, a tiny model config, a file."""
    for benchmark in ("ARC-Easy", "boolq"):
        for split, n in (("test", 4), ("train", 12)):
            target = tmp / "data" / benchmark / f"{split}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_small_records(data_dir / benchmark / f"{split}.json", n))
    _write_fixture(tmp / "runs")
    tiny_llama().config.to_json_file(tmp / "tiny.json")
    (tmp / "a_file").write_text("not a folder\n")
    if setup is not None:
        setup(tmp)
    return {
        "tmp": str(tmp),
        "data": str(tmp / "data"),
        "runs": str(tmp / "runs"),
        "out": str(tmp / "out"),
        "tiny": str(tmp / "tiny.json"),
        "file": str(tmp / "a_file"),
    }


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """cwd in tmp_path, no network, no data from the environment, no model loading, registries restored."""
    import huggingface_hub.constants

    import harness.models
    import harness.runner

    def guard(*args, **kwargs):
        raise ReachedModelLoad

    monkeypatch.chdir(tmp_path)
    for var in ("HARNESS_DATA_DIR", "HARNESS_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HARNESS_COMMONSENSE_URL", "http://127.0.0.1:9/no-download-in-tests")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(harness.runner, "load_model", guard)
    monkeypatch.setattr(harness.models, "embedded_folder", guard)
    METHODS.names(), TASKS.names()  # built-ins first, then snapshot: a row's plugin registrations are undone
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))
    modules = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - modules:
        if name.startswith("harness_plugin_"):
            del sys.modules[name]


def _check_stderr(err: str, match: str, usage: bool) -> None:
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert lines and lines[-1].strip(), f"no error message on stderr: {err!r}"
    if usage:  # argparse's own errors: usage line(s), then "harness <command>: error: <message>"
        assert lines[0].startswith("usage: harness"), err
        assert re.match(r"harness( \w+)?: error: ", lines[-1]), err
    else:
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
        assert lines[0].startswith("harness: error: "), err
    assert re.search(match, lines[-1]), f"{lines[-1]!r} does not match {match!r}"


@pytest.mark.parametrize(("argv", "match", "setup", "usage"), CASES)
def test_bad_input_gives_one_line_a_nonzero_exit_and_leaves_records(
    sandbox, data_dir, capsys, argv, match, setup, usage
):
    values = _prepare(sandbox, data_dir, setup)
    before = _snapshot(sandbox)
    capsys.readouterr()
    try:
        code = main([a.format(**values) for a in argv])
    except SystemExit as exc:  # argparse and --plugin errors exit from inside
        code = exc.code
    except ReachedModelLoad:
        pytest.fail("the bad input was not caught before the model loads")
    except Exception as exc:  # noqa: BLE001  (any other exception reaches the user as a traceback)
        pytest.fail(f"traceback: {type(exc).__name__}: {exc}")
    err = capsys.readouterr().err
    assert code == 2, f"exit status {code!r} (bad input exits with 2); stderr: {err!r}"
    _check_stderr(err, match, usage)
    _check_untouched(sandbox, before)


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_the_process_exits_non_zero_without_a_traceback(tmp_path, data_dir, case_id):
    [case] = [c for c in CASES if c.id == case_id]
    argv, match, setup, usage = case.values
    values = _prepare(tmp_path, data_dir, setup)
    before = _snapshot(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATA_DIR", "HARNESS_DEBUG")}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "harness", *[a.format(**values) for a in argv]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    _check_stderr(result.stderr, match, usage)
    _check_untouched(tmp_path, before)


def test_an_hps_checkpoint_from_the_environment_that_is_not_a_file_names_the_variable(sandbox, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_HPS_CHECKPOINT", str(sandbox / "nowhere.pt"))
    assert main(["run", "--methods", "lora", "--task", "diffusion", "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "HARNESS_HPS_CHECKPOINT '" in err and "nowhere.pt' is not a file" in err and "--hps-checkpoint" not in err


def test_a_commonsense_url_that_is_not_a_url_names_the_variable(sandbox, monkeypatch, capsys):
    """From a review: HARNESS_COMMONSENSE_URL=notaurl gave "unknown url type: 'notaurl/dataset/ARC-Easy/test.json'"
    (urllib's ValueError, not caught), naming neither the variable nor what to set."""
    monkeypatch.setenv("HARNESS_CACHE", str(sandbox / "cache"))
    monkeypatch.setenv("HARNESS_COMMONSENSE_URL", "notaurl")
    assert main(["run", "--methods", "lora", "--task", "commonsense", "--preset", "smoke", "--quiet"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        r"harness: error: HARNESS_COMMONSENSE_URL 'notaurl' is not a URL \(unknown url type: .*\); set it to an "
        r"http\(s\) address of LLM-Adapters' files \(default https://\S+\), or pass --data-dir \(or set "
        r"HARNESS_DATA_DIR\) to local data",
        line,
    ), line
    assert not list((sandbox / "cache").rglob("ARC-Easy"))  # the folder made for its file is not left empty


def test_a_twemoji_dir_from_the_environment_without_metadata_is_refused_and_a_tilde_is_expanded(
    sandbox, monkeypatch, capsys
):
    """From a review: a set HARNESS_TWEMOJI_DIR that lacked metadata.jsonl was passed over for other folders
    without a word, and "~/..." in it (no shell to expand it) was taken literally."""
    from tasks.multimodal import twemoji_dir

    monkeypatch.setenv("HOME", str(sandbox))
    (sandbox / "emoji").mkdir()
    monkeypatch.setenv("HARNESS_TWEMOJI_DIR", "~/emoji")
    for task in ("multimodal", "diffusion"):
        assert main(["run", "--methods", "lora", "--task", task, "--preset", "smoke", "--quiet"]) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line == (
            f"harness: error: HARNESS_TWEMOJI_DIR '{sandbox / 'emoji'}' has no metadata.jsonl; set it to the "
            "captioned Twemoji folder (metadata.jsonl, images/; ../shared/data/diffusion/twemoji-64), or unset it"
        )
    (sandbox / "emoji" / "metadata.jsonl").write_text("")
    assert twemoji_dir() == sandbox / "emoji"


def test_k_none_with_drop_ratio_is_k_unset_not_a_second_k():
    """From a review: ``--option k=none --option drop_ratio=0.5`` was refused as both setting K, though k=none is
    k unset (drop_ratio then decides K); a k that is set is still refused beside a drop_ratio."""
    from harness.runner import build_specs

    [spec] = build_specs("commonsense", ["effilora"], [0], "smoke", method_options={"k": "none", "drop_ratio": "0.5"})
    assert spec.method_options["reducer"]["k"] is None and spec.method_options["reducer"]["drop_ratio"] == 0.5
    [same] = build_specs("commonsense", ["effilora"], [0], "smoke", method_options={"drop_ratio": "0.5"})
    assert same.run_id == spec.run_id  # k=none is the preset's unset k: one run
    with pytest.raises(ValueError, match=r"k=3 and drop_ratio=0\.5 both set the Reducer's K"):
        build_specs("commonsense", ["effilora"], [0], "smoke", method_options={"k": "3", "drop_ratio": "0.5"})


def test_a_reducer_selection_word_and_another_selection_are_refused_not_the_last_one_run():
    """From a review: ``--option reducer=importance --option selection=random`` ran selection=random without a
    word; two values of one field are refused (as k and drop_ratio are), the same value twice is taken."""
    from harness.runner import build_specs

    def options(**given: str) -> dict:
        [spec] = build_specs("commonsense", ["lora"], [0], "smoke", method_options=given)
        return spec.method_options["reducer"]

    with pytest.raises(ValueError, match=r"^reducer=importance and selection=random both set the selection: give one$"):
        options(reducer="importance", selection="random")
    with pytest.raises(ValueError, match=r"reducer=random and selection=importance both set the selection"):
        options(reducer="random", selection="importance")
    assert options(reducer="random", selection="random")["selection"] == "random"  # the same: no conflict
    assert options(reducer="on", selection="random")["selection"] == "random"  # on names no selection
    with pytest.raises(ValueError, match=r"reducer=\{'k': 2\} and k=3 both set the Reducer's k: give one"):
        options(reducer={"k": 2}, k="3")


def test_k_and_drop_ratio_are_refused_together_wherever_each_is_given():
    """From a review: ``k`` beside ``drop_ratio`` was refused only where both came as shortcuts; with one inside
    ``reducer={...}`` (or a ``ReducerConfig``) and the other a shortcut, k won silently and the record kept the
    ignored drop_ratio. Both set K: refused wherever each comes from; k alone, or k=none, still taken."""
    from harness.config import ReducerConfig, make_config

    cls = METHODS.get("effilora").config_cls

    def reducer(**options) -> ReducerConfig:
        return make_config(cls, options, "effilora").reducer

    said = r"both set the Reducer's K \(drop_ratio = 1 - K/L\): give one"
    with pytest.raises(ValueError, match=rf"^the reducer's k=2 and drop_ratio=0\.75 {said}$"):
        reducer(reducer={"k": 2}, drop_ratio="0.75")
    with pytest.raises(ValueError, match=rf"^k=2 and the reducer's drop_ratio=0\.75 {said}$"):
        reducer(reducer={"drop_ratio": 0.75}, k="2")
    with pytest.raises(ValueError, match=rf"^the reducer's k=2 and drop_ratio=0\.25 {said}$"):  # given, if default
        reducer(reducer=ReducerConfig(k=2), drop_ratio=0.25)
    with pytest.raises(ValueError, match=rf"^k=2 and the reducer's drop_ratio=0\.5 {said}$"):
        reducer(reducer=ReducerConfig(drop_ratio=0.5), k=2)
    with pytest.raises(ValueError, match=rf"^the reducer's k=2 and the reducer's drop_ratio=0\.75 {said}$"):
        reducer(reducer={"k": 2, "drop_ratio": 0.75})
    assert reducer(reducer={"k": 2}).k == 2 and reducer(k="2").k == 2
    assert reducer(reducer={"k": 2, "drop_ratio": 0.25}).k == 2  # a record's resolved reducer: drop_ratio the default
    assert reducer(reducer={"drop_ratio": 0.75}, k="none").drop_ratio == 0.75  # k=none is k unset


def test_an_option_typed_as_a_union_takes_any_type_it_allows():
    """From a review: a plugin option typed ``int | float`` refused ``--option scale=0.5`` ("must be an integer"):
    only the first type of a union was tried. Every type it allows is tried; one that allows none of the values
    names them all, and ``str`` in the union keeps the word."""
    from dataclasses import dataclass

    from harness import AdapterConfig
    from harness.config import make_config

    @dataclass(frozen=True)
    class UnionConfig(AdapterConfig):
        scale: int | float = 1
        tag: int | str = 0

    assert make_config(UnionConfig, {"scale": "0.5"}, "m").scale == 0.5
    assert make_config(UnionConfig, {"scale": "2"}, "m").scale == 2
    assert make_config(UnionConfig, {"tag": "abc"}, "m").tag == "abc"
    assert make_config(UnionConfig, {"tag": "3"}, "m").tag == 3
    with pytest.raises(ValueError, match=r"option scale='loud' must be an integer or a number$"):
        make_config(UnionConfig, {"scale": "loud"}, "m")


@dataclasses.dataclass(frozen=True)
class HalfConfig(
    AdapterConfig
):  # a plugin's config whose default Reducer sets drop_ratio (module level: its hints resolve)
    reducer: ReducerConfig | None = dataclasses.field(default_factory=lambda: ReducerConfig(drop_ratio=0.5))


@dataclasses.dataclass(frozen=True)
class KConfig(AdapterConfig):  # one whose default Reducer sets k
    reducer: ReducerConfig | None = dataclasses.field(default_factory=lambda: ReducerConfig(k=2))


def test_a_method_s_own_default_reducer_is_not_counted_as_the_user_s_k_or_drop_ratio():
    """From a review of the check above: it compared the Reducer's drop_ratio with ``ReducerConfig``'s default, not
    the method's, so a plugin whose default Reducer sets ``drop_ratio=0.5`` refused ``--option k=2`` (the user
    gave one), and one whose default sets ``k=2`` refused every ``drop_ratio`` (the bench's ``--reducer``
    variants too). The one given wins over the method's default; both given is still refused."""
    from harness.config import make_config

    half = make_config(HalfConfig, {"k": "2"}, "half").reducer
    assert (half.k, half.drop_ratio) == (2, 0.5)  # k decides K, as README says k wins over drop_ratio
    by_ratio = make_config(KConfig, {"drop_ratio": "0.5"}, "kk").reducer
    assert (by_ratio.k, by_ratio.drop_ratio) == (None, 0.5)  # the drop_ratio given replaces the default's K
    assert make_config(KConfig, {"reducer": {"drop_ratio": 0.75}}, "kk").reducer.k is None
    assert make_config(KConfig, {}, "kk").reducer.k == 2
    with pytest.raises(ValueError, match=r"^k=3 and drop_ratio=0\.5 both set the Reducer's K"):
        make_config(KConfig, {"k": "3", "drop_ratio": "0.5"}, "kk")


def test_a_literal_option_takes_its_own_values():
    """From a review: a union with a ``Literal`` member (``Literal["auto"] | int``) refused "auto" ("must be an
    integer"), and ``Literal[1, 2]`` kept "1" as a string where the type says 1."""
    from typing import Literal

    from harness.config import _coerce

    assert _coerce("a", "auto", Literal["auto"] | int) == "auto"
    assert _coerce("a", "3", Literal["auto"] | int) == 3
    assert _coerce("a", "1", Literal[1, 2]) == 1 and isinstance(_coerce("a", "1", Literal[1, 2]), int)
    with pytest.raises(ValueError, match=r"option a='3' must be one of 1, 2$"):
        _coerce("a", "3", Literal[1, 2])
    with pytest.raises(ValueError, match=r"option a='x' must be one of auto or a number$"):
        _coerce("a", "x", Literal["auto"] | float)


def test_a_literal_none_or_boolean_takes_the_words_its_option_takes():
    """From a re-review: a ``Literal`` member ``None`` never matched ("must be one of a, None" for "None"), and
    ``Literal[True, False]`` took only "True"/"False" where a boolean option takes on/off, yes/no, 1/0."""
    from typing import Literal

    from harness.config import _coerce

    assert _coerce("o", "none", Literal["a", None]) is None and _coerce("o", "a", Literal["a", None]) == "a"
    assert _coerce("o", "on", Literal[True, False]) is True and _coerce("o", "0", Literal[True, False]) is False
    with pytest.raises(ValueError, match=r"option o='x' must be one of True, False$"):
        _coerce("o", "x", Literal[True, False])
    assert _coerce("o", "1", Literal[False] | int) == 1 and _coerce("o", "0", Literal[False] | int) is not False
    assert _coerce("o", "off", Literal[False] | int) is False


def test_reducer_on_or_a_selection_word_starts_from_the_method_s_default_reducer():
    """From a re-review: ``reducer=random`` (and ``reducer=on``, which the bench's ``--reducer importance`` gives)
    built a bare ``ReducerConfig``, dropping a plugin default's K, while ``selection=random`` kept it."""
    from harness.config import make_config

    assert make_config(KConfig, {"reducer": "random"}, "kk").reducer == ReducerConfig(k=2, selection="random")
    assert make_config(KConfig, {"reducer": "on"}, "kk").reducer == ReducerConfig(k=2)
    assert make_config(KConfig, {"selection": "random"}, "kk").reducer == ReducerConfig(k=2, selection="random")
    assert make_config(HalfConfig, {"reducer": "random"}, "half").reducer.drop_ratio == 0.5
    assert make_config(KConfig, {"reducer": {"selection": "random"}}, "kk").reducer.k is None  # a dict: as given
    effi = METHODS.get("effilora").config_cls
    assert make_config(effi, {"reducer": "random"}, "effilora").reducer == ReducerConfig(selection="random")


def _refused_in_one_line(sandbox, data_dir, capsys, argv: list[str], match: str, setup: Setup | None = None) -> None:
    """A row of the table, for a test of its own: exit 2, one line matching ``match``, the runs dir untouched."""
    values = _prepare(sandbox, data_dir, setup)
    before = _snapshot(sandbox)
    capsys.readouterr()
    try:
        code = main([a.format(**values) for a in argv])
    except ReachedModelLoad:
        pytest.fail("the bad input was not caught before the model loads")
    err = capsys.readouterr().err
    assert code == 2, f"exit status {code!r}; stderr: {err!r}"
    _check_stderr(err, match, usage=False)
    _check_untouched(sandbox, before)


@pytest.mark.parametrize(
    "argv",
    [
        run("--methods", "base", "--model", "{tmp}/unet", "--random-weights"),
        run("--methods", "base", "--model", "runwayml/stable-diffusion-v1-5", "--random-weights"),
        bench("--model", "{tmp}/unet", "--random-weights"),
    ],
    ids=["run-folder", "run-paper-id", "bench-folder"],
)
def test_a_diffusers_config_for_a_text_model_is_refused_in_one_line(sandbox, data_dir, capsys, argv):
    """From a review: ``transformers_config`` read the config's ``model_type``, which a diffusers config (its
    ``_class_name`` only, which ``load_config_dict`` takes) lacks: a commonsense run or a bench of one built from its
    config ended in a KeyError traceback. Its message offered runwayml/stable-diffusion-v1-5 among the models to give,
    the very id refused: it names the paper ids that are transformers models only."""
    _refused_in_one_line(
        sandbox,
        data_dir,
        capsys,
        argv,
        r"model '\S+': its config is a diffusers one, no transformers model; give a model folder, a config\.json, "
        r"'embedded', or one of meta-llama/Meta-Llama-3-8B, llava-hf/llava-1\.5-7b-hf$",
        write("unet/config.json", '{"_class_name": "UNet2DConditionModel"}'),
    )


def _no_pad_folder(tmp: Path) -> Path:
    """A tiny Llama folder whose tokenizer (word level) has neither a pad nor an eos token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp / "nopad"
    tiny_llama(layers=2).save_pretrained(folder)
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", "yes", "no"])}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(folder)
    return folder


def test_a_tokenizer_without_a_pad_or_eos_token_is_refused_before_the_model_loads(sandbox, data_dir, capsys):
    """From a review: a tokenizer with neither a pad nor an eos token left the pad id ``None``, and every run loaded
    the model and failed with a torch TypeError (a failed record each). Built from its config, the sweep is refused
    before any run; with its weights, each run is refused before they load."""
    import torch

    from tasks.lm import CausalLMRecipe, load_causal_lm

    said = r"model '.*nopad': the tokenizer has neither a pad nor an eos token; set tokenizer\.pad_token"
    _refused_in_one_line(
        sandbox, data_dir, capsys, run("--model", "{tmp}/nopad", "--random-weights"), said, _no_pad_folder
    )
    folder = str(sandbox / "nopad")
    for random_weights in (True, False):
        with pytest.raises(ValueError, match=said):
            load_causal_lm(folder, torch.device("cpu"), random_weights=random_weights, seed=0, trust_remote_code=False)
    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match="^the tokenizer has neither a pad nor an eos token"):
        CausalLMRecipe(AutoTokenizer.from_pretrained(folder), cutoff_len=8, train_on_inputs=False)


@pytest.mark.parametrize("flag", ["--grad-accum", "--micro-batch-size"])
def test_a_huge_micro_batch_or_grad_accum_is_refused_before_the_model_loads(sandbox, data_dir, capsys, flag):
    """From a review: ``--grad-accum 10000000000`` warned that a step takes 2e10 examples, then took all memory
    before the first step (a MemoryError after ~100 s, a failed record): refused now before anything loads, in one
    line naming the flags, the runs dir untouched."""
    _refused_in_one_line(
        sandbox,
        data_dir,
        capsys,
        run(flag, "10000000000"),
        r"micro_batch_size x grad_accum \(--micro-batch-size x --grad-accum\) is \d+ x \d+ = \d+ examples a step, "
        r"over the 65536 a step takes at most; give smaller values .*--steps or --epochs to train longer$",
    )


def test_a_file_named_embedded_in_the_working_directory_is_not_the_model(sandbox):
    """From a review: ``build_specs`` refused a ``--model`` that is a file before ruling out the reserved word
    ``embedded``, so a stray file of that name in the working directory broke every default run."""
    from harness.runner import build_specs

    (sandbox / "embedded").write_text("not a model\n")  # sandbox: the working directory
    for model in (None, "embedded"):
        [spec] = build_specs("commonsense", ["lora"], [0], "smoke", model=model)
        assert spec.model == "embedded"


DATA_FILE_TASK = '''
import errno
import os
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from harness import TASKS
from harness.models import MetaModel
from harness.task import Preset, Task, TaskOptions
from harness.train import TrainConfig
from tests.conftest import tiny_llama


@TASKS.register("csv_task")
class CsvTask(Task):
    """Reads its data in __init__, as the README advises (a plugin for tests); no run gets further."""

    protocols, columns, default_preset = ("choice",), ("csv",), "smoke"
    presets = {{"smoke": Preset("csv", "tiny", TrainConfig(steps=1), TaskOptions(), {{"r": 2}}, "choice", 4)}}

    def __init__(self, options):
        super().__init__(options)
        path = Path(options.data_dir) / "train.csv"
        if {denied}:  # as open() says it to a user who may not read the file (the tests run as root)
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        self.rows = path.read_text().splitlines()

    @classmethod
    def build_meta(cls, model, trust_remote_code=False):
        with torch.device("meta"):
            m = LlamaForCausalLM(tiny_llama().config)
        return MetaModel(model, m, m)

    def load(self, *args, **kwargs):
        raise AssertionError("no run starts")

    recipe = splits = evaluate = load
'''


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("missing", r"cannot read \S+/csv/train\.csv \(No such file or directory\); check the path \(a task's data: "),
        (
            "a-folder",
            r"cannot read \S+/csv/train\.csv \(Is a directory\); check the path \(a task's data: --data-dir\)",
        ),
        ("denied", r"could not read or write \S+/csv/train\.csv \(Permission denied\); fix permissions, then run"),
    ],
)
def test_a_data_file_a_task_cannot_read_is_said_as_a_read_not_a_write(sandbox, data_dir, capsys, case, said):
    """From a review: a plugin task's data file missing, which its ``__init__`` reads before any run (as the README
    advises), was "could not write .../train.csv (No such file or directory); free space or fix permissions": nothing
    was written, nothing ran. The errno decides: a file not there is a read; a permission, either."""

    def setup(tmp: Path) -> None:
        write("plugin.py", DATA_FILE_TASK.format(denied=case == "denied"))(tmp)
        (tmp / "csv").mkdir()
        if case == "a-folder":
            (tmp / "csv" / "train.csv").mkdir()
        elif case == "denied":
            (tmp / "csv" / "train.csv").write_text("a,b\n")

    argv = [*PLUGIN_ARG, "run", "--task", "csv_task", "--methods", "lora", "--data-dir", "{tmp}/csv"]
    argv += ["--runs-dir", "{runs}", "--out", "{out}", "--quiet"]
    _refused_in_one_line(sandbox, data_dir, capsys, argv, said + r".*finished runs are kept", setup)


@pytest.mark.parametrize("alpha", [math.inf, -math.inf])
def test_an_infinite_alpha_is_refused(alpha):
    """From a mutation test (config.py:133, isfinite dropped): alpha=inf makes scaling inf and every output NaN."""
    with pytest.raises(ValueError, match=r"alpha must be a finite number > 0"):
        AdapterConfig(alpha=alpha)


def test_rank_and_r_at_two_values_are_refused_by_make_config():
    """From a mutation test (config.py:173, check dropped): the Python API's rank=8 beside r=4 took one silently."""
    cls = METHODS.get("lora").config_cls
    with pytest.raises(ValueError, match=r"rank=8 and r=4 both set the adapter's rank"):
        make_config(cls, {"rank": 8, "r": 4}, "lora")
    assert make_config(cls, {"rank": "8", "r": 8}, "lora").r == 8  # the same value twice is fine


def test_a_hub_id_with_the_hub_switched_off_says_so_and_where_the_cache_is(tmp_path, monkeypatch, capsys):
    """From a review: ``HF_HUB_OFFLINE=1 harness params --model org/name`` (no copy in the cache) passed on
    transformers' "couldn't connect ... check your internet connection", never naming the variable that switched the
    hub off nor the cache it looked in; a config the cache holds is still read offline."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["params", "--model", "org/name", "--methods", "lora"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"harness: error: model 'org/name': HF_HUB_OFFLINE set, and the hub's cache ({tmp_path / 'hub'}) holds no "
        "config of it; connect to the internet (with HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE unset), log in (hf auth "
        "login) where the repository is gated, give a local folder holding the weights, or pass --random-weights to "
        "build its architecture from its config\n"
    )
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    tiny_llama().config.to_json_file(snapshot / "config.json")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    assert main(["params", "--model", "org/name", "--methods", "lora", "--json"]) == 0  # cached: read offline
    capsys.readouterr()
    (snapshot / "config.json").write_text("{")  # cached, yet broken: not said to be missing
    assert main(["params", "--model", "org/name", "--methods", "lora"]) == 2
    err = capsys.readouterr().err
    assert "is not on the Hugging Face hub or it cannot be reached" in err and "holds no config" not in err


def test_a_gguf_model_is_refused_by_params_as_run_refuses_it(tmp_path):
    """From a review: ``harness params`` read a GGUF as broken JSON where ``harness run`` said what a GGUF is to the
    harness; both say the same."""
    from harness.models import load_config_dict
    from harness.runner_spec import model_file_error

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00\xff\xfe")
    with pytest.raises(ValueError) as refused:
        load_config_dict(str(gguf))
    assert str(refused.value) == str(model_file_error(gguf))
