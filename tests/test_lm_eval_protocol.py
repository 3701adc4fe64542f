"""The lm-eval protocol gives the same log-likelihoods and predictions as our ``choice`` protocol."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from harness.task import Loaded, TaskOptions
from tasks.commonsense import CommonsenseTask
from tests.conftest import tiny_llama

_INDEXES: dict[tuple, bytes] = {}


@pytest.fixture(autouse=True)
def index_lm_evals_own_tasks_once(monkeypatch):
    """Each ``simple_evaluate`` (one a benchmark) builds a ``TaskManager``, which parses every task YAML file
    lm-eval ships into its index (~14,700 tasks, groups and tags): ~6 s each, most of these tests' time. Here
    the index is parsed once and each build gets a fresh copy of it (unpickled: nothing one evaluation changes
    reaches the next). Our task is an inline config, not in that index; where lm-eval builds its index
    otherwise (other versions), nothing changes."""
    import pickle

    try:
        from lm_eval.tasks._index import TaskIndex
    except ImportError:
        return
    real = TaskIndex.build

    def build(paths, *, resolve_includes=True):
        paths = list(paths)
        key = (tuple(str(p) for p in paths), resolve_includes)
        if key not in _INDEXES:
            _INDEXES[key] = pickle.dumps(real(paths, resolve_includes=resolve_includes))
        return pickle.loads(_INDEXES[key])

    monkeypatch.setattr(TaskIndex, "build", staticmethod(build))


def _task(tmp_path, data_dir) -> CommonsenseTask:
    for name in ("boolq", "ARC-Easy"):
        shutil.copytree(data_dir / name, tmp_path / "data" / name)
    return CommonsenseTask(TaskOptions(data_dir=str(tmp_path / "data"), eval_limit=4))


def _assert_protocols_agree(task: CommonsenseTask, loaded: Loaded, tmp_path) -> None:
    """``choice`` and ``lm-eval`` give every benchmark the same accuracy, every question the same pick and
    every option the same log-likelihood (within 1e-3)."""
    ours = task.evaluate(loaded, "choice", 4, tmp_path / "choice.jsonl", progress=False)
    theirs = task.evaluate(loaded, "lm-eval", 4, tmp_path / "lm_eval.jsonl", progress=False)
    for name in ("boolq", "ARC-Easy"):
        assert theirs[name]["protocol"] == "lm-eval" and theirs[name]["n"] == 4
        assert theirs[name]["value"] == ours[name]["value"]
    a = [json.loads(line) for line in (tmp_path / "choice.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "lm_eval.jsonl").read_text().splitlines()]
    for x, y in zip(a, b, strict=True):
        assert x["pred"] == y["pred"]
        for label, score in x["scores"].items():
            assert abs(score - y["scores"][label]) < 1e-3


@pytest.mark.slow
def test_lm_eval_agrees_with_choice_on_smollm2(tmp_path, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models import embedded_folder

    task = _task(tmp_path, data_dir)
    tokenizer = AutoTokenizer.from_pretrained(embedded_folder())
    model = AutoModelForCausalLM.from_pretrained(embedded_folder(), dtype=torch.float32).eval()
    _assert_protocols_agree(task, Loaded(model, None, "tiny", tokenizer), tmp_path)


@pytest.mark.slow
def test_lm_eval_adds_no_bos_where_the_tokenizer_would(tmp_path, data_dir):
    """A Llama-3-like tokenizer puts BOS first by default; lm-eval would add it to every context (this test then
    fails: the log-likelihoods move by more than 1e-3), training and ``choice`` never do: the two protocols must
    agree all the same."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    from harness.models import embedded_folder

    task = _task(tmp_path, data_dir)
    tokenizer = AutoTokenizer.from_pretrained(embedded_folder())
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, bos)]
    )
    assert tokenizer("hi")["input_ids"][0] == bos != tokenizer("hi", add_special_tokens=False)["input_ids"][0]
    model = tiny_llama(layers=2, vocab_size=len(tokenizer), context=2048)
    _assert_protocols_agree(task, Loaded(model, None, "tiny", tokenizer), tmp_path)


def test_the_lm_eval_protocol_leaves_nothing_in_the_datasets_cache(tmp_path, monkeypatch):
    """From a review: each call left an Arrow copy of its test set in the user's datasets cache, under a new hash
    each time; the copy now goes in the call's temporary folder and with it."""
    import datasets
    from lm_eval.tasks._index import TaskIndex
    from transformers import AutoTokenizer

    from harness.models import embedded_folder
    from tasks.commonsense.lm_eval_protocol import lm_eval_predictions

    cache = tmp_path / "hf-datasets"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(TaskIndex, "build", staticmethod(lambda paths, *, resolve_includes=True: {}))  # inline task
    tokenizer = AutoTokenizer.from_pretrained(embedded_folder())
    model = tiny_llama(layers=2, vocab_size=len(tokenizer), context=256)
    prompts, candidates = ["Is it true?\n\n", "Pick one\n"], [["true", "false"], ["a", "b", "c"]]
    preds, _ = lm_eval_predictions(
        model, tokenizer, "my-bench", [{"answer": "true"}, {"answer": "b"}], prompts, candidates, 2
    )
    assert [p in c for p, c in zip(preds, candidates, strict=True)] == [True, True]
    assert list(cache.rglob("*")) == []


def test_the_lm_eval_protocol_is_silent_without_progress(capfd, monkeypatch):
    """From a review: with ``--quiet`` (``progress=False``) the lm-eval protocol still printed lm-eval's bars
    ("Tokenizing inputs", "Running loglikelihood requests": lm-eval passes ``disable=False`` to tqdm itself, past
    ``--quiet``'s default) and its two warnings about the model object; with progress on they stay."""
    import logging

    from lm_eval.tasks._index import TaskIndex
    from transformers import AutoTokenizer

    from harness.models import embedded_folder
    from tasks.commonsense.lm_eval_protocol import lm_eval_predictions

    monkeypatch.setattr(TaskIndex, "build", staticmethod(lambda paths, *, resolve_includes=True: {}))  # inline task
    logger = logging.getLogger("lm_eval")  # a former evaluation leaves it at ERROR: its warnings would not show
    level = logger.level
    logger.setLevel(logging.NOTSET)
    warned: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warned.append(record.getMessage())
    logger.addHandler(handler)
    tokenizer = AutoTokenizer.from_pretrained(embedded_folder())
    model = tiny_llama(layers=2, vocab_size=len(tokenizer), context=256)
    args = (model, tokenizer, "my-bench", [{"answer": "true"}], ["Is it true?\n\n"], [["true", "false"]], 1)
    import tqdm.std

    init = tqdm.std.tqdm.__dict__["__init__"]
    try:
        capfd.readouterr()
        lm_eval_predictions(*args, progress=False)
        quiet, quiet_warned, quiet_level = capfd.readouterr(), list(warned), logger.level
        assert tqdm.std.tqdm.__dict__["__init__"] is init  # tqdm's bars back as they were (a re-review)
        import lm_eval

        def fails(**kwargs):
            raise RuntimeError("lm-eval failed")

        with monkeypatch.context() as m, pytest.raises(RuntimeError, match="lm-eval failed"):  # and after a failure
            m.setattr(lm_eval, "simple_evaluate", fails)
            lm_eval_predictions(*args, progress=False)
        assert tqdm.std.tqdm.__dict__["__init__"] is init and logger.level == logging.NOTSET
        lm_eval_predictions(*args, progress=True)
        loud = capfd.readouterr()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    for text in ("Running loglikelihood requests", "Tokenizing inputs", "it/s"):
        assert text not in quiet.out + quiet.err
    assert quiet_warned == [] and quiet_level == logging.NOTSET  # lm-eval's level restored after
    assert "Running loglikelihood requests" in loud.err and "Tokenizing inputs" in loud.err
    assert any("pretrained" in w for w in warned)
