"""The ``lmms-eval`` protocol: the same test questions, asked through lmms-eval (EvolvingLMMs-Lab).

``HarnessLMM`` is an lmms-eval model (a subclass of its ``lmms``) wrapping the in-memory adapted model
and the harness's ``Formatter``, so lmms-eval sees exactly the prompts and images the native scorer
uses; it is also registered through lmms-eval's ``lmms_eval.models`` entry point (name ``harness``).
The test sets go in as local task YAMLs (``lmms_tasks/``) over JSON docs written per domain: one doc
per prompt (a choice question's every rotation is a doc). Predictions come back from lmms-eval's
per-sample log and are scored by the harness's own rules, so the two protocols are comparable per
example. With the hub, users name lmms-eval's own tasks (``mmbench_en_dev``, ``mme``, ``docvqa_val``...).
It scores in one process only: lmms-eval reads WORLD_SIZE and RANK, so ``MultimodalTask.check_options``
refuses it under torchrun or accelerate launch, before anything trains.

lmms-eval is optional and must not replace the CPU torch: ``pip install --no-deps lmms-eval==0.7.3
loguru tenacity "filelock<4"`` (its declared requirements pull torchvision and a newer torch; 0.7.3 imports
``filelock._api``, gone in filelock 4), beside the harness's ``.[test]`` extra, which holds those three and
the ``datasets``, ``evaluate`` and ``sacrebleu`` it imports.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.multimodal import native
from tasks.multimodal.data import IMAGE_TOKEN, Record
from tasks.multimodal.recipe import Formatter


def manifests() -> Any:
    """lmms-eval's ``lmms_eval.models`` entry point: ``--model harness``. Defined before the imports below: the
    evaluator's import loads the entry points, this one among them, while this module is half loaded."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="harness", simple_class_path=f"{__name__}.HarnessLMM")


try:  # the evaluator too: it imports what scoring needs (datasets, evaluate, sacrebleu), found missing before training
    from lmms_eval import evaluator
    from lmms_eval.api.instance import GenerationResult
    from lmms_eval.api.model import lmms
    from lmms_eval.tasks import TaskManager
except ImportError as exc:  # an optional extra: say how to get it without breaking the CPU torch
    raise ValueError(
        "the lmms-eval protocol needs lmms-eval: pip install --no-deps lmms-eval==0.7.3 loguru tenacity "
        '"filelock<4", beside pip install -e ".[test]" for the datasets, evaluate and sacrebleu it imports '
        f"(--no-deps keeps the CPU torch; see the README) [{exc}]"
    ) from None

TASKS_DIR = Path(__file__).parent / "lmms_tasks"
KIND_TASK = {"choice": "harness_mm_choice", "yesno": "harness_mm_yesno", "open": "harness_mm_open"}


class HarnessLMM(lmms):
    """An in-memory harness model for lmms-eval (``is_simple``: plain context + visuals)."""

    is_simple = True
    # lmms-eval makes ``lm.accelerator = Accelerator()`` where the model has none, fixing accelerate's process-wide
    # state at mixed precision "no": a later run's bf16 training (a GPU) was then refused (a review: `--methods
    # base,lora --protocol lmms-eval`). One process only (refused otherwise), where lmms-eval reads it nowhere else
    accelerator = None

    def __init__(self, model: Any = None, fmt: Formatter | None = None, batch_size: int = 8, **kwargs: Any) -> None:
        super().__init__()
        if model is None or fmt is None:
            raise ValueError(
                "HarnessLMM wraps a model in memory: run it through `harness run --task multimodal --protocol "
                "lmms-eval`, or build it with HarnessLMM(model=..., fmt=Formatter(model, tokenizer))"
            )
        self.model, self.fmt, self.batch_size = model, fmt, int(batch_size)

    def _ask(self, args: tuple) -> tuple[str, list[Any]]:
        """(human turn, images) of a request. A context without ``<image>`` gets one ``<image>\\n`` per visual in
        front, as lmms-eval's own model wrappers do: its tasks' prompts carry no tag (``mme``'s is the bare
        question), and the model places an image only where a tag is."""
        context, _, doc_to_visual, doc_id, task, split = args
        visuals = list(doc_to_visual(self.task_dict[task][split][doc_id]) or []) if doc_to_visual else []
        if visuals and IMAGE_TOKEN not in context:
            context = f"{IMAGE_TOKEN}\n" * len(visuals) + context
        return context, visuals

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        """One request per (prompt, choice); lmms-eval takes the argmin, so each result is a loss."""
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            _, _, _, doc_id, task, split = req.args
            groups.setdefault((task, split, doc_id), []).append(i)
        out: list[Any] = [None] * len(requests)
        keys = list(groups)
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start : start + self.batch_size]
            asks = [self._ask(requests[groups[k][0]].args) for k in chunk]
            cands = [[requests[i].args[1] for i in groups[k]] for k in chunk]
            scores = native.candidate_logprobs(self.model, self.fmt, asks, cands)
            for k, row in zip(chunk, scores, strict=True):
                for i, logprob in zip(groups[k], row, strict=True):
                    out[i] = GenerationResult(text=(-logprob, False))  # kept as a pair by lmms-eval 0.7.x
        return out

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Greedy replies, as the native scorer decodes them (sampling settings are not read). lmms-eval hands over
        every task's requests at once, each with its own settings: a batch holds one ``max_new_tokens`` only, and
        each reply is cut at the first of its own ``until`` strings other than a blank line (see ``_cut``)."""
        groups: dict[int, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(int(req.args[1].get("max_new_tokens", native.MAX_NEW_TOKENS)), []).append(i)
        out: list[str] = [""] * len(requests)
        for max_new, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                replies = native.generate(self.model, self.fmt, [self._ask(requests[i].args) for i in chunk], max_new)
                for i, reply in zip(chunk, replies, strict=True):
                    out[i] = _cut(reply, requests[i].args[1].get("until"))
        return out

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError("the harness's test sets are single-round")

    def clean(self) -> None:
        """lmms-eval's default deletes the wrapper's modules after a run: the model is the harness's."""


def _cut(reply: str, until: str | Sequence[str] | None) -> str:
    """``reply`` up to the first of the ``until`` strings found in it (empty ones stop nothing), stripped. A blank
    line ("\\n\\n") stops nothing: lmms-eval 0.7.3 gives it to every task without an ``until`` of its own (``mme``,
    ``mathvista_testmini``, ``mmvet``, ``docvqa_val``), and its newer wrappers (``qwen2_5_vl``, ``gemma3``) drop it
    so as not to cut an answer short (its LLaVA wrappers cut at nothing); an explicit stop, such as
    ``mmbench_en_dev``'s "ASSISTANT:", still cuts."""
    terms = [t for t in ([until] if isinstance(until, str) else list(until or ())) if t != "\n\n"]
    stop = min((reply.index(t) for t in terms if t and t in reply), default=len(reply))
    return reply[:stop].strip()


def _docs(records: Sequence[Record]) -> dict[str, list[dict[str, Any]]]:
    """One doc per prompt the native scorer asks, in its order; ``id`` = record id + "#" + rotation."""
    docs: dict[str, list[dict[str, Any]]] = {k: [] for k in KIND_TASK}
    for r in records:
        for j, (human, cands) in enumerate(native.prompts_for(r)):
            docs[r.kind].append(
                {
                    "id": f"{r.id}#{j}",
                    "image": str(r.images[0]) if r.images else "",
                    "prompt": human,
                    "choices": cands,
                    "answer": 0 if cands else (r.answers or [""])[0],
                }
            )
    return docs


def _copy_yaml(source: Path, work: Path, max_new: int) -> None:
    """``source`` into ``work`` with its datasets cache in there, deleted with it (lmms-eval resolves its own cache
    folder once a process: one named by LMMS_EVAL_DATASETS_CACHE outlived every call but the first), and the open
    task's replies ``max_new`` tokens long, stopped by EOS only, as natively: ``until: []`` says so whatever
    lmms-eval's default ``until`` is (0.7.3's, a blank line, ``_cut`` drops anyway; another default would not be)."""
    text = source.read_text()
    kwargs = "\ndataset_kwargs:\n"
    if kwargs not in text:
        raise ValueError(f"{source} lost its '{kwargs.strip()}' block; put it back")
    text = text.replace(kwargs, f"{kwargs}  cache_dir: {json.dumps(str(work / 'cache'))}\n")
    if source.stem == KIND_TASK["open"]:
        cap = f"\n  max_new_tokens: {native.MAX_NEW_TOKENS}\n"  # the YAML's, as the native scorer's default
        if cap not in text:
            raise ValueError(f"{source} lost its '{cap.strip()}' line under generation_kwargs; put it back")
        text = text.replace(cap, f"\n  max_new_tokens: {max_new}\n  until: []\n")
    (work / source.name).write_text(text)


def lmms_eval_scored(
    model: Any, fmt: Formatter, records: Sequence[Record], batch_size: int, max_new: int | None = None
) -> list[native.Scored]:
    """Score ``records`` through lmms-eval's ``simple_evaluate`` and the harness's scoring rules; open answers
    are decoded for ``max_new`` tokens at most (default: ``native.new_tokens`` of ``records``), as natively."""
    max_new = native.new_tokens(fmt, records) if max_new is None else max_new
    docs = _docs(records)
    work = Path(tempfile.mkdtemp(prefix="harness-lmms-"))
    try:
        (work / "data").mkdir()
        shutil.copy(TASKS_DIR / "utils.py", work / "utils.py")
        for task in KIND_TASK.values():
            _copy_yaml(TASKS_DIR / f"{task}.yaml", work, max_new)
        for kind, rows in docs.items():
            (work / "data" / f"{kind}.json").write_text(json.dumps(rows))
        tasks = [KIND_TASK[k] for k, rows in docs.items() if rows]
        result = evaluator.simple_evaluate(
            model=HarnessLMM(model, fmt, batch_size),
            tasks=tasks,
            task_manager=TaskManager(include_path=str(work), include_defaults=False),
            log_samples=True,
            bootstrap_iters=0,
            process_docs_parallel=1,
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    picks: dict[str, list[int]] = {}
    texts: dict[str, str] = {}
    for kind, task in KIND_TASK.items():
        for sample in result["samples"].get(task, []):
            doc_id = docs[kind][sample["doc_id"]]["id"].rsplit("#", 1)[0]
            resps = sample["filtered_resps"]
            if kind == "open":
                texts[doc_id] = str(resps[0])
            else:
                losses = [float(r[0]) for r in resps]
                picks.setdefault(doc_id, []).append(min(range(len(losses)), key=losses.__getitem__))
    return [native.score_one(r, picks.get(r.id, []), texts.get(r.id, "")) for r in records]
