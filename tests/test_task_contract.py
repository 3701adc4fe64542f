"""The core is suite-agnostic: a task with no text, no tokenizer and no transformers model (a regression
on vectors, MSE loss) trains every method through the same loop, Reducer, accounting, records and
leaderboard as commonsense does."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from harness.leaderboard import write_leaderboards
from harness.models import MetaModel
from harness.registry import TASKS
from harness.runner import build_specs, run_all
from harness.task import Batch, Example, Loaded, Preset, Recipe, Task, TaskOptions
from harness.train import TrainConfig
from tests.conftest import ALL_METHODS

DIM = 8


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(DIM, 16), nn.Linear(16, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class Regressor(nn.Module):
    """A residual MLP: 'layers' of two linears, as the Reducer's per-layer choice expects."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Scaled(nn.Module):
    """The regressor (where adapters attach) times a gain the task itself trains with every method."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.gain = Regressor(), nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * self.net(x)


class VectorRecipe(Recipe):
    def encode(self, example: Example) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(example.meta["x"]), torch.tensor(example.meta["y"])

    def collate(self, items: list[Any]) -> Batch:
        return {"x": torch.stack([x for x, _ in items]), "y": torch.stack([y for _, y in items])}

    def units(self, batch: Batch) -> int:
        return batch["x"].shape[0]

    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return ((model(batch["x"]) - batch["y"]) ** 2).sum(-1).sum()

    def stats(self, batch: Batch) -> tuple[int, int]:
        return batch["x"].shape[0], 0

    def shape(self, batch: Batch) -> list[int]:
        return list(batch["x"].shape)

    def meta_batch(self, shape: list[int]) -> Batch:
        return {"x": torch.zeros(shape, device="meta"), "y": torch.zeros(shape, device="meta")}


def _data(n: int, seed: int) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(99)) / DIM**0.5
    x = torch.randn(n, DIM, generator=g)
    return [Example("", "", "vectors", {"x": xi.tolist(), "y": (xi @ w).tolist()}) for xi in x]


class VectorTask(Task):
    name = "vectors"
    protocols = ("mse",)
    default_preset = "smoke"  # its only one: `harness run --task vectors` needs no --preset
    presets = {
        "smoke": Preset(
            "regression on vectors",
            "mlp",
            TrainConfig(steps=8, micro_batch_size=8, grad_accum=2, lr=1e-2, warmup_steps=0, checkpoint_every=4),
            TaskOptions(val_size=8),
            {"r": 2, "alpha": 4, "targets": "fc1,fc2", "heads": 2},
            "mse",
            8,
        )
    }

    @classmethod
    def check_model(cls, model: str) -> None:
        if model != "mlp":
            raise ValueError(f"model {model!r}: this task has one model, 'mlp'")

    @classmethod
    def build_meta(cls, model: str) -> MetaModel:
        with torch.device("meta"):
            net = Scaled()
        return MetaModel(model, net, net.net)

    def load(self, model, device, *, random_weights, seed, trust_remote_code, settings=None) -> Loaded:
        torch.manual_seed(1234)  # the same "pretrained" base for every run
        net = Scaled().to(device)
        return Loaded(net, net.net, "residual MLP", info={"weights": "seeded 1234"}, task_params=[net.gain])

    def recipe(self, loaded: Loaded, config: TrainConfig) -> Recipe:
        return VectorRecipe()

    def meta_replica(self, loaded: Loaded) -> MetaModel:
        return self.build_meta("mlp")

    def splits(self) -> tuple[list[Example], list[Example]]:
        return _data(160, seed=1), _data(8, seed=2)

    def evaluate(self, loaded, protocol, batch_size, predictions_path: Path | None, progress=True):
        test = _data(64, seed=3)
        recipe = VectorRecipe()
        batch = recipe.collate([recipe.encode(e) for e in test])
        with torch.no_grad():
            errors = ((loaded.model(batch["x"]) - batch["y"]) ** 2).mean(-1)
        scores = [100.0 / (1.0 + float(e)) for e in errors]  # higher is better, 0-100
        return {
            "fit": {
                "metric": "score",
                "value": sum(scores) / len(scores),
                "n": len(scores),
                "protocol": protocol,
                "scores": scores,
                "examples": "vectors-seed3-64",
            }
        }


@pytest.fixture
def vector_task(monkeypatch):
    TASKS.names()  # the built-ins loaded first: the copy restored afterwards must hold them
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))
    TASKS.register("vectors")(VectorTask)
    return VectorTask


def test_a_plugin_task_that_reads_models_as_configs_says_what_to_override_when_one_is_not_found(monkeypatch):
    """From a review: a task with its own model but without build_meta/check_model got the hub's "not on the
    Hugging Face hub" alone."""
    import harness.models
    from harness.task import Task

    def not_found(model):
        raise ValueError(f"model {model!r} is not on the Hugging Face hub")

    monkeypatch.setattr(harness.models, "load_config_dict", not_found)
    own = type(
        "OwnModel",
        (VectorTask,),
        {"check_model": Task.__dict__["check_model"], "build_meta": Task.__dict__["build_meta"]},
    )
    own.name = "own"
    with pytest.raises(
        ValueError,
        match=r"not on the Hugging Face hub \(task 'own' reads models as transformers "
        r"configs; one that builds its own model overrides Task.build_meta, or Task.check_model\)",
    ):
        own.check_model("mlp")
    with pytest.raises(ValueError, match=r"hub$"):  # a built-in task's message is its own
        TASKS.get("commonsense").check_model("no/such-model")


def test_every_method_trains_a_non_text_task_through_the_core(vector_task, tmp_path):
    specs = build_specs("vectors", ["base", *ALL_METHODS], [0], "smoke")
    records = run_all(specs, tmp_path, None, progress=False)
    by_method = {r["run"]["config"]["method"]: r for r in records}
    assert set(by_method) == {"base", *ALL_METHODS}
    base = by_method["base"]["eval"]["fit"]["value"]
    for method in ALL_METHODS:
        record = by_method[method]
        assert record["run"]["status"] == "success", record["run"]["error"]
        train = record["train"]
        losses = [loss for _, loss in train["loss_curve"]]
        assert train["steps"] == 8 and losses[-1] < losses[0]
        assert train["samples"] == 8 * 16 and train["trainable_params"] > 0 and train["task_trained_params"] == 1
        flops = train["flops_per_step"]
        assert flops["total"] > 0 and flops["adapter"] > 0, flops
        assert [m["shape"] for m in flops["micro_batches"]] == [[8, DIM], [8, DIM]]
        assert record["run"]["config"]["model_info"] == {"weights": "seeded 1234"}
        assert record["eval"]["fit"]["value"] > base, method  # fitting the map beats the untrained base
    written = write_leaderboards(tmp_path, tmp_path / "board")
    table = (tmp_path / "board" / "vectors.csv").read_text()
    assert all(f",{m}," in table for m in ALL_METHODS) and "fit_lo" in table
    assert written


def test_a_non_text_run_resumes_from_its_checkpoint(vector_task, tmp_path, monkeypatch):
    import harness.train as train_module

    [spec] = build_specs("vectors", ["lora"], [0], "smoke")
    straight = run_all([spec], tmp_path / "a", None, progress=False)[0]

    real = train_module.save_checkpoint

    def crash_after_checkpoint(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("power cut")

    monkeypatch.setattr(train_module, "save_checkpoint", crash_after_checkpoint)
    crashed = run_all([spec], tmp_path / "b", None, progress=False)[0]
    assert crashed["run"]["status"] == "failed" and "power cut" in crashed["run"]["error"]
    monkeypatch.setattr(train_module, "save_checkpoint", real)
    resumed = run_all([spec], tmp_path / "b", None, progress=False)[0]
    assert resumed["train"]["resumed_from_step"] == 4
    assert resumed["train"]["loss_curve"] == straight["train"]["loss_curve"]
    assert json.dumps(resumed["eval"]) == json.dumps(straight["eval"])


def test_a_task_whose_build_meta_takes_no_trust_remote_code_still_runs_with_the_flag(vector_task, tmp_path):
    """``build_meta(model)`` predates the ``trust_remote_code`` parameter: --trust-remote-code does not break
    it (it was a TypeError); the flag goes only to a ``build_meta`` that takes it."""
    [spec] = build_specs("vectors", ["lora"], [0], "smoke")
    [record] = run_all([spec], tmp_path, None, progress=False, trust_remote_code=True)
    assert record["run"]["status"] == "success", record["run"]["error"]


def test_harness_run_without_a_preset_takes_the_tasks_default_preset(vector_task, tmp_path, capsys):
    from harness.cli import main

    main(["run", "--methods", "lora", "--task", "vectors", "--runs-dir", str(tmp_path), "--no-leaderboard", "--quiet"])
    [path] = tmp_path.glob("*/record.json")
    record = json.loads(path.read_text())
    assert record["run"]["status"] == "success" and record["run"]["config"]["preset"] == "smoke"


def test_a_task_that_keeps_the_defaults_checks_its_model_and_counts_its_flops(vector_task, monkeypatch, tmp_path):
    """A task written to the README's list alone: no check_model (a base run asked the hub for 'mlp') and no
    meta_replica (its FLOPs were silently 'not counted', its model having no from_config)."""
    own = vars(VectorTask)["meta_replica"]
    monkeypatch.setattr(VectorTask, "check_model", vars(Task)["check_model"])  # inherited, as if not written
    monkeypatch.setattr(VectorTask, "meta_replica", vars(Task)["meta_replica"])
    specs = build_specs("vectors", ["base", "lora"], [0], "smoke")
    base, lora = run_all(specs, tmp_path, None, progress=False)
    assert base["run"]["status"] == "success" == lora["run"]["status"], (base["run"]["error"], lora["run"]["error"])
    assert lora["train"]["flops_per_step"]["total"] > 0 and lora["train"]["flops_per_step"]["adapter"] > 0
    monkeypatch.setattr(VectorTask, "meta_replica", own)  # its own counts the same: the copy is the bare model
    [own] = run_all(specs[1:], tmp_path / "own", None, progress=False)
    assert {k: own["train"]["flops_per_step"][k] for k in ("total", "adapter")} == {
        k: lora["train"]["flops_per_step"][k] for k in ("total", "adapter")
    }


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"answers": [0, 1], "preds": {"score": [0, 1]}}, "'answers' must be a non-empty string of one digit 0-9"),
        ({"answers": "²²", "preds": {"score": "²²"}}, "'answers' must be a non-empty string of one digit 0-9"),
        ({"answers": "01", "preds": "01"}, r"'preds' must be \{metric: string\}"),
        ({"answers": "01", "preds": {"score": "0"}}, r"preds\['score'\] must be a string as long as 'answers'"),
        ({"answers": "01", "preds": {"score": "0x"}}, r"preds\['score'\] must be .*of digits and '-'"),
        (
            {"answers": "01", "preds": {"score": "01"}, "n_options": "02"},
            "'n_options' must be a string of one digit 1-9",
        ),
        ({"scores": "high"}, "'scores' must be a non-empty list of finite numbers"),
        ({"scores": [1.0, float("nan")]}, "'scores' must be a non-empty list of finite numbers"),
        ({"scores": []}, r"none scored: status 'absent' with a reason"),
        ({"value": "87%"}, "needs 'metric' \\(str\\), 'value' \\(a finite number\\) and 'n' \\(an int\\)"),
        ({"value": float("nan")}, "'value' \\(a finite number\\)"),
        ({"scores": [1.0], "baselines": {"majority": [1.0, 2.0]}}, r"baselines\['majority'\] must be a list"),
        ({"scores": [1.0], "baselines": {"majority": ["1"]}}, r"baselines\['majority'\] must be a list of finite"),
        ({"scores": [1.0], "baselines": [1.0]}, r"'baselines' must be \{'majority' \| 'chance': list\}"),
    ],
)
def test_an_evaluate_result_the_leaderboard_cannot_read_fails_its_run_naming_the_field(
    vector_task, monkeypatch, tmp_path, entry, problem
):
    real = VectorTask.evaluate

    def bad(self, *args, **kwargs):
        good = real(self, *args, **kwargs)["fit"]
        return {"fit": {**{k: v for k, v in good.items() if k != "scores"}, **entry}}

    monkeypatch.setattr(VectorTask, "evaluate", bad)
    [record] = run_all(build_specs("vectors", ["lora"], [0], "smoke"), tmp_path, None, progress=False)
    assert record["run"]["status"] == "failed" and re.search(f"eval entry 'fit': .*{problem}", record["run"]["error"])


def test_a_plugin_tasks_records_tabulated_without_the_plugin_are_flagged(vector_task, monkeypatch, tmp_path, capsys):
    import harness.leaderboard as leaderboard

    run_all(build_specs("vectors", ["lora"], [0], "smoke"), tmp_path / "runs", None, progress=False)
    monkeypatch.setattr(TASKS, "_entries", {k: v for k, v in TASKS._entries.items() if k != "vectors"})
    leaderboard._unregistered.cache_clear()
    capsys.readouterr()
    write_leaderboards(tmp_path / "runs", tmp_path / "board")
    err = capsys.readouterr().err
    assert "task 'vectors' is not registered" in err and "harness --plugin FILE leaderboard" in err


def test_a_base_run_is_checked_with_the_runs_trust_remote_code(vector_task, monkeypatch):
    """The default check_model builds a task's own model: under --trust-remote-code it must pass the flag on."""
    from harness.runner import preflight

    real = VectorTask.build_meta

    def remote(cls, model: str, trust_remote_code: bool = False) -> MetaModel:
        if not trust_remote_code:
            raise ValueError("this model runs only with --trust-remote-code")
        return real(model)

    monkeypatch.setattr(VectorTask, "build_meta", classmethod(remote))
    monkeypatch.setattr(VectorTask, "check_model", vars(Task)["check_model"])
    specs = build_specs("vectors", ["base", "lora"], [0], "smoke")
    preflight(specs, trust_remote_code=True)
    with pytest.raises(ValueError, match="runs only with --trust-remote-code"):
        preflight(specs[:1])


def test_a_task_without_its_own_rescore_says_it_cannot_score_a_finished_run_again(tmp_path):
    from harness.registry import TASKS

    with pytest.raises(ValueError, match=r"the commonsense task cannot score a finished run again .*--force"):
        TASKS.get("commonsense").rescore(tmp_path, {}, {})
