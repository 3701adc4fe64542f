"""Several processes through torchrun (what `accelerate launch` also sets up), on the CPU with gloo."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.records import RECORD, read_record
from tests.conftest import SLOW_STEPS
from tests.test_robustness import run_args


def slow_until_checkpoint(
    harness: list[str], runs: Path, tmp_path: Path, stderr=subprocess.DEVNULL
) -> subprocess.Popen:
    """``harness`` under torchrun, each step slowed to 0.3 s (``SLOW_STEPS``), in a session of its own, returned
    once its first checkpoint is there (a stop or kill then lands mid-run)."""
    script = tmp_path / "slow_steps.py"
    script.write_text(SLOW_STEPS)
    proc = subprocess.Popen(
        torchrun(harness, script), stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=env(),
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not list(runs.glob("*/checkpoint.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    return proc


def torchrun(args: list[str], script: Path | None = None) -> list[str]:
    """``python -m harness …`` (or ``python script …``) under torchrun with 2 processes; ``--standalone``: its
    rendezvous takes a free port itself (a port found free and handed over could be taken in between)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    entry = [str(script)] if script else ["-m", "harness"]
    return [*launch, *entry, *args[3:]]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_processes_write_one_record_with_the_single_process_results(tiny_model, data_dir, tmp_path):
    common = ["--steps", "4", "--option", "dropout=0", "--micro-batch-size", "1", "--no-leaderboard"]
    one = run_args(tiny_model, data_dir, tmp_path / "one", "lora", *common, "--grad-accum", "4")
    # the same batch, 4: two micro-batches a process, the gradients all-reduced after the second only
    two = run_args(tiny_model, data_dir, tmp_path / "two", "lora", *common, "--grad-accum", "2")
    single = subprocess.run(one, capture_output=True, text=True, timeout=600, env=env())
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run(torchrun(two), capture_output=True, text=True, timeout=600, env=env())
    assert multi.returncode == 0, multi.stderr[-3000:]
    [a] = [read_record(p) for p in (tmp_path / "one").glob(f"*/{RECORD}")]
    records = [read_record(p) for p in (tmp_path / "two").glob(f"*/{RECORD}")]
    assert len(records) == 1  # one record, written by the main process
    [b] = records
    assert b["run"]["status"] == "success" and b["train"]["samples"] == a["train"]["samples"]
    for name, entry in a["eval"].items():
        assert entry.get("value") == b["eval"][name].get("value"), name  # the same accuracies
        assert entry.get("preds") == b["eval"][name].get("preds"), name
    # the same loss curve and trained weights at the same effective batch. From a review: a relative 1e-3 on the
    # losses and the predictions could not see processes that never all-reduced (each training on its own half);
    # the runs agree to float rounding (summed in another order), far inside these (losses are kept to 5 decimals)
    for (step, x), (_, y) in zip(a["train"]["loss_curve"], b["train"]["loss_curve"], strict=True):
        assert abs(x - y) <= 1e-4, (step, x, y)
    from safetensors.torch import load_file

    alone, both = (load_file(d / r["run"]["id"] / "adapter" / "adapter_model.safetensors") for d, r in
                   ((tmp_path / "one", a), (tmp_path / "two", b)))  # fmt: skip
    assert alone.keys() == both.keys() and alone
    for name, tensor in alone.items():  # ~1e-8 apart; without the all-reduce, ~1e-3
        gap = float((tensor - both[name]).abs().max())
        assert gap <= 1e-6, (name, gap)
    assert multi.stdout.count("[1/1]") == 1  # one process reports
    assert b["run"]["config"]["processes"] == 2 and "processes" not in a["run"]["config"]  # in the run id too
    # the step's FLOPs cover both processes' micro-batches (other pairings of the same examples: other padding)
    assert len(b["train"]["flops_per_step"]["micro_batches"]) == len(a["train"]["flops_per_step"]["micro_batches"]) == 4


@pytest.mark.slow
def test_two_processes_killed_mid_run_resume(tiny_model, data_dir, tmp_path):
    """Killed (the launcher and both workers) between checkpoints, each step slowed to 0.3 s so that the kill
    lands mid-run; the same command without the slowing then resumes (the same run id) and finishes."""
    runs = tmp_path / "runs"
    harness = run_args(tiny_model, data_dir, runs, "lora", "--steps", "12", "--no-leaderboard")
    args = torchrun(harness)
    proc = slow_until_checkpoint(harness, runs, tmp_path)
    try:
        assert list(runs.glob("*/checkpoint.pt")), "no checkpoint appeared"
    finally:
        import psutil

        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            p.kill()  # the launcher and both workers, at once, mid-run
        proc.wait()
    assert not list(runs.glob(f"*/{RECORD}"))
    finished = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env())
    assert finished.returncode == 0, finished.stderr[-3000:]
    [record] = [read_record(p) for p in runs.glob(f"*/{RECORD}")]
    assert record["run"]["status"] == "success", finished.stdout[-2000:]
    assert (record["train"]["resumed_from_step"] or 0) >= 2, finished.stdout[-2000:]
    assert record["train"]["steps"] == 12


@pytest.mark.slow
def test_ctrl_c_in_the_terminal_stops_two_processes_cleanly(tiny_model, data_dir, tmp_path):
    """The README said that under torchrun each worker got the terminal's Ctrl-C and the launcher's forwarded copy,
    a second Ctrl-C that stopped it at once. torchrun (torch 2.13) starts its workers in their own session: only the
    launcher's copy reaches them, and they stop after the step with a checkpoint and a record, as one process does
    (the whole process group signalled, as a terminal does)."""
    import signal

    runs = tmp_path / "runs"
    harness = run_args(tiny_model, data_dir, runs, "lora", "--steps", "40", "--no-leaderboard")
    proc = slow_until_checkpoint(harness, runs, tmp_path, stderr=subprocess.PIPE)
    try:
        assert list(runs.glob("*/checkpoint.pt")), "no checkpoint appeared"
        os.killpg(proc.pid, signal.SIGINT)  # as the terminal sends it: the launcher and both workers
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    [record] = [read_record(p) for p in runs.glob(f"*/{RECORD}")]
    assert record["run"]["status"] == "cancelled", err[-3000:]
    assert record["run"]["error"].startswith("stopped at step ") and "Ctrl-C" in record["run"]["error"], record
    import torch

    [checkpoint] = runs.glob("*/checkpoint.pt")
    step = int(record["run"]["error"].split()[3])  # "stopped at step N of 40 ..."
    assert torch.load(checkpoint, weights_only=False)["state"]["step"] == step < 40


FAIL_IN_ONE = """
import os
import sys

from harness.adapter import Adapter

real = Adapter.on_step_begin


def fail_on_rank(self, step, fn):  # one process fails (out of memory, say); the other waits in an all-reduce
    if step == 2 and os.environ.get("RANK") == "{rank}":
        raise RuntimeError("simulated failure on rank {rank}")
    return real(self, step, fn)


Adapter.on_step_begin = fail_on_rank
from harness.cli import main

sys.argv[0] = "harness"
raise SystemExit(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
def test_a_failure_in_one_process_stops_both_instead_of_hanging(tiny_model, data_dir, tmp_path, rank):
    """From a review: the failing process went on to the next run's barrier while the other waited in the
    training all-reduce, and the job hung (24 h timeout) with no record."""
    script = tmp_path / "fail_in_one.py"
    script.write_text(FAIL_IN_ONE.format(rank=rank))
    runs = tmp_path / "runs"
    args = torchrun(run_args(tiny_model, data_dir, runs, "lora", "--steps", "6", "--no-leaderboard"), script)
    result = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env())  # ~12 s; hung before
    assert result.returncode != 0
    assert f"failed in process {rank} of 2" in result.stderr and "simulated failure" in result.stderr
    records = [read_record(p) for p in runs.glob(f"*/{RECORD}")]
    if rank == 0:  # the main process writes what failed
        assert [r["run"]["status"] for r in records] == ["failed"]
        assert "simulated failure on rank 0" in records[0]["run"]["error"]


STOP_AT_STEP = """
import sys

from harness.guard import StopOnSigterm

polls = []  # asked to stop after step {step} (on every process), as SIGTERM would ask
StopOnSigterm.requested = lambda self: bool(polls.append(1)) or len(polls) >= {step}

from harness.cli import main

sys.argv[0] = "harness"
raise SystemExit(main())
"""


@pytest.mark.slow
def test_two_processes_stopped_and_resumed_train_as_if_never_stopped(tiny_model, data_dir, tmp_path):
    """Each process resumes from its own random state (dropout draws differ per process): the loss curve of a
    run stopped after step 3 and resumed is the uninterrupted run's (each process took the main one's)."""
    common = ["--steps", "6", "--option", "dropout=0.5", "--micro-batch-size", "2", "--no-leaderboard"]
    script = tmp_path / "stop_at_step.py"
    script.write_text(STOP_AT_STEP.format(step=3))
    whole = torchrun(run_args(tiny_model, data_dir, tmp_path / "whole", "lora", *common))
    stopped_args = run_args(tiny_model, data_dir, tmp_path / "stopped", "lora", *common)
    done = subprocess.run(whole, capture_output=True, text=True, timeout=600, env=env())
    assert done.returncode == 0, done.stderr[-3000:]
    stopped = subprocess.run(torchrun(stopped_args, script), capture_output=True, text=True, timeout=600, env=env())
    [cancelled] = [read_record(p) for p in (tmp_path / "stopped").glob(f"*/{RECORD}")]  # exit 128 + SIGTERM
    assert cancelled["run"]["error"].startswith("stopped at step 3 of 6"), stopped.stderr[-3000:]
    resumed = subprocess.run(torchrun(stopped_args), capture_output=True, text=True, timeout=600, env=env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [a] = [read_record(p) for p in (tmp_path / "whole").glob(f"*/{RECORD}")]
    [b] = [read_record(p) for p in (tmp_path / "stopped").glob(f"*/{RECORD}")]
    assert b["train"]["resumed_from_step"] == 3
    assert b["train"]["loss_curve"] == a["train"]["loss_curve"]
    # the steps before the stop counted once per process, each its own (not the main process's twice)
    assert (b["train"]["samples"], b["train"]["tokens"]) == (a["train"]["samples"], a["train"]["tokens"])


def test_the_diffusion_loss_takes_the_model_as_several_processes_wrap_it(tmp_path):
    """Under torchrun (or accelerate launch) train() hands a task's recipe the DistributedDataParallel wrapper,
    which has no ``.unet``: the diffusion loss read it there and failed at the first step (one process here)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from harness.task import Example
    from tasks.diffusion import data as ddata
    from tasks.diffusion.model import load_folder
    from tasks.diffusion.recipe import DiffusionRecipe, Objective
    from tests.test_diffusion import tiny_data, tiny_pipeline

    pipe = load_folder(tiny_pipeline(tmp_path / "pipe"), torch.device("cpu"), torch.float32).eval()
    items = ddata.read_folder(tiny_data(tmp_path / "data", n=4))
    recipe = DiffusionRecipe(pipe, Objective())
    batch = recipe.collate(
        [recipe.encode(Example(i.text, "", "", {"image": i.image, "seed": n})) for n, i in enumerate(items)]
    )
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(pipe).eval()  # eval: the fixed per-example noise
        with torch.no_grad():
            assert torch.equal(recipe.loss_sum(wrapped, batch), recipe.loss_sum(pipe, batch))
    finally:
        dist.destroy_process_group()


SOMETIMES_UNUSED = """
import dataclasses, json, os, sys
import torch
from torch import nn
sys.path.insert(0, os.getcwd())
from harness import attach
from harness.task import Example
from harness.train import train
from tasks.lm import CausalLMRecipe
from tests.conftest import CharTokenizer, tiny_llama
from tests.test_train import CONFIG


class WithProjector(nn.Module):  # as tasks/multimodal/model.py: the projector only where a batch has an image
    def __init__(self):
        super().__init__()
        self.lm = tiny_llama()
        self.projector = nn.Linear(4, 32)

    def forward(self, input_ids, image=None, **kw):
        embeds = self.lm.get_input_embeddings()(input_ids)
        if image is not None:
            embeds = embeds + self.projector(image).unsqueeze(1)
        return self.lm(inputs_embeds=embeds, **kw)


class Recipe(CausalLMRecipe):
    def encode(self, e):
        enc = super().encode(e)
        enc.img = e.meta["img"]
        return enc

    def collate(self, items):
        batch = super().collate(items)
        if any(i.img for i in items):
            batch["image"] = torch.ones(len(items), 4)
        return batch


if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    from accelerate import PartialState

    PartialState(cpu=True)
examples = [Example(f"Q{i}: {i} plus one? A: ", f"{i + 1}", "toy", {"img": i % 3 != 0}) for i in range(40)]
world = int(os.environ.get("WORLD_SIZE", "1"))
config = dataclasses.replace(
    CONFIG, checkpoint_every=0, grad_accum=2 // world, micro_batch_size=1, steps=6, val_batch_size=2
)
torch.manual_seed(0)
model = WithProjector()
adapter = attach(model.lm, "lora", targets="q_proj,v_proj", r=2, dropout=0.0)
result = train(
    model, Recipe(CharTokenizer(), config.cutoff_len, config.train_on_inputs), adapter, examples, examples[:4],
    config, progress=False, task_params=list(model.projector.parameters()),
)
if int(os.environ.get("RANK", "0")) == 0:
    print("CURVE", json.dumps([loss for _, loss in result.loss_curve]))
"""


def alone_and_under_torchrun(script: Path) -> tuple[str, str]:
    """``script``'s stdout run as one process, then as two under torchrun (from the checkout, each must succeed)."""
    cwd = Path(__file__).resolve().parents[1]
    outs = []
    for argv in ([sys.executable, str(script)], torchrun([], script)):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env(), cwd=cwd)
        assert done.returncode == 0, done.stderr[-3000:]
        outs.append(done.stdout)
    return outs[0], outs[1]


def test_a_task_parameter_a_micro_batch_leaves_unused_trains_under_two_processes(tmp_path):
    """From a review: a task's own trained tensor that some micro-batches do not reach (LLaVA's projector on a
    text-only example) failed DDP's next step ("Expected to have finished reduction in the prior iteration"):
    find_unused_parameters was set for the Reducer only. Two processes now train as one does at the same batch."""
    import json

    script = tmp_path / "sometimes_unused.py"
    script.write_text(SOMETIMES_UNUSED)
    curves = [json.loads(out.split("CURVE ")[1]) for out in alone_and_under_torchrun(script)]
    assert len(curves[0]) == 6
    for x, y in zip(*curves, strict=True):
        assert abs(x - y) <= 1e-3 * max(1.0, abs(x))


STEP_0_CUT = """
import dataclasses, json, os, random, sys
import torch
sys.path.insert(0, os.getcwd())
from harness import attach
from harness.task import Example
from harness.train import train
from tasks.lm import CausalLMRecipe
from tests.conftest import CharTokenizer, tiny_llama
from tests.test_train import CONFIG

world = int(os.environ.get("WORLD_SIZE", "1"))
if world > 1:
    from accelerate import PartialState

    PartialState(cpu=True)
order = list(range(20))
random.Random(0).shuffle(order)  # the examples' order in the first epoch (seed 0): step 0's are the first two
examples = [  # step 0's prompts longer than cutoff_len: their answers cut, nothing supervised in step 0
    Example(("x" * 80 if i in order[:2] else "") + f"Q{i}: {i} plus one? A: ", f"{i + 1}", "toy", {}) for i in range(20)
]
config = dataclasses.replace(
    CONFIG, checkpoint_every=0, grad_accum=2 // world, micro_batch_size=1, steps=4, val_batch_size=2,
    train_on_inputs=False, weight_decay=0.1,
)
torch.manual_seed(0)
model = tiny_llama()
adapter = attach(model, "lora", targets="q_proj,v_proj", r=2, dropout=0.0)
recipe = CausalLMRecipe(CharTokenizer(), config.cutoff_len, config.train_on_inputs)
result = train(model, recipe, adapter, examples, examples[:4], config, progress=False)
if int(os.environ.get("RANK", "0")) == 0:
    keep = {k: getattr(result, k) for k in ("first_step_shapes", "loss_curve", "params_updated", "samples")}
    print("RESULT", json.dumps(keep))
"""


@pytest.fixture(scope="module")
def step_0_cut(tmp_path_factory) -> tuple[dict, dict]:
    """``STEP_0_CUT``'s result with one process and with two (the same batch of 2): step 0 has nothing supervised."""
    import json

    script = tmp_path_factory.mktemp("step_0_cut") / "step_0_cut.py"
    script.write_text(STEP_0_CUT)
    alone, both = (json.loads(out.split("RESULT ")[1]) for out in alone_and_under_torchrun(script))
    assert alone["loss_curve"][0] == [1, None]  # step 0 had nothing supervised, as meant
    return alone, both


@pytest.mark.slow
def test_two_processes_count_flops_on_the_first_supervised_step_as_one_does(step_0_cut):
    """From a review: with several processes the FLOPs were counted on step 0's micro-batches, gathered; where step 0
    had nothing supervised (its answers cut) that was none, and the record said flops_per_step.total 0, while one
    process counts the first step with something supervised. The processes now agree on that step."""
    alone, both = step_0_cut
    assert alone["first_step_shapes"] and both["first_step_shapes"] == alone["first_step_shapes"]


@pytest.mark.slow
def test_a_step_no_process_supervises_updates_nothing_as_with_one_process(step_0_cut):
    """From a review: under two processes a step with nothing supervised on any backpropagated `loss * 0.0`, whose
    zero gradients AdamW stepped on (its step count, the weight decay): the loss curve then left one process's, and
    params_updated counted every tensor. No process runs such a step's micro-batches now: nothing gets a gradient."""
    alone, both = step_0_cut
    assert both["params_updated"] == alone["params_updated"] and alone["params_updated"][0] == 0
    assert both["samples"] == alone["samples"]
    for (step, x), (_, y) in zip(alone["loss_curve"], both["loss_curve"], strict=True):
        assert (x is None) == (y is None) and (x is None or abs(x - y) <= 1e-4), (step, x, y)


NOT_FINITE_AFTER_A_CHECKPOINT = """
import dataclasses, os, sys
import torch
sys.path.insert(0, os.getcwd())
from pathlib import Path
from harness import attach
from harness.task import Example
from harness.train import train
from tasks.lm import CausalLMRecipe
from tests.conftest import CharTokenizer, tiny_llama
from tests.test_train import CONFIG

world = int(os.environ.get("WORLD_SIZE", "1"))
if world > 1:
    from accelerate import PartialState

    PartialState(cpu=True)
steps = []


class NanAtStep3(CausalLMRecipe):  # the training loss of step 3 is NaN, on every process
    def loss_sum(self, model, batch):
        loss = super().loss_sum(model, batch)
        return loss * float("nan") if model.training and steps[-1] == 2 else loss


examples = [Example(f"Q{i}: {i} plus one? A: ", f"{i + 1}", "toy", {}) for i in range(20)]
config = dataclasses.replace(
    CONFIG, checkpoint_every=2, grad_accum=2 // world, micro_batch_size=1, steps=4, val_batch_size=2
)
torch.manual_seed(0)
model = tiny_llama()
adapter = attach(model, "lora", targets="q_proj,v_proj", r=2, dropout=0.0)
begin = adapter.on_step_begin
adapter.on_step_begin = lambda step, fn: (steps.append(step), begin(step, fn))[1]
recipe = NanAtStep3(CharTokenizer(), config.cutoff_len, config.train_on_inputs)
try:
    train(model, recipe, adapter, examples, examples[:4], config, run_dir=Path(sys.argv[1]), progress=False)
except FloatingPointError as exc:
    rank = os.environ.get("RANK", "0")  # a file per process: two processes printing to one pipe can interleave
    (Path(sys.argv[1]).parent / f"said_{rank}.txt").write_text(f"PROCESS {rank}: {exc}")
"""


@pytest.mark.slow
def test_every_process_names_the_checkpoint_kept_when_the_loss_is_not_finite(tmp_path):
    """From a review: the step of the last checkpoint was kept by the process that wrote it only, so on a loss that
    is not finite process 1 said "no checkpoint" where process 0 said the one of step 2 was kept."""
    script = tmp_path / "not_finite.py"
    script.write_text(NOT_FINITE_AFTER_A_CHECKPOINT)
    cwd = Path(__file__).resolve().parents[1]
    args = torchrun([], script) + [str(tmp_path / "run")]
    two = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env(), cwd=cwd)
    assert two.returncode == 0, two.stderr[-3000:]
    said = [path.read_text() for path in sorted(tmp_path.glob("said_*.txt"))]
    assert [line.split(":")[0] for line in said] == ["PROCESS 0", "PROCESS 1"], two.stdout[-2000:]
    for line in said:
        assert "at step 3: stopped before its update; the last good checkpoint (step 2) is kept" in line, line
