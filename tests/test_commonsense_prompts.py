"""Prompt bytes, label extraction and the question's own candidates, on literal examples."""

from __future__ import annotations

import pytest

from tasks.commonsense import candidates_for
from tasks.commonsense.prompts import extract_label, get_template

INSTRUCTION = (
    "Please answer the following question with true or false, question: is the sky blue?\n\nAnswer format: true/false"
)


def test_llm_adapters_training_prompt_is_byte_exact():
    # finetune.py's generate_prompt: indented f-string, a noqa comment inside the string, 16-space blank line
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "  # noqa: E501\n"
        "\n"
        "                ### Instruction:\n"
        f"                {INSTRUCTION}\n"
        "                \n"
        "                ### Response:\n"
        "                "
    )
    assert get_template("llm-adapters").train_prompt(INSTRUCTION) == expected


def test_llm_adapters_evaluation_prompt_is_byte_exact():
    # commonsense_evaluate.py's generate_prompt: one trailing space after "request.", empty blank line
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n"
        "\n"
        "                ### Instruction:\n"
        f"                {INSTRUCTION}\n"
        "\n"
        "                ### Response:\n"
        "                "
    )
    assert get_template("llm-adapters").eval_prompt(INSTRUCTION) == expected


def test_llm_adapters_prompts_with_input():
    t = get_template("llm-adapters")
    assert t.train_prompt("Q", "ctx").startswith("Below is an instruction that describes a task, paired with an input")
    assert "                ### Input:\n                ctx\n                \n" in t.train_prompt("Q", "ctx")
    assert "\n\n                ### Input:\n                ctx\n\n                ### Response:\n" in t.eval_prompt(
        "Q", "ctx"
    )


def test_clean_prompt_is_the_same_for_training_and_evaluation():
    t = get_template("clean")
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nQ\n\n### Response:\n"
    )
    assert t.train_prompt("Q") == t.eval_prompt("Q") == expected


def test_label_extraction_takes_the_first_label_word():
    labels = ["answer1", "answer2", "answer3", "answer4", "answer5"]
    assert extract_label("the correct answer is answer3", labels) == "answer3"
    assert extract_label("  answer2, not answer1", labels) == "answer2"
    assert extract_label("the correct answer is answer 3", labels) == ""
    assert extract_label("The Correct Answer Is True", ["true", "false"]) == ""  # case-sensitive, as LLM-Adapters
    assert extract_label("false. true.", ["true", "false"]) == "false"
    assert extract_label("solution2", ["solution1", "solution2"]) == "solution2"
    # whole words (a benchmark of yours): from a review, "c" was found in "correct" and "A" in "Answer"
    assert extract_label("the correct answer is d", list("abcd")) == "c"  # as LLM-Adapters reads it
    assert extract_label("the correct answer is d", list("abcd"), whole_words=True) == "d"
    assert extract_label("Answer: B.", list("ABCD"), whole_words=True) == "B"
    assert extract_label("answer10", ["answer1", "answer10"], whole_words=True) == "answer10"
    assert extract_label("answer10", ["answer1"], whole_words=True) == ""


def test_candidates_come_from_the_answer_format_line():
    record = {
        "instruction": "Q?\n\nAnswer1: a Answer2: b Answer3: c\n\nAnswer format: answer1/answer2/answer3",
        "answer": "answer2",
    }
    assert candidates_for(record, [f"answer{i}" for i in range(1, 6)]) == ["answer1", "answer2", "answer3"]
    assert candidates_for({"instruction": "no format line", "answer": "true"}, ["true", "false"]) == ["true", "false"]
    # an answer its question does not offer is not scored over the benchmark's five labels (it is refused)
    assert candidates_for({**record, "answer": "answer5"}, [f"answer{i}" for i in range(1, 6)]) == [
        "answer1",
        "answer2",
        "answer3",
    ]


@pytest.mark.parametrize("name", ["clean", "llm-adapters"])
def test_a_records_input_reaches_the_training_and_evaluation_prompts(name):
    """From a mutation test: only the llm-adapters template was tested with an input; the clean one dropping its
    Input section passed."""
    template = get_template(name)
    for prompt in (
        template.train_prompt("Pick one.", "PASSAGE TEXT"),
        template.eval_prompt("Pick one.", "PASSAGE TEXT"),
    ):
        assert "PASSAGE TEXT" in prompt and "### Input:" in prompt


def test_a_whole_word_label_is_not_read_from_the_end_of_another_word():
    """From a mutation test: the whole-word match without its look-behind read the "c" that ends "basic"."""
    assert extract_label("it is basic, so b", ["a", "b", "c", "d"], whole_words=True) == "b"
    assert extract_label("the answer is noyes no", ["yes", "no"], whole_words=True) == "no"
