"""The ``cloze`` protocol: parsing all eight benchmarks, exact cached scoring, and its training template."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from harness.runner import build_specs
from harness.task import Loaded, TaskOptions
from tasks.commonsense import CommonsenseTask, cloze, data
from tasks.lm import cache_kwargs
from tests.conftest import tiny_llama
from tests.test_commonsense_scoring import MODELS


def rec(instruction: str, answer: str) -> dict[str, str]:
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


# One literal LLM-Adapters record per benchmark, and what the cloze protocol must make of it.
CASES = {
    "ARC-Easy": (
        rec(
            "Please choose the correct answer to the question: Which piece of safety equipment is used to keep mold "
            "spores from entering the respiratory system?\n\nAnswer1: safety goggles Answer2: breathing mask "
            "Answer3: rubber gloves Answer4: lead apron\n\nAnswer format: answer1/answer2/answer3/answer4",
            "answer2",
        ),
        "Question: Which piece of safety equipment is used to keep mold spores from entering the respiratory "
        "system?\nAnswer:",
        [" safety goggles", " breathing mask", " rubber gloves", " lead apron"],
        1,
    ),
    "ARC-Challenge": (
        rec(
            "Please choose the correct answer to the question: Which is a renewable resource?\n\nAnswer1: coal "
            "Answer2: oil Answer3: wind Answer4: gas Answer5: uranium\n\nAnswer format: "
            "answer1/answer2/answer3/answer4/answer5",
            "answer3",
        ),
        "Question: Which is a renewable resource?\nAnswer:",
        [" coal", " oil", " wind", " gas", " uranium"],
        2,
    ),
    "openbookqa": (
        rec(
            "Please choose the correct answer to the question: There is most likely going to be fog around:\n\n"
            "Answer1: a marsh Answer2: a tundra Answer3: the plains Answer4: a desert\n\nAnswer format: "
            "answer1/answer2/answer3/answer4",
            "answer1",
        ),
        "Question: There is most likely going to be fog around:\nAnswer:",
        [" a marsh", " a tundra", " the plains", " a desert"],
        0,
    ),
    "social_i_qa": (
        rec(
            "Please choose the correct answer to the question: Sydney felt bad afterwards. How would you describe "
            "Sydney?\n\nAnswer1: sympathetic Answer2: like a person who was unable to help Answer3: incredulous\n\n"
            "Answer format: answer1/answer2/answer3",
            "answer1",
        ),
        "Question: Sydney felt bad afterwards. How would you describe Sydney?\nAnswer:",
        [" sympathetic", " like a person who was unable to help", " incredulous"],
        0,
    ),
    "winogrande": (
        rec(
            "Please choose the correct answer to fill in the blank to complete the given sentence: Sarah was a much "
            "better surgeon than Maria so _ always got the harder cases.\n\nOption1: Sarah Option2: Maria Answer "
            "format: option1/option2",
            "option1",
        ),
        None,  # contexts differ per option
        [" always got the harder cases.", " always got the harder cases."],
        0,
    ),
    "piqa": (
        rec(
            "Please choose the correct solution to the question: dresser\n\nSolution1: replace drawer with bobby "
            "pin \n\nSolution2: finish, woodgrain with  bobby pin \n\nAnswer format: solution1/solution2",
            "solution2",
        ),
        "Question: dresser\nAnswer:",
        [" replace drawer with bobby pin", " finish, woodgrain with  bobby pin"],
        1,
    ),
    "boolq": (
        rec(
            "Please answer the following question with true or false, question: is house tax and property tax are "
            "same?\n\nAnswer format: true/false",
            "true",
        ),
        "Question: is house tax and property tax are same?\nAnswer:",
        [" yes", " no"],
        0,
    ),
    "hellaswag": (
        rec(
            "Please choose the correct ending to complete the given sentence: Removing ice from car: Then, the man "
            "writes over the snow covering the window of a car, and a woman wearing winter clothes smiles. then\n\n"
            "Ending1: , the man adds wax to the windshield and cuts it. Ending2: , a person board a ski lift. "
            "Ending3: , the man puts on a christmas coat. Ending4: , the man continues removing the snow on his car."
            "\n\nAnswer format: ending1/ending2/ending3/ending4",
            "ending4",
        ),
        "Removing ice from car: Then, the man writes over the snow covering the window of a car, and a woman "
        "wearing winter clothes smiles. Then",  # lm-eval capitalises ctx_b (test_hellaswag_is_preprocessed_...)
        [
            " , the man adds wax to the windshield and cuts it.",
            " , a person board a ski lift.",
            " , the man puts on a christmas coat.",
            " , the man continues removing the snow on his car.",
        ],
        3,
    ),
}


@pytest.mark.parametrize("name", list(data.BENCHMARKS))
def test_every_benchmark_parses_into_question_and_option_texts(name):
    record, context, continuations, answer = CASES[name]
    item = cloze.parse(record)
    assert list(item.continuations) == continuations and item.answer == answer
    if context is None:
        assert item.contexts == (
            "Sarah was a much better surgeon than Maria so Sarah",
            "Sarah was a much better surgeon than Maria so Maria",
        )
    else:
        assert set(item.contexts) == {context} and len(item.contexts) == len(continuations)


@pytest.mark.parametrize(
    ("instruction", "message"),
    [
        ("Please choose the correct answer to the question: why?", "Answer format"),
        ("Please choose the correct answer to the question: why?\n\nAnswer format: answer1/answer2", "not found"),
        ("no head here\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2", "head"),
        ("Please fill in the blank: no blank\n\nOption1: a Option2: b Answer format: option1/option2", "'_'"),
    ],
)
def test_records_that_do_not_fit_say_why(instruction, message):
    with pytest.raises(ValueError, match=message):
        cloze.parse(rec(instruction, "answer1" if "answer1" in instruction else "option1"))


# HellaSwag rows as upstream has them (Rowan/hellaswag validation): an ActivityNet one, whose ctx_b is in lower
# case, and a WikiHow one, with its [header]/[title]/[step] markers; the second ending made up to hold a
# [substeps], a " [title]" and a double space
HELLASWAG = [
    {
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter "
        "clothes smiles.",
        "ctx_b": "then",
        "endings": [
            ", the man adds wax to the windshield and cuts it.",
            ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes "
            "snow as the we girls sled.",
            ", the man puts on a christmas coat, knitted with netting.",
            ", the man continues removing the snow on his car.",
        ],
        "label": "3",
    },
    {
        "activity_label": "Travel",
        "ctx_a": "[header] How to become an au pair in spain [title] Consult online databases that list "
        "opportunities for working as an au pair in spain. [step] Alternatively, contract the services of a firm "
        "which will charge a fee in return for finding a position. [title] Ensure that your language skills are "
        "adequate for your potential employers' needs.",
        "ctx_b": "",
        "endings": [
            "[step] Not ensuring fluent skills can be difficult.",
            "[substeps] Be sure  to learn spanish [title] Speak well.",
            "[step] You should be able to converse with them.",
            "[step] Employers will want you to speak the language.",
        ],
        "label": "2",
    },
]


def llm_adapters_record(doc: dict) -> dict[str, str]:
    """The record LLM-Adapters made of a HellaSwag row: its ``ctx`` (ctx_a, then ctx_b as it is), markers kept."""
    ctx = f"{doc['ctx_a']} {doc['ctx_b']}".strip()
    endings = " ".join(f"Ending{i}: {e}" for i, e in enumerate(doc["endings"], 1))
    instruction = (
        f"Please choose the correct ending to complete the given sentence: {doc['activity_label']}: {ctx}\n\n"
        f"{endings}\n\nAnswer format: ending1/ending2/ending3/ending4"
    )
    return rec(instruction, f"ending{int(doc['label']) + 1}")


def test_hellaswag_is_preprocessed_as_lm_eval_does():
    """From a review: lm-eval's hellaswag task takes WikiHow's markers out and capitalises ctx_b; cloze scored the
    records' raw text. Context and endings are now lm-eval's, to the character (its quirks too: "stay.. Ensure",
    and an ending that began with "[step]" keeps the space after it)."""
    first, second = (cloze.parse(llm_adapters_record(doc)) for doc in HELLASWAG)
    assert first.contexts[0].endswith("winter clothes smiles. Then") and first.answer == 3
    assert first.continuations[3] == " , the man continues removing the snow on his car."
    assert second.contexts[0] == (
        "Travel: How to become an au pair in spain. Consult online databases that list opportunities for working as "
        "an au pair in spain. Alternatively, contract the services of a firm which will charge a fee in return for "
        "finding a position.. Ensure that your language skills are adequate for your potential employers' needs."
    )
    assert second.continuations[:2] == (
        "  Not ensuring fluent skills can be difficult.",
        "  Be sure to learn spanish. Speak well.",
    )
    try:
        import datasets
        from lm_eval.tasks.hellaswag.utils import process_docs
    except ImportError:
        return  # lm-eval is an extra: the literal strings above were taken from it (0.4.13)
    for item, doc in zip((first, second), process_docs(datasets.Dataset.from_list(HELLASWAG)), strict=True):
        assert set(item.contexts) == {doc["query"]}
        assert list(item.continuations) == [" " + c for c in doc["choices"]]  # lm-eval's target_delimiter " "
        assert item.answer == doc["gold"]


@pytest.mark.parametrize(
    ("words", "answer", "message"),
    [
        ("A/B/C/D", "A", "not letters naming options"),  # what are the options' texts? cloze cannot tell
        ("a/b", "a", "not letters naming options"),
        ("answerA/answerB", "answerA", "not letters naming options"),
        ("solutionA/solutionB", "solutionB", "not letters naming options"),  # from a review: any prefix
        ("endingA/endingB/endingC", "endingC", "not letters naming options"),
        ("true", "true", "one option"),
        ("answer1", "answer1", "one option"),
        ("true/false/", "true", "empty or repeated option"),  # from a review: IndexError on the empty word
        ("true//false", "true", "empty or repeated option"),
        ("yes/no/yes", "no", "empty or repeated option"),
    ],
)
def test_cloze_takes_numbered_options_or_true_false_and_two_at_least(words, answer, message):
    """From a review: any label words without a digit were taken for true/false, their words scored as options."""
    with pytest.raises(ValueError, match=message):
        cloze.parse(rec(f"Please answer the question: Answer1: x Is it?\n\nAnswer format: {words}", answer))
    item = cloze.parse(rec("Please answer the question: is it?\n\nAnswer format: yes/no", "no"))
    assert item.continuations == (" yes", " no") and item.answer == 1
    # from a review: words that share all but their last letter are words, not letters naming options
    item = cloze.parse(rec("Please answer the question: whose is it?\n\nAnswer format: him/his", "his"))
    assert item.continuations == (" him", " his") and item.answer == 1
    # (a review of that fix) words that are the answers themselves, in any case, are scored as they were
    item = cloze.parse(rec("Please answer the question: is it?\n\nAnswer format: True/False", "False"))
    assert item.continuations == (" True", " False") and item.answer == 1
    item = cloze.parse(rec("Please answer the question: is it?\n\nAnswer format: yes/no/maybe", "maybe"))
    assert item.continuations == (" yes", " no", " maybe") and item.answer == 2


@pytest.mark.parametrize("template", ["cloze", "clean"])
def test_an_answer_format_with_an_empty_word_is_refused_naming_the_example(tmp_path, template):
    """From a review: under cloze a trailing '/' raised IndexError (a traceback); under choice the empty word
    was a third option, scored."""
    (tmp_path / "mine").mkdir()
    good = rec("Please answer the question: is it?\n\nAnswer format: true/false", "true")
    bad = rec("Please answer the question: is it?\n\nAnswer format: true/false/", "false")
    (tmp_path / "mine" / "test.json").write_text(json.dumps([good, bad]))
    with pytest.raises(ValueError, match=r"mine/test.json: example 1.*empty or repeated option") as refused:
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template=template))
    assert "--protocol choice" not in str(refused.value)  # (a re-review) choice refuses it too: not suggested


def test_a_training_example_that_does_not_fit_cloze_is_named_by_its_passage_too(tmp_path):
    """From a re-review: a training example was named by its instruction's start alone; with one instruction and
    the passage in ``input`` every example of the file had the same name."""
    (tmp_path / "rc").mkdir()
    instruction = (
        "Please answer the following question: does the passage support the claim\n\nAnswer format: true/false"
    )
    test = [{**rec(instruction, "true"), "input": "test passage"}]
    train = [{**rec(instruction, "true"), "input": f"passage {i}"} for i in range(6)]
    train[3]["answer"] = "maybe"
    (tmp_path / "rc" / "test.json").write_text(json.dumps(test))
    (tmp_path / "rc" / "train.json").write_text(json.dumps(train))
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="cloze", val_size=1))
    with pytest.raises(
        ValueError,
        match=r"rc/train\.json: the example 'Please answer.*' \(input 'passage 3'\): answer 'maybe' is not one",
    ):
        task.splits()


def test_a_records_passage_goes_before_its_context_as_lm_eval_puts_boolqs():
    """From a review: cloze dropped a record's ``input`` when training and when scoring; lm-eval's boolq reads
    "{passage}\nQuestion: {q}?\nAnswer:". Every LLM-Adapters record's input is empty (unchanged)."""
    record = rec("Please answer the following question: is the sky green\n\nAnswer format: true/false", "false")
    assert cloze.parse(record).contexts[0] == "Question: is the sky green?\nAnswer:"
    item = cloze.parse({**record, "input": " The sky is green today. "})
    assert item.contexts == ("The sky is green today.\nQuestion: is the sky green?\nAnswer:",) * 2
    assert item.continuations == (" yes", " no") and item.answer == 1
    winogrande = rec(
        "Please choose the correct answer to fill in the blank to complete the given sentence: Ian got _ a cat."
        "\n\nOption1: him Option2: her Answer format: option1/option2",
        "option1",
    )
    assert cloze.parse({**winogrande, "input": "P."}).contexts == ("P.\nIan got him", "P.\nIan got her")


def test_a_further_benchmark_with_other_label_words_is_refused_under_cloze_naming_choice(tmp_path):
    (tmp_path / "mine").mkdir()
    record = rec("Please answer the question: Is red a colour? A: yes B: no\n\nAnswer format: A/B", "A")
    (tmp_path / "mine" / "test.json").write_text(json.dumps([record]))
    with pytest.raises(ValueError, match=r"mine/test.json: example 0 does not fit .*use --protocol choice"):
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="cloze"))


def test_all_real_test_and_train_records_parse(data_dir):
    counts = {}
    for benchmark in data.benchmark_names(data_dir):
        for split in ("test", "train"):
            found = data.read_split(data_dir, benchmark, split)
            if found is not None:
                counts[f"{benchmark}/{split}"] = len([cloze.parse(r) for r in found.records])
    assert counts["ARC-Easy/test"] == 2376 and counts["winogrande/test"] == 1267 and counts["boolq/train"] == 9427


def naive(model, tokenizer, context: str, continuation: str) -> float:
    """One unpadded sequence, every continuation token scored from the full forward pass."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = tokenizer(context + continuation, add_special_tokens=False)["input_ids"][len(ctx) :]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
    return sum(logprobs[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


GROUPS = [
    ("Question: why is the sky blue?\nAnswer:", [" light scatters", " no", " because of the ocean below us"]),
    ("Hi", [" there", " x"]),
    ("A longer context, with commas, here", [" b"]),
]


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_cached_context_scoring_is_exact_at_every_batch_size(char_tokenizer, batch_size, arch):
    model = MODELS[arch]()  # GPT-2's absolute positions show a left-padded context read at shifted positions
    got = cloze.loglikelihoods(model, char_tokenizer, GROUPS, batch_size)
    for (context, conts), scores in zip(GROUPS, got, strict=True):
        for cont, score in zip(conts, scores, strict=True):
            assert abs(score - naive(model, char_tokenizer, context, cont)) < 1e-4


def test_an_empty_context_is_an_error_not_a_score_from_padding(char_tokenizer):
    with pytest.raises(ValueError, match=r"empty context .*\[' there'\]"):
        cloze.loglikelihoods(tiny_llama(), char_tokenizer, [GROUPS[0], ("", [" there"])], 2)


def test_the_kv_cache_goes_under_the_name_the_model_takes(char_tokenizer):
    """transformers 5.24 renames ``past_key_values`` to ``cache`` (the old name goes in 5.40)."""

    class Old:
        def forward(self, input_ids, past_key_values=None): ...

    class New:
        def forward(self, input_ids, cache=None): ...

    assert cache_kwargs(Old(), "kv") == {"past_key_values": "kv"} and cache_kwargs(New(), "kv") == {"cache": "kv"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cloze.loglikelihoods(tiny_llama(), char_tokenizer, GROUPS, 2)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_acc_takes_the_best_sum_and_acc_norm_the_best_per_character(char_tokenizer):
    model = tiny_llama()
    items = [cloze.parse(CASES[b][0]) for b in ("ARC-Easy", "winogrande", "piqa", "boolq")]
    acc, norm, scores = cloze.cloze_predictions(model, char_tokenizer, items, batch_size=3)
    for item, a, n, s in zip(items, acc, norm, scores, strict=True):
        expected = [naive(model, char_tokenizer, c, t) for c, t in zip(item.contexts, item.continuations, strict=True)]
        torch.testing.assert_close(torch.tensor(s), torch.tensor(expected), atol=1e-4, rtol=0)
        assert a == max(range(len(s)), key=s.__getitem__)
        assert n == max(range(len(s)), key=lambda i, s=s, it=item: s[i] / len(it.continuations[i]))


def test_training_example_is_the_scored_pair_of_the_correct_option(data_dir):
    task = CommonsenseTask(TaskOptions(data_dir=str(data_dir), train_cap=3, val_size=2, template="cloze"))
    train, _ = task.splits()
    records, _ = data.training_mix(task.data_dir, 3, 0)
    for example, record in zip(train, records[2:], strict=True):
        item = cloze.parse(record)
        assert (example.prompt, example.target) == (item.contexts[item.answer], item.continuations[item.answer])


def test_the_eval_record_holds_per_example_strings(tmp_path, data_dir, char_tokenizer):
    task = CommonsenseTask(TaskOptions(data_dir=str(data_dir), eval_limit=5, template="cloze"))
    results = task.evaluate(
        Loaded(tiny_llama(), None, "tiny", char_tokenizer), "cloze", 4, tmp_path / "p.jsonl", progress=False
    )
    arc = results["ARC-Easy"]
    assert arc["metric"] == "acc" and results["ARC-Challenge"]["metric"] == "acc_norm"
    assert (
        len(arc["answers"]) == len(arc["preds"]["acc"]) == len(arc["preds"]["acc_norm"]) == len(arc["n_options"]) == 5
    )
    assert arc["value"] == 100.0 * sum(p == a for p, a in zip(arc["preds"]["acc"], arc["answers"], strict=True)) / 5
    first = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert first["answer"] == int(arc["answers"][0]) and first["pred"] == int(arc["preds"]["acc"][0])
    # ARC-Challenge's headline is acc_norm: its value and each line's pred are acc_norm's (a review: headline
    # "acc" for every benchmark passed, as only ARC-Easy was checked); the two metrics differ on these rows
    challenge = results["ARC-Challenge"]
    norm, plain = challenge["preds"]["acc_norm"], challenge["preds"]["acc"]
    assert norm != plain
    hits = sum(p == a for p, a in zip(norm, challenge["answers"], strict=True))
    assert challenge["value"] == 100.0 * hits / challenge["n"] == challenge["metrics"]["acc_norm"]
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    mine = [line for line in lines if line["benchmark"] == "ARC-Challenge"]
    assert [line["pred"] for line in mine] == [int(c) for c in norm]
    assert results["hellaswag"] == {"status": "absent"}


def test_the_headline_is_acc_norm_for_arc_challenge_obqa_piqa_and_hellaswag_only(tmp_path, char_tokenizer):
    """README: the headline is ``acc_norm`` for ARC-Challenge, OBQA, PIQA and HellaSwag and ``acc`` for the others,
    as lm-eval reports them. From a mutation review: only ARC-Challenge's and ARC-Easy's were checked, so a headline
    set of ARC-Challenge alone passed. Each of the eight gets one record, scored through the task."""
    for benchmark in data.BENCHMARKS:
        (tmp_path / benchmark).mkdir()
        (tmp_path / benchmark / "test.json").write_text(json.dumps([CASES[benchmark][0]]))
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="cloze"))
    results = task.evaluate(Loaded(tiny_llama(), None, "tiny", char_tokenizer), "cloze", 4, None, progress=False)
    assert list(results) == list(data.BENCHMARKS)
    headline = {benchmark: result["metric"] for benchmark, result in results.items()}
    norm = {"ARC-Challenge", "openbookqa", "piqa", "hellaswag"}
    assert headline == {b: "acc_norm" if b in norm else "acc" for b in data.BENCHMARKS}
    assert all(result["value"] == result["metrics"][result["metric"]] for result in results.values())


def test_a_tie_goes_to_the_first_option_as_lm_evals_argmax_takes_it(char_tokenizer):
    """lm-eval picks with ``np.argmax``, which takes the first of equal scores. From a mutation review: a tie going to
    the last option passed every test. Identical continuations score exactly the same under acc and acc_norm; in the
    second item the tied pair beats a longer first option under both (the first of the tied, not option 0)."""
    context = "Question: which?\nAnswer:"
    items = [
        cloze.ClozeItem((context,) * 2, (" yes", " yes"), 1),
        cloze.ClozeItem((context,) * 3, (" a much longer option", " yes", " yes"), 2),
    ]
    acc, norm, scores = cloze.cloze_predictions(tiny_llama(), char_tokenizer, items, batch_size=3)
    assert scores[0][0] == scores[0][1] and scores[1][1] == scores[1][2]  # the ties are exact
    per_char = [np.array(s) / [len(c) for c in it.continuations] for s, it in zip(scores, items, strict=True)]
    assert [int(np.argmax(s)) for s in scores] == [int(np.argmax(s)) for s in per_char] == [0, 1]  # lm-eval's picks
    assert acc == norm == [0, 1]


def test_protocol_and_template_must_fit_and_default_to_each_other():
    [spec] = build_specs("commonsense", ["lora"], [0], "embedded")
    assert (spec.protocol, spec.task_options.template) == ("cloze", "cloze")
    [choice] = build_specs("commonsense", ["lora"], [0], "embedded", protocol="choice")
    assert choice.task_options.template == "clean"  # the protocol's own template when none is named
    with pytest.raises(ValueError, match="--protocol cloze --template cloze"):
        build_specs("commonsense", ["lora"], [0], "embedded", protocol="choice", task_overrides={"template": "cloze"})


def test_a_training_record_that_does_not_fit_cloze_is_named_by_its_file_and_question(tmp_path):
    """The training mix is shuffled: the message names the file the record came from and its question."""
    good, asked = CASES["ARC-Easy"][0], CASES["ARC-Challenge"][0]  # a test question is left out of training
    (tmp_path / "ARC-Easy").mkdir()
    (tmp_path / "ARC-Easy" / "test.json").write_text(json.dumps([asked]))
    bad = rec("What is 2+2? Say it.", "four")
    (tmp_path / "ARC-Easy" / "train.json").write_text(json.dumps([good, good, bad, good]))
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="cloze", val_size=1))
    where = r"ARC-Easy/train\.json: the example 'What is 2\+2\? Say it\.' does not fit the cloze protocol"
    with pytest.raises(ValueError, match=where + r" .*--protocol choice"):
        task.splits()


def test_a_record_that_does_not_fit_cloze_fails_before_training(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "test.json").write_text(json.dumps([rec("What is 2+2? Say it.", "four")]))
    with pytest.raises(ValueError, match=r"mine/test.json: example 0 does not fit the cloze protocol .*--protocol"):
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="cloze"))


def test_a_cloze_runs_record_names_cloze_as_its_template(data_dir):
    """From a review: cloze records said template "clean", which neither their training nor scoring used."""
    from harness.registry import TASKS
    from harness.task import TaskOptions

    assert (
        TASKS.get("commonsense")(TaskOptions(data_dir=str(data_dir), template="cloze")).describe()["template"]
        == "cloze"
    )
    assert TASKS.get("commonsense")(TaskOptions(data_dir=str(data_dir))).describe()["template"] == "clean"


@pytest.mark.parametrize("template", ["cloze", "clean"])
def test_an_answer_not_among_its_format_words_is_a_data_error_in_every_protocol(tmp_path, template):
    """From a review: under cloze an answer not among its format's words ("Answer1" against answer1/answer2) was
    refused with "use --protocol choice", which refuses the same data ("not one of its options")."""
    (tmp_path / "mine").mkdir()
    bad = rec("Please choose the correct answer: Answer1: x Answer2: y\n\nAnswer format: answer1/answer2", "Answer1")
    (tmp_path / "mine" / "test.json").write_text(json.dumps([bad]))
    with pytest.raises(ValueError, match=r"mine/test.json: example 0") as refused:
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template=template))
    assert "--protocol choice" not in str(refused.value)


def test_a_training_answer_not_among_its_format_words_is_refused_under_cloze_advising_choice_which_trains_it(
    tmp_path,
):
    """From a review: a training example whose answer is not among its format's words was refused under cloze without
    the advice that --protocol choice, which trains on its output and checks only that it ends with the answer, would
    train it; a test example's (every protocol refuses it) and one whose output does not end with it keep no advice."""

    def question(name: str, answer: str) -> dict[str, str]:
        return rec(f"Please answer the question: is it {name}?\n\nAnswer format: true/false", answer)

    (tmp_path / "rc").mkdir()
    (tmp_path / "rc" / "test.json").write_text(json.dumps([question("tested", "true")]))
    train = [question(str(i), "true") for i in range(5)]
    train[2] = question("2", "maybe")  # its output ends with its answer: choice trains it
    (tmp_path / "rc" / "train.json").write_text(json.dumps(train))
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="cloze", val_size=1))
    with pytest.raises(ValueError, match=r"rc/train\.json: the example .*answer 'maybe' is not one") as refused:
        task.splits()
    assert str(refused.value).endswith(
        "give one of them, or use --protocol choice, which trains on its output (that ends with its answer) without "
        "reading its answer format"
    ), refused.value
    choice = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean", val_size=1))
    trained, held = choice.splits()  # the advice is true: choice trains it
    assert [e.target for e in trained + held].count("the correct answer is maybe") == 1
    train[2]["output"] = "the correct answer is true"  # choice refuses it too (its output is not its answer)
    (tmp_path / "rc" / "train.json").write_text(json.dumps(train))
    with pytest.raises(ValueError, match="answer 'maybe' is not one") as refused:
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="cloze", val_size=1)).splits()
    assert "--protocol choice" not in str(refused.value)
    with pytest.raises(ValueError, match="does not end with its answer 'maybe'"):
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean", val_size=1))


def test_a_one_option_format_is_a_data_error_in_every_protocol_said_once(tmp_path):
    """From a re-review: a one-option 'Answer format: true' was still told to use --protocol choice (which refuses
    it too); and a format error read under choice said "(Answer format: a/b/...)" twice."""
    (tmp_path / "mine").mkdir()
    one = rec("Please answer the question: is it?\n\nAnswer format: true", "true")
    (tmp_path / "mine" / "test.json").write_text(json.dumps([one]))
    with pytest.raises(ValueError, match="names one option") as refused:
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="cloze"))
    assert "--protocol choice" not in str(refused.value)
    repeated = rec("Please answer the question: is it?\n\nAnswer format: true/false/true", "true")
    (tmp_path / "mine" / "test.json").write_text(json.dumps([repeated]))
    with pytest.raises(ValueError, match="empty or repeated option") as refused:
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean"))
    assert str(refused.value).count("(Answer format: a/b/...)") == 1
