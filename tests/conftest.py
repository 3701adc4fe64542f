"""Tiny seeded models and the method table every parametrised test runs over."""

from __future__ import annotations

import os

# datasets sends a HEAD request to count a load (3 s timeout, errors ignored) where lm-eval and lmms-eval load the
# harness's local files: read once, at its import, so set before any test imports it (from a flakiness review)
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from harness import METHODS, AdapterConfig, AdapterLinear

# a method from outside the repo gets every test that runs over the registered methods: HARNESS_TEST_PLUGINS=my_lora.py
# python3 -m pytest -q -k my_lora (files as --plugin takes them, several joined by the path separator, ":")
for _plugin in filter(None, os.environ.get("HARNESS_TEST_PLUGINS", "").split(os.pathsep)):
    from harness.registry import load_plugin

    try:
        load_plugin(_plugin)
    except ValueError as _exc:
        raise pytest.UsageError(f"HARNESS_TEST_PLUGINS: {_exc}") from None
ALL_METHODS = sorted(METHODS.names())
BUILT_IN_METHODS = [m for m in ALL_METHODS if METHODS.get(m).__module__.startswith("methods.")]  # not plugins
TINY_TARGETS = "q_proj,k_proj,v_proj,up_proj,down_proj"


def defines_reducer_parameters(method: str) -> bool:
    """Whether ``method`` names the tensors the Reducer pauses: the README makes ``reducer_parameters()`` optional,
    and attach refuses the Reducer for a method without it."""
    return METHODS.get(method).reducer_parameters is not AdapterLinear.reducer_parameters


def text_recipe(tokenizer, config):
    """The causal-LM training recipe the text tasks hand the core, at ``config``'s cutoff and masking."""
    from tasks.lm import CausalLMRecipe

    return CausalLMRecipe(tokenizer, config.cutoff_len, config.train_on_inputs)


def meta_of(model):
    """A fresh ``meta``-device replica of a transformers model, adapters at its top (FLOPs counting)."""
    from harness.accounting import meta_replica
    from harness.models import MetaModel

    replica = meta_replica(model)
    return MetaModel("tiny", replica, replica)


def tiny_llama(
    seed: int = 0, layers: int = 4, dtype: torch.dtype = torch.float32, vocab_size: int = 128, context: int = 64
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


def batch(seed: int = 0, size: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (size, length), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def perturb(adapter, seed: int = 1, scale: float = 0.1) -> None:
    """Give every adapter tensor random values, so tests do not pass because B is still zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * scale)


UNREACHABLE_HUB = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch):
    """Every test starts with the hub's offline switches unset, whatever the shell exports (Hugging Face's offline
    advice exports both): a test of offline behaviour sets them itself (from a flakiness review). The hub's address
    is a loopback port nobody listens on, in this process and in the ones it starts: no test reaches the network,
    and a hub id whose weights are not cached is refused before any run on every machine alike (``probe_hub``)."""
    from huggingface_hub import constants

    from harness.hub import OFFLINE_VARIABLES

    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE_HUB)
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE_HUB)


@pytest.fixture(params=ALL_METHODS)
def method(request) -> str:
    return request.param


class CharTokenizer:
    """A character-level tokenizer for the tiny Llama (vocab 128): printable ASCII -> 2..96."""

    pad_token_id, eos_token_id = 0, 1
    pad_token, eos_token = "<pad>", "<eos>"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) - 30 if 32 <= ord(c) <= 126 else 97 for c in text]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(int(i) + 30) if 2 <= int(i) <= 96 else "" for i in ids)


@pytest.fixture
def char_tokenizer() -> CharTokenizer:
    return CharTokenizer()


def harness_here(capfd, *args: str):
    """``harness *args`` through ``harness.cli.main`` in this process (no new interpreter importing torch and
    transformers: ~4 s each), as ``subprocess.run`` would report it: exit status, stdout and stderr read at the
    file descriptors. An exception main lets through fails the test with its traceback, as the user would see
    it; argparse's exits are exit statuses."""
    import subprocess

    from harness.cli import main

    capfd.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["harness", *args], code, out, err)


# ``python this.py <harness arguments>`` with each optimizer step slowed to 0.3 s (the tiny models' steps take
# milliseconds): a test that kills a run between checkpoints has time to see one appear and kill it mid-run
SLOW_STEPS = """
import sys
import time

from harness.adapter import Adapter

real = Adapter.on_step_begin
Adapter.on_step_begin = lambda *args: (time.sleep(0.3), real(*args))[1]

from harness.cli import main

sys.argv[0] = "harness"
raise SystemExit(main())
"""


SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "commonsense"


@pytest.fixture
def data_dir():
    """The real benchmark data beside the checkout (../shared/data/commonsense), or HARNESS_TEST_DATA_DIR."""
    import os
    from pathlib import Path

    path = Path(os.environ.get("HARNESS_TEST_DATA_DIR", SHARED_DATA))
    if not (path / "ARC-Easy" / "test.json").is_file():
        pytest.fail(f"test data not found at {path}; set HARNESS_TEST_DATA_DIR to a folder of LLM-Adapters benchmarks")
    return path


@pytest.fixture
def tiny_model(tmp_path):
    """A 2-layer Llama config with the embedded tokenizer's vocabulary, for ``--model DIR --random-weights``."""
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


@pytest.fixture
def plugin_sandbox(monkeypatch, tmp_path):
    """Plugins loaded in this process from ``tmp_path``, undone afterwards (registrations, modules, what was
    loaded)."""
    import sys

    from harness import TASKS, registry

    METHODS.names(), TASKS.names()
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", {})
    monkeypatch.setattr(registry, "_PLUGIN_OF", {})
    modules = set(sys.modules)
    yield registry
    for name in set(sys.modules) - modules:
        if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def undecodable_png(path) -> None:
    """A PNG whose structure and checksums are valid (``Image.verify`` passes) but whose pixel stream is not
    zlib data (decoding fails): what a verify-only check lets through."""
    import struct
    import zlib

    from PIL import Image

    Image.new("RGB", (8, 8), (10, 200, 30)).save(path)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"IDAT")
    length = struct.unpack(">I", raw[at - 4 : at])[0]
    raw[at + 4 : at + 4 + length] = bytes([0x55]) * length  # the data, replaced
    raw[at + 4 + length : at + 8 + length] = struct.pack(">I", zlib.crc32(bytes(raw[at : at + 4 + length])))
    path.write_bytes(bytes(raw))


def trained_record_fields(seed: int = 0) -> dict:
    """A fixture record's ``train`` section: what the leaderboard reads of a trained run (made-up values)."""
    return {
        "steps": 3,
        "train_s": 10.0 + seed,
        "hook_val_s": 2.0 + seed,
        "tokens_per_s": 100.0,
        "trainable_params": 1000,
        "percent_trainable": 0.5,
        "params_updated_per_step": {"mean": 800.0},
        "memory": {"kind": "process_rss", "peak_rss_gb": 1.5},
        "adapter_file_bytes": 4000,
        "flops_per_step": {"total": 2000, "adapter": 100, "relative_to_lora": 1.25},
        "hook_val_flops": {"total": 600, "per_step": 200.0, "forwards": 6, "shapes": []},
    }


@dataclass(frozen=True)
class DeltaOnlyConfig(AdapterConfig):
    pass


class DeltaOnlyLinear(AdapterLinear):
    """A plugin as the README shows it: ``delta`` only, no fast path."""

    name = "delta_only"
    config_cls = DeltaOnlyConfig

    def __init__(self, base, config, site, shared):
        super().__init__(base, config, site, shared)
        self.lora_A = self.new_param(config.r, site.d_in, init="kaiming")
        self.lora_B = self.new_param(site.d_out, config.r)

    def delta(self, x):
        return F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)


def assert_lora_matches_peft(ours, ref, atol: float = 1e-6) -> None:
    """Give peft's LoRA (``ref``, a PeftModel on the same base) our ``lora``'s weights, then check that both give
    the same outputs on ``batch()`` and the same gradients of its loss."""
    import torch

    ref_modules = dict(ref.base_model.model.named_modules())
    with torch.no_grad():
        for name, layer in ours.layers.items():
            ref_modules[name].lora_A["default"].weight.copy_(layer.lora_A)
            ref_modules[name].lora_B["default"].weight.copy_(layer.lora_B)
    out_ours, out_ref = ours.model(**batch()), ref(**batch())
    torch.testing.assert_close(out_ours.logits, out_ref.logits, atol=atol, rtol=0)
    out_ours.loss.backward()
    out_ref.loss.backward()
    for name, layer in ours.layers.items():
        for kind in ("lora_A", "lora_B"):
            theirs = getattr(ref_modules[name], kind)["default"].weight.grad
            torch.testing.assert_close(getattr(layer, kind).grad, theirs, atol=atol, rtol=0)
