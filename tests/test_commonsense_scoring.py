"""Scoring protocols: exact log-likelihoods, and batched results equal to batch-size-1 results."""

from __future__ import annotations

import pytest
import torch

from tasks.commonsense.prompts import ANSWER_PREFIX
from tasks.commonsense.scoring import choice_scores, generate
from tests.conftest import tiny_llama


def tiny_gpt2(seed: int = 0):
    """A tiny GPT-2: learned absolute positions, so a left-padded row without explicit position ids reads shifted
    positions and scores differently. The tiny Llama cannot show that: its rotary scores depend on the distance
    between positions only, which a shift keeps."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=128, n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=1)
    return GPT2LMHeadModel(config).eval()


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
PROMPTS = ["Q: is fire hot?\nA: ", "Q: which is a fruit? answer1 apple answer2 rock\nA: ", "Q: 2+2?\nA: ", "Hi "]
CANDIDATES = [["true", "false"], ["answer1", "answer2"], ["answer1", "answer2", "answer3"], ["option1", "option2"]]


def naive_score(model, tokenizer, prompt: str, candidate: str) -> float:
    """Unbatched, unpadded, every token of the continuation scored from the full sequence."""
    ctx = tokenizer(prompt + ANSWER_PREFIX)["input_ids"]
    cont = tokenizer(" " + candidate)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logprobs[len(ctx) - 1 + i, tok].item() for i, tok in enumerate(cont))


def test_choice_scores_are_exact_log_likelihoods(char_tokenizer):
    model = tiny_llama()
    scores = choice_scores(model, char_tokenizer, PROMPTS, CANDIDATES, batch_size=3)
    for prompt, cands, row in zip(PROMPTS, CANDIDATES, scores, strict=True):
        for cand, score in zip(cands, row, strict=True):
            assert abs(score - naive_score(model, char_tokenizer, prompt, cand)) < 1e-4


@pytest.mark.parametrize("arch", list(MODELS))
def test_choice_batched_equals_batch_size_one(char_tokenizer, arch):
    model = MODELS[arch]()
    one = choice_scores(model, char_tokenizer, PROMPTS, CANDIDATES, batch_size=1)
    many = choice_scores(model, char_tokenizer, PROMPTS, CANDIDATES, batch_size=8)
    for a, b in zip(one, many, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)
        assert max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)


@pytest.mark.parametrize("arch", list(MODELS))
def test_generate_batched_equals_batch_size_one(char_tokenizer, arch):
    model = MODELS[arch]()
    prompts = ["a", "Q: long prompt here?", "xyz xyz", "Q: is fire hot?\nA: the correct answer is"]
    one = generate(model, char_tokenizer, prompts, batch_size=1, num_beams=2, max_new_tokens=6)
    many = generate(model, char_tokenizer, prompts, batch_size=4, num_beams=2, max_new_tokens=6)
    assert one == many
    assert all(isinstance(o, str) and o for o in one)


def test_generate_reads_answer1_to_answer5_on_every_answer_style_benchmark(tmp_path, monkeypatch, char_tokenizer):
    """LLM-Adapters' extract_answer: the first of answer1..answer5, SIQA (three options) included; a reply that
    names answer4 first on a three-option question is wrong, not read on to the answer2 after it."""
    import json

    import tasks.commonsense as commonsense
    from harness.task import Loaded, TaskOptions

    record = {
        "instruction": "Please choose the correct answer to the question: Why?\\n\\nAnswer1: a Answer2: b "
        "Answer3: c\\n\\nAnswer format: answer1/answer2/answer3",
        "input": "",
        "output": "the correct answer is answer2",
        "answer": "answer2",
    }
    (tmp_path / "social_i_qa").mkdir()
    (tmp_path / "social_i_qa" / "test.json").write_text(json.dumps([record, record]))
    replies = ["the correct answer is answer4. answer2", "answer2"]
    monkeypatch.setattr(commonsense, "generate", lambda model, tokenizer, prompts, *a, **k: replies[: len(prompts)])
    task = commonsense.CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean"))
    entry = task.evaluate(Loaded(tiny_llama(), None, "tiny", char_tokenizer), "generate", 2, None, progress=False)
    assert entry["social_i_qa"]["value"] == 50.0  # the first reply picks answer4, which the question lacks


@pytest.mark.parametrize(
    ("labels", "replies", "value"),
    [
        # from a review: "answerA" took the answer1..answer5 rule of the paper's benchmarks (every reply "-")
        ("answerA/answerB/answerC/answerD", ["the correct answer is answerB", "the correct answer is answerD"], 100.0),
        # "c" was read from "correct", and "c", an option no answer names, was not looked for at all
        ("a/b/c/d", ["the correct answer is b", "the correct answer is d"], 100.0),
        ("A/B/C/D", ["Answer: B.", "D"], 100.0),  # not the "A" of "Answer"
        ("a/b/c/d", ["the correct answer is c", "the correct answer is e"], 0.0),
    ],
)
def test_generate_reads_a_benchmark_of_yours_by_its_questions_own_options_as_whole_words(
    tmp_path, monkeypatch, char_tokenizer, labels, replies, value
):
    import json

    import tasks.commonsense as commonsense
    from harness.task import Loaded, TaskOptions

    options = labels.split("/")
    records = [
        {
            "instruction": f"Please choose the correct answer to the question: Why?\n\nAnswer format: {labels}",
            "input": "",
            "output": f"the correct answer is {answer}",
            "answer": answer,
        }
        for answer in (options[1], options[3])
    ]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "test.json").write_text(json.dumps(records))
    monkeypatch.setattr(commonsense, "generate", lambda model, tokenizer, prompts, *a, **k: replies[: len(prompts)])
    task = commonsense.CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean"))
    entry = task.evaluate(Loaded(tiny_llama(), None, "tiny", char_tokenizer), "generate", 2, None, progress=False)
    assert entry["mine"]["value"] == value, entry["mine"]["preds"]


@pytest.mark.parametrize("folder", ["boolq", "mybool"])
def test_generate_reads_your_own_options_in_a_folder_named_like_one_of_the_papers(
    tmp_path, monkeypatch, char_tokenizer, folder
):
    """From a review: a folder named like one of the paper's eight (boolq/) was read under ``generate`` for that
    benchmark's label words (true/false) whatever its questions' options were, so yes/no questions answered right
    every time scored 0% there and 100% in any other folder. The paper's words serve only questions whose options
    are among them; a paper-style boolq question in the same folder is still read as LLM-Adapters reads it."""
    import json

    import tasks.commonsense as commonsense
    from harness.task import Loaded, TaskOptions

    def record(i, words):
        answer = words[i % 2]
        return {
            "instruction": f"Please answer the question: is {i} even?\n\nAnswer format: {'/'.join(words)}",
            "input": "",
            "output": f"the correct answer is {answer}",
            "answer": answer,
        }

    records = [record(i, ["yes", "no"]) for i in range(4)] + [record(i, ["true", "false"]) for i in range(2)]
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "test.json").write_text(json.dumps(records))
    replies = [f"the correct answer is {r['answer']}" for r in records]
    replies[-1] = "the correct answer is falsehood"  # false by the paper's substring rule, no word of yours
    monkeypatch.setattr(commonsense, "generate", lambda model, tokenizer, prompts, *a, **k: replies[: len(prompts)])
    task = commonsense.CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean"))
    entry = task.evaluate(Loaded(tiny_llama(), None, "tiny", char_tokenizer), "generate", 2, None, progress=False)
    # yes/no read right in either folder; "falsehood" is false by upstream's substring rule in boolq/ only
    assert entry[folder]["preds"]["acc"] == ("010101" if folder == "boolq" else "01010-"), entry[folder]["preds"]


@pytest.mark.parametrize("template", ["clean", "cloze"])
def test_a_question_with_more_options_than_a_record_keeps_is_refused_before_training(tmp_path, template):
    """From a review: ten options passed every check and failed in scoring, after training."""
    import json

    import tasks.commonsense as commonsense
    from harness.task import TaskOptions

    words = "/".join(f"answer{i}" for i in range(1, 11))
    body = " ".join(f"Answer{i}: o{i}" for i in range(1, 11))
    record = {
        "instruction": f"Please choose the correct answer to the question: Why?\n\n{body}\n\nAnswer format: {words}",
        "input": "",
        "output": "the correct answer is answer2",
        "answer": "answer2",
    }
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "test.json").write_text(json.dumps([record]))
    with pytest.raises(ValueError, match=r"example 0 has 10 options; a question may have at most 9"):
        commonsense.CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template=template))


def test_more_answers_than_a_record_keeps_without_an_answer_format_line_says_to_add_one(tmp_path):
    import json

    import tasks.commonsense as commonsense
    from harness.task import TaskOptions

    records = [
        {"instruction": f"Please answer: {i}?", "input": "", "output": f"the correct answer is w{i}", "answer": f"w{i}"}
        for i in range(10)
    ]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "test.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"example 0 has no 'Answer format:' line, so the file's 10 distinct answers"):
        commonsense.CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean"))


def test_a_benchmark_folder_added_after_the_task_is_made_is_not_scored(tmp_path, char_tokenizer):
    """From a review: evaluate() listed the data folder again at scoring time and looked each folder up among the
    test files read when the task was made (a sweep makes its tasks before its first run), so a benchmark folder
    added meanwhile failed every later run, after its training, with a KeyError. It scores what it read."""
    import json

    import tasks.commonsense as commonsense
    from harness.task import Loaded, TaskOptions

    def records(numbers):
        return [
            {"instruction": f"Is {i} even?\n\nAnswer format: yes/no", "input": ""}
            | {"output": f"the correct answer is {'no' if i % 2 else 'yes'}", "answer": "no" if i % 2 else "yes"}
            for i in numbers
        ]

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "test.json").write_text(json.dumps(records(range(4))))
    task = commonsense.CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean", eval_limit=2))
    (tmp_path / "later").mkdir()  # while the sweep's first runs train
    (tmp_path / "later" / "test.json").write_text(json.dumps(records(range(4, 8))))
    results = task.evaluate(Loaded(tiny_llama(), None, "tiny", char_tokenizer), "choice", 2, None, progress=False)
    assert list(results) == [*commonsense.data.BENCHMARKS, "mine"] and results["mine"]["n"] == 2
