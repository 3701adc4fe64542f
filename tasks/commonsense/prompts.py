"""Prompt templates and label extraction for the commonsense suite.

``llm-adapters`` reproduces LLM-Adapters byte for byte: its ``finetune.py`` builds the training text
from an indented triple-quoted f-string (so lines carry 16 leading spaces, and the first line even
contains the literal text ``  # noqa: E501``), and ``commonsense_evaluate.py`` builds a slightly
different evaluation prompt. ``clean`` is the same Alpaca template without those artefacts, identical
for training and evaluation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PAD = " " * 16
_HEAD = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
_HEAD_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
ANSWER_PREFIX = "the correct answer is"


@dataclass(frozen=True)
class Template:
    name: str

    def train_prompt(self, instruction: str, input: str = "") -> str:
        """The text before the target during training (LLM-Adapters ``generate_prompt`` minus the output)."""
        if self.name == "llm-adapters":
            if input:
                return (
                    f"{_HEAD_INPUT}  # noqa: E501\n\n{_PAD}### Instruction:\n{_PAD}{instruction}\n{_PAD}\n"
                    f"{_PAD}### Input:\n{_PAD}{input}\n{_PAD}\n{_PAD}### Response:\n{_PAD}"
                )
            return f"{_HEAD}  # noqa: E501\n\n{_PAD}### Instruction:\n{_PAD}{instruction}\n{_PAD}\n{_PAD}### Response:\n{_PAD}"
        return self.eval_prompt(instruction, input)

    def eval_prompt(self, instruction: str, input: str = "") -> str:
        """The prompt scored at test time (LLM-Adapters ``commonsense_evaluate.py``)."""
        if self.name == "llm-adapters":
            if input:
                return (
                    f"{_HEAD_INPUT}\n\n{_PAD}### Instruction:\n{_PAD}{instruction}\n\n{_PAD}### Input:\n"
                    f"{_PAD}{input}\n\n{_PAD}### Response:\n{_PAD}"
                )
            return f"{_HEAD} \n\n{_PAD}### Instruction:\n{_PAD}{instruction}\n\n{_PAD}### Response:\n{_PAD}"
        if input:
            return f"{_HEAD_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        return f"{_HEAD}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


TEMPLATES = ("clean", "llm-adapters", "cloze")  # cloze: tasks/commonsense/cloze.py builds the text


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; choose one of: {', '.join(TEMPLATES)}")
    return Template(name)


def extract_label(text: str, labels: list[str], whole_words: bool = False) -> str:
    """The first of ``labels`` found in ``text`` ("" if none): anywhere in it, as LLM-Adapters' ``extract_answer``
    (``answer1`` in ``answer10`` too), or with ``whole_words`` only where no letter or digit touches it (the
    ``d`` of "the answer is d", not the ``c`` of "correct"; the ``B`` of "Answer: B.", not the ``A`` of "Answer")."""
    pattern = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    if whole_words:
        pattern = rf"(?<!\w)(?:{pattern})(?!\w)"
    match = re.search(pattern, text.strip())
    return match.group(0) if match else ""
