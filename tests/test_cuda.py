"""The GPU paths, on a GPU: skipped where CUDA is not available (CI has none; run it where one is).

Training on a GPU puts the base model in bf16 and the adapters in fp32 under bf16 autocast (``tasks/lm.py``,
``harness.train``); these tests check that setting for every registered method: the same computation as on the
CPU, the fast path equal to the reference path, our LoRA equal to peft's, and a whole ``harness run`` and
``harness bench`` on the device with their CUDA accounting.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from harness import attach
from tests.conftest import ALL_METHODS, TINY_TARGETS, batch, perturb, tiny_llama
from tests.test_fused_parity import outputs_and_grads

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
CUDA = torch.device("cuda")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_fp32_on_the_gpu_computes_what_the_cpu_computes(method, fast):
    assert not torch.backends.cuda.matmul.allow_tf32  # torch's default: fp32 matmuls on both sides
    adapters = []
    for device in ("cpu", CUDA):
        adapter = attach(tiny_llama().to(device), method, targets=TINY_TARGETS, dropout=0.0, reducer=None)
        perturb(adapter)
        adapter.model.train()
        adapters.append(adapter)
    (cpu_logits, cpu_grads), (gpu_logits, gpu_grads) = (outputs_and_grads(a, fast, False) for a in adapters)
    torch.testing.assert_close(gpu_logits, cpu_logits, atol=1e-4, rtol=1e-4)
    assert gpu_grads.keys() == cpu_grads.keys() and len(gpu_grads) > 1
    for name in gpu_grads:
        torch.testing.assert_close(gpu_grads[name], cpu_grads[name], atol=1e-5, rtol=1e-3, msg=name)


def test_bf16_training_setting_fast_path_matches_reference_and_fp32(method):
    """A bf16 base, fp32 adapters, bf16 autocast: what a GPU run computes. The fast path and the reference
    path are each within bf16 rounding of the same model in fp32."""
    adapter = attach(tiny_llama(dtype=torch.bfloat16).to(CUDA), method, targets=TINY_TARGETS, dropout=0.0, reducer=None)
    assert all(p.dtype == torch.float32 for p in adapter.trainable_parameters())  # adapters stay fp32
    perturb(adapter)
    adapter.model.train()
    exact = attach(tiny_llama(dtype=torch.bfloat16).float().to(CUDA), method, targets=TINY_TARGETS, dropout=0.0)
    exact.load_state_dict(adapter.state_dict())
    exact.model.train()
    fp32_logits, fp32_grads = outputs_and_grads(exact, False, False)
    ref_logits, ref_grads = outputs_and_grads(adapter, False, True)
    fast_logits, fast_grads = outputs_and_grads(adapter, True, True)
    assert relative_error(ref_logits, fp32_logits) < 2e-2 and relative_error(fast_logits, fp32_logits) < 2e-2
    assert fast_grads.keys() == ref_grads.keys() == fp32_grads.keys()
    for name in fast_grads:
        errors = relative_error(ref_grads[name], fp32_grads[name]), relative_error(fast_grads[name], fp32_grads[name])
        assert max(errors) < 5e-2, (name, errors)


def test_lora_matches_peft_on_the_gpu_in_the_training_setting():
    ours = attach(tiny_llama(dtype=torch.bfloat16).to(CUDA), "lora", targets=TINY_TARGETS, r=4, alpha=8, dropout=0.0)
    perturb(ours)
    ref = get_peft_model(
        tiny_llama(dtype=torch.bfloat16).to(CUDA),
        PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TINY_TARGETS.split(",")),
    )  # peft keeps its adapters in fp32 under a bf16 base (autocast_adapter_dtype), as ours are
    modules = dict(ref.base_model.model.named_modules())
    with torch.no_grad():
        for name, layer in ours.layers.items():
            assert modules[name].lora_A["default"].weight.dtype == torch.float32
            modules[name].lora_A["default"].weight.copy_(layer.lora_A)
            modules[name].lora_B["default"].weight.copy_(layer.lora_B)
    inputs = {k: v.to(CUDA) for k, v in batch().items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_ours, out_ref = ours.model(**inputs), ref(**inputs)
    assert relative_error(out_ours.logits.float(), out_ref.logits.float()) < 1e-2
    out_ours.loss.backward()
    out_ref.loss.backward()
    for name, layer in ours.layers.items():
        assert relative_error(layer.lora_B.grad, modules[name].lora_B["default"].weight.grad) < 2e-2, name
        assert relative_error(layer.lora_A.grad, modules[name].lora_A["default"].weight.grad) < 2e-2, name


def test_harness_run_trains_every_method_on_the_gpu_and_accounts_it(tiny_model, data_dir, tmp_path):
    """``harness run`` end to end on CUDA (bf16 base, autocast), every method; the records say so."""
    runs = tmp_path / "runs"
    args = [
        sys.executable, "-m", "harness", "run", "--methods", "all", "--task", "commonsense", "--preset", "smoke",
        "--model", str(tiny_model), "--random-weights", "--data-dir", str(data_dir), "--runs-dir", str(runs),
        "--quiet",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in runs.glob("*/record.json")]
    assert sorted(r["run"]["config"]["method"] for r in records) == ALL_METHODS
    for r in records:
        method = r["run"]["config"]["method"]
        assert r["run"]["status"] == "success", (method, r["run"].get("error"))
        assert r["env"]["device_type"] == "cuda" and r["env"]["gpus"] >= 1, method
        train = r["train"]
        assert train["memory"]["kind"] == "cuda_minus_baseline" and train["memory"]["peak_allocated_gb"] > 0, method
        assert train["flops_per_step"]["total"] > train["flops_per_step"]["adapter"] > 0, method
        assert all(math.isfinite(loss) for _, loss in train["loss_curve"]), method  # no NaN, no inf
    assert (runs / "commonsense.csv").is_file()


def test_bench_times_every_method_on_the_gpu(tmp_path):
    from harness.bench import BenchConfig, run_bench

    config = BenchConfig(
        batch_size=2, seq_len=16, rounds=2, warmup=1, reducer=("off",), protocols=(), out=str(tmp_path)
    )
    report = run_bench(config, model=tiny_llama(dtype=torch.bfloat16), label="tiny llama")
    assert report["environment"]["device_type"] == "cuda"
    rows = {r["contender"]: r for r in report["rows"]}
    # every registered method; effilora's row names its Reducer variant
    assert set(rows) == {
        "floor",
        "peft lora",
        "peft lora_fa",
        *(m for m in ALL_METHODS if m != "effilora"),
        "effilora (off)",
    }
    for name, r in rows.items():
        assert r["step_s"] > 0 and r["peak_mb"] > 0 and r["gflops"] > 0, name
    assert (tmp_path / "bench.csv").is_file() and (tmp_path / "bench.png").is_file()
