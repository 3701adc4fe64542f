"""``harness bench`` at CI size: a tiny seeded Llama, one round; every contender, ratio and file is there."""

from __future__ import annotations

import csv
import io
import json
import re
import runpy
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness import METHODS, memory
from harness.bench import BenchConfig, alternate, run_bench
from harness.bench_report import cpu_ratio, csv_text, figure, markdown, paired_ratios, plot_title, relate
from harness.cli import main
from harness.config import DEFAULT_TARGETS
from harness.stats import median_interval
from tests.conftest import CharTokenizer, tiny_llama

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_bench_times_every_method_against_the_floor_and_peft_and_scores_per_protocol(data_dir, tmp_path):
    config = BenchConfig(
        batch_size=2,
        seq_len=16,
        rounds=1,
        warmup=0,
        reducer=("off", "importance:0.25", "random:0.75"),
        protocols=("cloze", "choice"),
        data_dir=str(data_dir),
        eval_limit=1,
        threads=1,
        out=str(tmp_path),
    )
    threads = torch.get_num_threads()
    report = run_bench(config, model=tiny_llama(), tokenizer=CharTokenizer(), label="tiny llama")
    assert torch.get_num_threads() == threads  # restored
    rows = {r["contender"]: r for r in report["rows"]}
    with_reducer = [m for m in METHODS.names() if METHODS.get(m).config_cls().reducer is not None]
    expected = {"floor", "peft lora", "peft lora_fa", "cloze", "choice"}
    expected |= {m for m in METHODS.names() if m not in with_reducer}
    labels = ("off", "importance:0.25, default", "random:0.75")  # the default ReducerConfig is importance:0.25
    expected |= {f"{m} ({v})" for m in with_reducer for v in labels}
    assert set(rows) == expected
    assert rows["floor"]["x_floor"] == 1.0 and rows["floor"]["state_mb"] == 0
    for name, r in rows.items():
        assert r["step_s"] > 0 and r["rounds"] == 1, name
        if r["kind"] == "train":
            assert r["peak_mb"] > 0 and r["gflops"] > 0, name
            paired = (r["round_s"][0] + r["hook_s"]) / rows["floor"]["round_s"][0]  # the same round's floor
            assert r["x_floor_paired"] == pytest.approx(paired) == r["x_floor_paired_max"], name
            assert r["x_floor_paired_lo"] == pytest.approx(paired) == r["x_floor_paired_hi"], name  # one round
    assert rows["lora"]["x_peft"] == pytest.approx(rows["lora"]["total_s"] / rows["peft lora"]["total_s"])
    assert rows["lora"]["gflops"] == pytest.approx(rows["peft lora"]["gflops"], rel=1e-3)  # the same computation
    assert rows["lora_fa"]["state_mb"] < rows["lora"]["state_mb"]
    # peft's contenders hold what ours do: B (and A) with two AdamW moments each; peft's LoRA-FA optimizer keeps
    # its state by module name, which was missed (its state counted as the weights alone)
    for ours in ("lora", "lora_fa"):
        assert rows[f"peft {ours}"]["state_mb"] == pytest.approx(rows[ours]["state_mb"], rel=0.02), ours
    for m in with_reducer:
        off, importance, drop = (rows[f"{m} ({v})"] for v in labels)
        assert off["hook_s"] == 0 and drop["hook_s"] == 0 and importance["hook_s"] > 0  # only importance scores
        assert importance["hook_gflops"] > 0 and drop["hook_gflops"] == 0  # the rollouts are counted too
        assert importance["total_gflops"] == pytest.approx(importance["gflops"] + importance["hook_gflops"])
        assert off["reducer_saves_gflops"] is None and drop["reducer_saves_gflops"] > 0  # frozen heads: no dB
        assert drop["gflops"] < importance["gflops"] < off["gflops"]  # the step alone
        # the heads the Reducer left out of the last step keep their weights and AdamW moments: no state saved
        assert importance["state_mb"] == pytest.approx(off["state_mb"]) == drop["state_mb"]
        assert importance["hook_cpu_s"] > 0 and off["hook_cpu_s"] == 0  # the rounds in CPU seconds, not wall
        cpu = (importance["cpu_s"] + importance["hook_cpu_s"]) / rows["floor"]["cpu_s"]
        assert importance["x_floor_cpu"] == pytest.approx(cpu)
    assert rows["cloze"]["examples"] == rows["choice"]["examples"] > 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["bench.csv", "bench.json", "bench.md", "bench.png"]
    with open(tmp_path / "bench.csv") as f:
        assert {r["contender"] for r in csv.DictReader(f)} == expected
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["config"]["batch_size"] == 2 and saved["environment"]["torch_threads"] == 1
    table = (tmp_path / "bench.md").read_text()
    assert "| lora |" in table and "| cloze |" in table and saved["environment"]["device"] in table
    assert ("malloc keeps freed memory" in table) == (saved["environment"]["malloc"] is not None)


def test_the_reducer_s_scoring_flops_are_its_no_grad_forwards_per_step_as_run_records_count_them(tmp_path):
    """From a review: ``hook_gflops`` was only checked to be above 0, so a count of each round as forward and
    backward, or per round instead of per step, passed. It is ``rollouts`` no-grad forwards at the bench's shape
    every ``interval`` steps, each counted as run records count the Reducer's rollouts (``hook_forward_flops``)."""
    from harness.accounting import hook_forward_flops
    from harness.config import make_config
    from tasks.lm import CausalLMRecipe
    from tests.conftest import meta_of

    rollouts, interval = 3, 4
    options = {"rollouts": rollouts, "interval": interval}
    with_reducer = [m for m in METHODS.names() if METHODS.get(m).config_cls().reducer is not None]
    assert with_reducer  # else there is nothing to check
    config = BenchConfig(
        methods=tuple(with_reducer),
        options=options,
        batch_size=2,
        seq_len=16,
        rounds=1,
        warmup=0,
        peft=False,
        reducer=("importance:0.25",),
        protocols=(),
        threads=1,
        out=str(tmp_path),
    )
    rows = {r["contender"]: r for r in run_bench(config, model=tiny_llama(), tokenizer=CharTokenizer())["rows"]}
    recipe = CausalLMRecipe(CharTokenizer(), cutoff_len=config.seq_len, train_on_inputs=True)
    shape = [config.batch_size, config.seq_len, config.seq_len]  # every position of the held-out batch scored
    for method in with_reducer:
        row = rows[f"{method} (importance:0.25, default)"]
        cfg = make_config(METHODS.get(method).config_cls, options, method)
        assert (cfg.reducer.rollouts, cfg.reducer.interval) == (rollouts, interval)
        forward = hook_forward_flops(
            meta_of(tiny_llama()), method, cfg, [{"shape": shape, "skipped": []}], recipe, row["fast_path"]
        )[0]
        assert row["hook_gflops"] * 1e9 == pytest.approx(forward * rollouts / interval, rel=1e-12), method


def test_with_reference_the_reducer_saves_against_its_own_path_with_it_off(tmp_path):
    """``--reference`` times each method on both paths: a Reducer row is compared with the off row of its path."""
    config = BenchConfig(
        methods=("effilora",),
        batch_size=2,
        seq_len=16,
        rounds=1,
        warmup=0,
        peft=False,
        reference=True,
        reducer=("off", "random:0.5"),
        protocols=(),
        threads=1,
        out=str(tmp_path),
    )
    rows = {r["contender"]: r for r in run_bench(config, model=tiny_llama(), tokenizer=CharTokenizer())["rows"]}
    for suffix in ("", " reference"):
        off, drop = rows[f"effilora (off){suffix}"], rows[f"effilora (random:0.5){suffix}"]
        assert drop["fast_path"] == off["fast_path"] == (not suffix)
        assert drop["reducer_saves_s"] == pytest.approx(off["total_s"] - drop["total_s"])
        assert drop["reducer_saves_gflops"] == pytest.approx(off["total_gflops"] - drop["total_gflops"])


def test_bench_command_on_a_model_folder(tmp_path, capsys):
    folder = tmp_path / "tiny"
    tiny_llama().save_pretrained(folder)
    out = tmp_path / "out"
    argv = ["bench", "--model", str(folder), "--methods", "lora,moslora", "--batch", "2", "--seq", "8"]
    argv += ["--rounds", "2", "--warmup", "0", "--protocols", "none", "--no-peft", "--reference", "--threads", "1"]
    assert main([*argv, "--out", str(out), "--rank", "4"]) == 0
    printed = capsys.readouterr().out
    assert "| lora reference |" in printed and "| moslora |" in printed and "bench.csv" in printed
    report = json.loads((out / "bench.json").read_text())
    assert [r["contender"] for r in report["rows"]] == [
        "floor",
        "lora",
        "lora reference",
        "moslora",
        "moslora reference",
    ]
    assert report["config"]["options"] == {"rank": 4}
    assert report["adapter"] == {"r": 4, "alpha": 32.0, "dropout": 0.05, "targets": list(DEFAULT_TARGETS), "heads": 4}
    assert "r=4, alpha 32, dropout 0.05 on " + ",".join(DEFAULT_TARGETS) in printed


def test_bench_table_names_the_adapter_settings_it_timed(tmp_path):
    options = {"dropout": "0", "targets": "q_proj,v_proj"}
    config = BenchConfig(methods=("lora",), rounds=1, warmup=0, batch_size=1, seq_len=4, protocols=(), peft=False)
    report = run_bench(replace(config, options=options, out=str(tmp_path)), model=tiny_llama())
    assert report["adapter"]["dropout"] == 0.0 and report["adapter"]["targets"] == ["q_proj", "v_proj"]
    assert "dropout 0 on q_proj,v_proj" in (tmp_path / "bench.md").read_text()
    older = {k: v for k, v in report.items() if k != "adapter"}  # a report from before the settings were kept
    assert markdown(older).startswith(f"{report['model']}, batch 1 x 4 tokens")


def test_bench_rejects_bad_settings_with_the_fix():
    with pytest.raises(ValueError, match=r"reducer variant 'fast:2'.*SELECTION:DROP_RATIO"):
        BenchConfig(reducer=("fast:2",))
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        BenchConfig(rounds=0)
    # named by harness bench's flags (and the timing scripts'), not the fields: "seq_len must be >= 2 and warmup
    # >= 0 (got -5, 1)" named neither the flag nor which of the two was wrong
    for field, value, said in (("seq_len", -5, "--seq must be >= 2 (got -5)"), ("warmup", -1, "--warmup must be >= 0")):
        with pytest.raises(ValueError, match=re.escape(said)):
            BenchConfig(**{field: value})
    with pytest.raises(ValueError, match=r"unknown method 'lorra'.*did you mean 'lora'"):
        run_bench(BenchConfig(methods=("lorra",), protocols=()), model=tiny_llama())


def test_alternate_rotates_the_order_and_times_every_round(capsys, monkeypatch):
    from harness import bench

    calls: list[str] = []
    clock = {"wall": 100.0, "cpu": 50.0}  # fake clocks: each call takes a known wall and CPU time

    def call(name: str, wall: float, cpu: float):
        def run() -> None:
            calls.append(name)
            clock["wall"] += wall
            clock["cpu"] += cpu

        return run

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(bench.time, "process_time", lambda: clock["cpu"])
    times = alternate(
        {"a": call("a", 1.0, 0.5), "b": call("b", 2.0, 3.0)}, rounds=3, warmup=1, device=torch.device("cpu")
    )
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert times == {"a": [(1.0, 0.5)] * 3, "b": [(2.0, 3.0)] * 3}  # each call's own, the warm-up left out
    err = capsys.readouterr().err  # long benches show where they are: every call counted, warm-up included
    assert "bench: 100%" in err and "8/8" in err and "round 3/3" in err


def test_alternate_times_a_gpu_call_between_synchronisations(monkeypatch):
    events: list[str] = []  # without them a GPU step is timed as the time to queue its kernels
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: events.append("sync"))
    alternate({"a": lambda: events.append("a")}, rounds=2, warmup=1, device=torch.device("cuda"))
    assert events == ["a", "sync", "a", "sync", "sync", "a", "sync"]


def test_bench_on_a_reduced_shape_with_random_weights(tmp_path, capsys):
    folder = tmp_path / "tiny"
    tiny_llama(layers=4).save_pretrained(folder)  # only its config is read
    out = tmp_path / "out"
    argv = ["bench", "--model", str(folder), "--random-weights", "--layers", "1", "--methods", "lora"]
    argv += ["--batch", "2", "--seq", "8", "--rounds", "1", "--warmup", "0", "--protocols", "none", "--no-peft"]
    assert main([*argv, "--threads", "1", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["model"].endswith("(random weights), 1 layer")
    assert [r["contender"] for r in report["rows"]] == ["floor", "lora"]
    lora = report["rows"][1]
    assert lora["state_mb"] > 0 and lora["flops_x_floor"] > 1.0
    if memory.is_glibc() and memory.wanted():  # the command set it, and its table says so
        assert report["environment"]["malloc"] is not None
        assert "malloc keeps freed memory" in (out / "bench.md").read_text()
    assert main(["bench", "--model", str(folder), "--layers", "1", "--protocols", "none"]) == 2
    assert "--layers builds a reduced shape and needs --random-weights" in capsys.readouterr().err


@pytest.mark.parametrize("report", sorted(RESULTS.glob("**/bench.json")), ids=lambda p: str(p.parent.name))
def test_committed_bench_tables_are_rendered_from_their_reports(report):
    """Every committed bench.md is what `markdown` makes of the bench.json beside it (no hand-edited numbers)."""
    assert (report.parent / "bench.md").read_text() == markdown(json.loads(report.read_text()))


def test_paired_interval_is_a_bootstrap_of_the_rounds_median_and_older_tables_get_it_from_their_round_times():
    ratios = [1.10, 1.12, 1.13, 1.15, 1.30, 1.11, 1.14]
    lo, hi = median_interval(ratios)
    assert min(ratios) <= lo <= statistics.median(ratios) <= hi <= max(ratios) and lo < hi
    assert median_interval(ratios) == (lo, hi)  # seeded: the same table every time
    assert median_interval([1.2] * 5) == (1.2, 1.2)
    with pytest.raises(ValueError, match="non-empty"):
        median_interval([])
    floor = {"kind": "train", "contender": "floor", "source": "floor", "hook_s": 0.0, "round_s": [1.0] * 7}
    row = {"kind": "train", "contender": "lora", "source": "ours", "hook_s": 0.0, "round_s": ratios}
    assert paired_ratios(row, floor) == pytest.approx(ratios)
    report = json.loads(sorted(RESULTS.glob("**/bench.json"))[0].read_text())
    for r in report["rows"]:  # as a report written before the interval was kept
        r.pop("x_floor_paired_lo", None), r.pop("x_floor_paired_hi", None)
    rows = [r for r in report["rows"] if r["kind"] == "train"]
    floor = next(r for r in rows if r["source"] == "floor")
    lora = next(r for r in rows if r["contender"] == "lora")
    lo, hi = median_interval(paired_ratios(lora, floor))
    assert f"| {lora['x_floor_paired']:.3f} ({lo:.3f}-{hi:.3f}) [" in markdown(report)
    [csv_lora] = [r for r in csv.DictReader(io.StringIO(csv_text(report))) if r["contender"] == "lora"]
    assert (float(csv_lora["x_floor_paired_lo"]), float(csv_lora["x_floor_paired_hi"])) == pytest.approx((lo, hi))


@pytest.mark.parametrize("report", sorted(RESULTS.glob("**/bench.json")), ids=lambda p: str(p.parent.name))
def test_committed_bench_csvs_are_written_from_their_reports(report):
    assert (report.parent / "bench.csv").read_text() == csv_text(json.loads(report.read_text()))


def test_an_older_report_s_reducer_rounds_in_wall_seconds_give_no_cpu_ratio():
    floor = {"kind": "train", "source": "floor", "cpu_s": 4.0, "hook_s": 0.0}
    assert cpu_ratio({"cpu_s": 6.0, "hook_s": 0.3}, floor) is None  # wall seconds are not added to CPU seconds
    assert cpu_ratio({"cpu_s": 6.0, "hook_s": 0.3, "hook_cpu_s": 0.5}, floor) == pytest.approx(1.625)
    assert cpu_ratio({"cpu_s": 6.0, "hook_s": 0.0}, floor) == pytest.approx(1.5)


def test_also_times_each_method_with_an_option_changed_paired_against_its_defaults(tmp_path, capsys):
    config = BenchConfig(
        methods=("lora", "effilora"),
        also=("dropout=0",),
        reducer=("off", "default"),
        rounds=2,
        warmup=0,
        batch_size=1,
        seq_len=8,
        protocols=(),
        peft=False,
        out=str(tmp_path),
    )
    report = run_bench(config, model=tiny_llama())
    rows = {r["contender"]: r for r in report["rows"]}
    assert set(rows) == {"floor", "lora", "lora (dropout=0)", "effilora (off)", "effilora (default)",
                         "effilora (dropout=0)"}  # fmt: skip
    assert report["adapter"]["dropout"] == 0.05  # the table's settings are the defaults, not a variant's
    for variant, default in (("lora (dropout=0)", "lora"), ("effilora (dropout=0)", "effilora (default)")):
        r, d = rows[variant], rows[default]
        assert r["variant"] == "dropout=0" and d["variant"] == "" and r["x_peft"] is None and r["baseline"] == default
        # each round's step plus that round's own scoring round (per step), over the default's in the same round
        rounds = zip(r["round_s"], r["hook_round_s"], d["round_s"], d["hook_round_s"], strict=True)
        paired = [(a + hook) / (b + default_hook) for a, hook, b, default_hook in rounds]
        assert r["x_default_paired"] == pytest.approx(statistics.median(paired))
        assert r["x_default_paired_lo"] <= r["x_default_paired"] <= r["x_default_paired_hi"]
        # 2 rounds: their min-max, no "95%" interval (the min-max is what a bootstrap of 2 gives)
        said = f"- {variant}: {statistics.median(paired):.3f} x {default} [{min(paired):.3f}-{max(paired):.3f}]"
        assert said in (tmp_path / "bench.md").read_text()
    assert rows["lora"]["x_default_paired"] is None and rows["floor"]["x_default_paired"] is None
    with open(tmp_path / "bench.csv") as f:
        saved = {r["contender"]: r for r in csv.DictReader(f)}
    assert saved["lora (dropout=0)"]["baseline"] == "lora"
    assert float(saved["lora (dropout=0)"]["x_default_paired"]) == pytest.approx(
        rows["lora (dropout=0)"]["x_default_paired"], abs=1e-6
    )  # the csv keeps 6 decimals: a ratio far below 1 (a loaded machine) failed the default relative tolerance
    # its default not timed (--reducer off): the --also row keeps the Reducer off, says so, and is compared with
    # the row it changed (from a review: it ran with the default Reducer, unlabelled and unpaired)
    alone = {
        r["contender"]: r
        for r in run_bench(replace(config, methods=("effilora",), reducer=("off",)), model=tiny_llama())["rows"]
    }
    assert set(alone) == {"floor", "effilora (off)", "effilora (off, dropout=0)"}
    changed = alone["effilora (off, dropout=0)"]
    assert (changed["baseline"], changed["reducer"], changed["variant"]) == ("effilora (off)", "off", "dropout=0")
    assert changed["x_default_paired"] is not None and changed["hook_s"] == alone["effilora (off)"]["hook_s"] == 0.0
    argv = ["bench", "--methods", "lora", "--also", "dropout", "--protocols", "none"]
    assert main(argv) == 2
    assert "--also 'dropout' must look like key=value (e.g. --also dropout=0)" in capsys.readouterr().err
    argv = ["bench", "--model", "no/such-model", "--methods", "lora", "--also", "dropuot=0", "--protocols", "none"]
    assert main(argv) == 2  # before the model is looked for
    assert "unknown option 'dropuot' for method 'lora' (did you mean 'dropout'?)" in capsys.readouterr().err


def kept_freed_memory(monkeypatch) -> list[bool]:
    """Patch ``harness.memory.keep_freed_memory`` before a script is loaded: the list records its calls."""
    from harness import memory

    calls: list[bool] = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(True))
    return calls


def test_profile_step_script_profiles_the_floor_and_each_contender(tiny_model, capsys, monkeypatch):
    malloc = kept_freed_memory(monkeypatch)  # times under the malloc setting harness bench uses
    main_ = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "profile_step.py"))["main"]
    args = ["--model", str(tiny_model), "--random-weights", "--batch", "1", "--seq", "4", "--methods", "lora,hydralora"]
    main_([*args, "--no-peft", "--steps", "1", "--top", "3"])
    out = capsys.readouterr().out
    assert "batch 1 x 4" in out and "aten::mm" in out
    for name in ("floor", "lora", "hydralora"):
        assert f"### {name}: wall " in out and " ms/step" in out
    assert malloc == [True]


def test_profile_step_script_refuses_an_unknown_method_before_loading(capsys):
    main_ = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "profile_step.py"))["main"]
    for methods, message in (
        ("lorra", "did you mean 'lora'"),
        (",", f"no method given; available: {', '.join(METHODS.names())}"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main_(["--model", "no/such-model", "--methods", methods])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_ab_flag_script_times_each_method_with_the_flag_on_and_off(tiny_model, capsys, monkeypatch):
    malloc = kept_freed_memory(monkeypatch)
    main_ = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "ab_flag.py"))["main"]
    args = ["--flag", "STACK_RAW", "--model", str(tiny_model), "--random-weights", "--batch", "1", "--seq", "4"]
    main_([*args, "--methods", "lora,hydralora", "--option", "dropout=0", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "2 rounds" in out and "{'dropout': '0'}" in out
    for name in ("floor", "lora", "lora, STACK_RAW=False", "hydralora", "hydralora, STACK_RAW=False"):
        assert f"\n{name} " in out
    assert "hydralora: STACK_RAW=False over STACK_RAW=True, paired: " in out
    # a review: 2 rounds' min-max was headed "(95%)", as bench.md's was below 5 rounds
    assert "x floor, paired (min-max)" in out and "(95%)" not in out and " min-max)\n" in out
    from harness import fastpath

    assert fastpath.STACK_RAW is True  # put back
    assert malloc == [True]


def test_ab_flag_script_says_when_a_switch_cannot_act(tiny_model, capsys, monkeypatch):
    kept_freed_memory(monkeypatch)
    ns = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "ab_flag.py"))
    args = ["--model", str(tiny_model), "--random-weights", "--batch", "1", "--seq", "4", "--rounds", "1"]
    ns["main"](["--flag", "STACK_RAW", "--methods", "hydralora", *args])  # the default dropout: a mask
    out = capsys.readouterr().out
    assert "hydralora: an A/A comparison (timing noise only): STACK_RAW acts only without a dropout mask" in out
    ns["main"](["--flag", "STACK_RAW", "--methods", "lora,hydralora", "--option", "dropout=0", *args])
    out = capsys.readouterr().out  # without a mask it acts on hydralora's router; lora has none
    assert "lora: an A/A comparison (timing noise only): STACK_RAW acts only on a router that reads x" in out
    assert "hydralora: an A/A" not in out
    ns["main"](["--flag", "FUSE_BASE", "--methods", "lora", *args])  # on this CPU it acts
    assert "A/A" not in capsys.readouterr().out
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.0))
    assert ns["inert"]("FUSE_BASE", torch.device("cuda"), plain).startswith("FUSE_BASE fuses the base linears only")
    assert ns["inert"]("STACK_RAW", torch.device("cpu"), plain).startswith("STACK_RAW acts only on a router")


def test_ab_flag_script_says_a_switch_cannot_act_on_conv1d_bases_or_a_frozen_a():
    """From a review: ``inert`` missed two steps a switch cannot change, and the script printed their A/A ratio as a
    saving: ``FUSE_BASE`` on GPT-2's ``Conv1D`` bases (only plain ``nn.Linear`` ones are fused), and ``STACK_RAW``
    where A is frozen beside a training router outside the fused node (``fastpath._train_alike``)."""
    import harness
    from tests.test_methods import tiny_gpt2

    inert = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "ab_flag.py"))["inert"]
    cpu = torch.device("cpu")
    gpt2 = tiny_gpt2()
    harness.attach(gpt2, "lora", r=2, targets="c_attn,c_fc")
    assert inert("FUSE_BASE", cpu, gpt2).startswith("FUSE_BASE fuses only plain nn.Linear bases")
    options = {"r": 2, "heads": 2, "dropout": 0.0, "router_input": "hidden", "train_shared_a": False}
    gpt2 = tiny_gpt2()
    harness.attach(gpt2, "effilora", targets="c_attn,c_fc", **options)
    assert inert("STACK_RAW", cpu, gpt2).startswith("STACK_RAW stacks A and a router only where both train")
    linear = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    harness.attach(linear, "effilora", targets="0,1", **options)
    assert inert("FUSE_BASE", cpu, linear) is None  # plain nn.Linear bases on a CPU: fused
    assert inert("STACK_RAW", cpu, linear) is None  # the fused node stacks them whatever trains
    gpt2 = tiny_gpt2()
    harness.attach(gpt2, "effilora", targets="c_attn,c_fc", **{**options, "train_shared_a": True})
    assert inert("STACK_RAW", cpu, gpt2) is None  # both train: stacked in autograd


def test_ab_flag_script_refuses_bad_input_before_loading(capsys):
    main_ = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "ab_flag.py"))["main"]
    for argv, message in (
        (["--flag", "STACK_RAW", "--model", "no/such-model", "--methods", "hydralor"], "did you mean 'hydralora'"),
        (
            ["--flag", "STACK_RAW", "--model", "no/such-model", "--methods", ""],
            f"no method given; available: {', '.join(METHODS.names())}",
        ),
        (["--flag", "STACK_RAW", "--model", "no/such-model", "--option", "dropout"], "must look like key=value"),
        (["--flag", "NO_SUCH"], "invalid choice"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main_(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_methods_extra_loss_is_in_the_step_bench_times_and_counts(tmp_path, monkeypatch):
    from harness.adapter import attach
    from methods.lora import LoraLinear

    calls = []

    class Penalised(LoraLinear):
        def extra_loss(self):  # noqa: ANN202
            calls.append(self.lora_B.device.type)  # meta: a FLOPs count; cpu: a timed step
            return 0.0 * (self.lora_B @ self.lora_A).sum()

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # registered for this test only
    METHODS.register("penalised_lora")(Penalised)
    options = {"targets": "q_proj,v_proj", "rank": 4}
    config = BenchConfig(methods=("lora", "penalised_lora"), batch_size=2, seq_len=16, rounds=1, warmup=0,
                         peft=False, protocols=(), threads=1, out=str(tmp_path), options=options)  # fmt: skip
    rows = {r["contender"]: r for r in run_bench(config, model=tiny_llama(), tokenizer=CharTokenizer())["rows"]}
    assert "cpu" in calls and "meta" in calls  # the timed step ran it, and the count
    layers = attach(tiny_llama(), Penalised, targets="q_proj,v_proj", r=4).layers.values()
    extra = sum(3 * 2 * w.base.out_features * 4 * w.base.in_features for w in layers)  # B @ A and its gradients
    assert rows["penalised_lora"]["gflops"] - rows["lora"]["gflops"] == pytest.approx(extra / 1e9)


def test_every_contender_the_floor_included_steps_in_training_mode():
    """From a review: a model loaded in eval mode (``from_pretrained``'s) gave an eval-mode floor beside
    train-mode contenders: a base with its own dropout would have timed the floor without it."""
    from harness.bench import build_contenders

    model = tiny_llama().eval()
    config = BenchConfig(methods=("lora",), batch_size=2, seq_len=16, options={"targets": "q_proj,v_proj"})
    _, contenders = build_contenders(config, model, ["lora"], torch.device("cpu"))
    assert {c.name: c.model.training for c in contenders} == {c.name: True for c in contenders}
    assert {c.source for c in contenders} == {"floor", "ours", "peft"}


def test_a_method_without_a_fast_path_is_timed_once_on_the_path_it_takes(tmp_path, monkeypatch):
    from tests.conftest import DeltaOnlyLinear

    class SlowLora(DeltaOnlyLinear):  # delta alone: the reference path, whatever is asked
        pass

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # registered for this test only
    METHODS.register("slow_lora")(SlowLora)
    config = BenchConfig(methods=("lora", "slow_lora"), batch_size=2, seq_len=16, rounds=1, warmup=0, peft=False,
                         protocols=(), threads=1, out=str(tmp_path), options={"targets": "q_proj,v_proj"},
                         reference=True)  # fmt: skip
    report = run_bench(config, model=tiny_llama(), tokenizer=CharTokenizer())
    rows = {r["contender"]: r for r in report["rows"]}
    assert {"lora", "lora reference", "slow_lora"} <= set(rows) and "slow_lora reference" not in rows
    assert rows["slow_lora"]["fast_path"] is False and rows["lora"]["fast_path"] is True
    header = markdown(report).splitlines()[0]  # the table says which path it timed (a review: it did not)
    assert "Ours: timed on the adapters' fast path" in header and "; slow_lora: no fast path." in header
    assert "older reports" not in header
    paths = {r["contender"]: r["fast_path"] for r in csv.DictReader(io.StringIO(csv_text(report)))}
    assert paths["lora"] == "True" and paths["lora reference"] == paths["slow_lora"] == "False"


def test_a_k_option_gives_way_to_a_reducer_variants_drop_ratio():
    """From a review: refusing k with drop_ratio refused `harness bench --option k=4` outright, the default
    variants setting drop_ratio beside it. A SELECTION:DROP_RATIO variant sets K by its ratio; default keeps k."""
    from harness.bench import _variant_options

    BenchConfig(methods=("effilora",), options={"k": "4"}).check_methods()  # was refused
    assert _variant_options({"k": "4", "r": 8}, "importance:0.25") == {
        "r": 8,
        "selection": "importance",
        "drop_ratio": 0.25,
    }
    assert _variant_options({"k": "4", "r": 8}, "default") == {"k": "4", "r": 8}
    assert _variant_options({"k": "4", "r": 8}, "off") == {"r": 8, "reducer": None}


def test_a_bench_without_out_writes_outside_the_committed_results():
    """From a review: the default --out was results/, so the help's own example replaced the committed issue-10
    tables; the default is now the ignored runs/bench/ (and so is the config's)."""
    from harness.bench import BenchConfig
    from harness.cli import build_parser

    args = build_parser().parse_args(["bench", "--methods", "lora"])
    assert Path(args.out) == Path(BenchConfig().out) == Path("runs/bench")
    from harness.cli import EXAMPLES

    assert "--out results" not in EXAMPLES  # no example in the help rewrites the committed tables


def test_a_methods_own_option_is_not_given_to_peft(tmp_path, capsys):
    """From a review: peft's LoRA was built from every --option, so `--methods moslora --option
    mixer_init=orthogonal` failed after the model loaded (unknown option 'mixer_init' for method 'lora')."""
    options = {"mixer_init": "orthogonal", "rank": "4", "targets": "q_proj,v_proj"}
    config = BenchConfig(methods=("moslora",), options=options, batch_size=1, seq_len=8, rounds=1, warmup=0,
                         protocols=(), threads=1, out=str(tmp_path))  # fmt: skip
    rows = {r["contender"]: r for r in run_bench(config, model=tiny_llama())["rows"]}
    assert {"moslora", "peft lora", "peft lora_fa"} <= set(rows)
    assert "not given to it: mixer_init=orthogonal" in capsys.readouterr().err
    from harness.bench import build_contenders

    _, contenders = build_contenders(config, tiny_llama(), ["moslora"], torch.device("cpu"))
    peft = next(c for c in contenders if c.name == "peft lora").config  # the shared options still reach it
    assert peft.r == 4 and set(peft.target_modules) == {"q_proj", "v_proj"}


def test_reducer_variants_whose_k_is_none_or_every_layer_are_left_out_with_a_note(tmp_path, capsys):
    """From a review: on 2 layers the default importance:0.75 (K = round(0.5) = 0) failed after loading with
    'reducer k=0 is outside 1..2', and importance:0.25 (K = 2 = L) was timed as a Reducer row with the Reducer off."""
    config = BenchConfig(methods=("effilora",), batch_size=1, seq_len=8, rounds=1, warmup=0, peft=False,
                         protocols=(), threads=1, out=str(tmp_path))  # fmt: skip
    rows = [r["contender"] for r in run_bench(config, model=tiny_llama(layers=2))["rows"]]
    assert rows == ["floor", "effilora (off)"]
    err = capsys.readouterr().err
    assert "effilora (importance:0.75) left out: reducer drop_ratio=0.75 keeps K = round(2 x 0.25) = 0" in err
    for variant in ("importance:0.25", "random:0.25"):
        assert f"effilora ({variant}) left out: K = 2 of its 2 adapted layers: the Reducer would be off" in err
    rows = [r["contender"] for r in run_bench(config, model=tiny_llama(layers=4))["rows"]]  # K = 3, 3, 1 of 4
    assert rows == ["floor", "effilora (off)", "effilora (importance:0.25, default)", "effilora (random:0.25)",
                    "effilora (importance:0.75)"]  # fmt: skip
    assert "left out" not in capsys.readouterr().err
    # (a review of that fix) an --also row and the unnamed default went around it: K = 0 failed after loading
    also = replace(config, reducer=(), also=("dropout=0",), options={"drop_ratio": "0.75"})
    assert [r["contender"] for r in run_bench(also, model=tiny_llama(layers=2))["rows"]] == ["floor"]
    err = capsys.readouterr().err
    for row in ("effilora (default)", "effilora (dropout=0)"):
        assert f"{row} left out: reducer drop_ratio=0.75 keeps K = round(2 x 0.25) = 0" in err
    plain = replace(config, reducer=(), also=("dropout=0",))  # K = 2 = L: rows that name no Reducer are timed
    rows = [r["contender"] for r in run_bench(plain, model=tiny_llama(layers=2))["rows"]]
    assert rows == ["floor", "effilora", "effilora (dropout=0)"] and "left out" not in capsys.readouterr().err


def test_the_documented_two_layer_command_runs(tmp_path):
    """The README's `harness bench --model meta-llama/Meta-Llama-3-8B --random-weights --layers 2`, at a tiny
    shape: every method, peft, the default --reducer variants."""
    folder = tmp_path / "tiny"
    tiny_llama(layers=4).save_pretrained(folder)  # only its config is read
    argv = ["bench", "--model", str(folder), "--random-weights", "--layers", "2", "--batch", "1", "--seq", "8"]
    argv += ["--rounds", "1", "--warmup", "0", "--protocols", "none", "--threads", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    rows = [r["contender"] for r in json.loads((tmp_path / "o" / "bench.json").read_text())["rows"]]
    assert "effilora (off)" in rows and "peft lora" in rows and not any("importance" in r for r in rows)


def test_a_repeated_reducer_or_also_value_is_refused(capsys):
    """From a review: a repeated value made two contenders of one name, whose timings landed on one row twice."""
    with pytest.raises(ValueError, match=r"--reducer 'off' is given twice"):
        BenchConfig(reducer=("off", "random:0.5", "off"))
    with pytest.raises(ValueError, match=r"--also ' dropout = 0' is given twice"):
        BenchConfig(also=("dropout=0", " dropout = 0"))
    BenchConfig(also=("dropout=0", "dropout=0.1"))  # one option at two values: two contenders
    argv = ["bench", "--model", "no/such-model", "--reducer", "off,off", "--protocols", "none"]
    assert main(argv) == 2  # before the model is looked for
    assert "--reducer 'off' is given twice" in capsys.readouterr().err


def test_every_optimizer_steps_without_weight_decay():
    """From a review: peft's LoRA stepped torch's default weight decay (0.01) while ours step with 0."""
    from harness.bench import build_contenders

    config = BenchConfig(methods=("lora", "lora_fa", "effilora"), batch_size=1, seq_len=8, reducer=("off",))
    _, contenders = build_contenders(config, tiny_llama(), list(config.methods), torch.device("cpu"))
    decay = {c.name: [g["weight_decay"] for g in c.optimizer.param_groups] for c in contenders if c.optimizer}
    assert set(decay) == {"lora", "lora_fa", "effilora (off)", "peft lora", "peft lora_fa"}
    assert all(d == [0.0] * len(d) and d for d in decay.values()), decay


def test_bench_json_records_the_code_it_timed(tmp_path, monkeypatch):
    """From a review: bench.json kept no commit, method versions or plugin hashes, as run records do."""
    import sys

    from harness import registry
    from harness.records import git_state

    METHODS.names()
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # registered for this test only
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", {})
    monkeypatch.setattr(registry, "_PLUGIN_OF", {})
    plugin = tmp_path / "bench_plug.py"
    plugin.write_text(
        "from harness import METHODS\nfrom methods.lora import LoraLinear\n\n"
        "@METHODS.register('bench_plug')\nclass BenchPlug(LoraLinear):\n    version = '3'\n"
    )
    modules = set(sys.modules)
    try:
        registry.load_plugin(plugin)
        config = BenchConfig(methods=("lora", "bench_plug"), batch_size=1, seq_len=8, rounds=1, warmup=0,
                             peft=False, protocols=(), threads=1, out=str(tmp_path / "out"))  # fmt: skip
        run_bench(config, model=tiny_llama())
    finally:
        for name in set(sys.modules) - modules:  # the plugin's module, not what it imported first
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
                del sys.modules[name]
    env = json.loads((tmp_path / "out" / "bench.json").read_text())["environment"]
    assert env["method_versions"] == {"lora": "1", "bench_plug": "3"}
    [entry] = env["plugins"]
    assert entry["file"] == "bench_plug.py" and len(entry["sha256"]) == 64
    assert {k: env[k] for k in ("git_commit", "git_dirty")} == git_state() and env["harness_version"]


def test_an_also_or_reducer_value_that_sets_what_another_does_is_refused_and_rank_gives_way_to_r():
    """From a review: ``--rank 8 --also r=2`` timed rank 8 under the label r=2 (rank won in make_config);
    ``--reducer importance:0.25,importance:.25`` and ``--also dropout=0 --also dropout=0.0`` timed one step twice."""
    from harness.bench import _with_also

    assert _with_also({"rank": "8", "dropout": "0.1"}, "r=2") == {"dropout": "0.1", "r": "2"}
    assert _with_also({"r": "8"}, "rank=2") == {"rank": "2"}
    assert _with_also({"k": "4"}, "drop_ratio=0.5") == {"drop_ratio": "0.5"}
    BenchConfig(methods=("lora",), options={"rank": "8"}, also=("r=2",)).check_methods()
    for kwargs, message in (
        ({"reducer": ("importance:0.25", "importance:.25")}, r"--reducer 'importance:.25' is what 'importance:0.25'"),
        ({"also": ("dropout=0", "dropout=0.0")}, r"--also 'dropout=0.0' is what 'dropout=0' gives lora"),
        ({"also": ("dropout=0.05",)}, r"--also 'dropout=0.05' is lora's setting already"),
        ({"also": ("r=8",), "options": {"rank": "8"}}, r"--also 'r=8' is lora's setting already"),
    ):
        methods = ("effilora",) if "reducer" in kwargs else ("lora",)
        with pytest.raises(ValueError, match=message):
            BenchConfig(methods=methods, **kwargs)


def test_a_missing_model_folder_and_a_seq_past_learned_positions_are_refused_in_one_line(tmp_path, capsys):
    """From a review: ``--model ./nowhere`` was told about the Hugging Face hub; ``--seq`` past GPT-2's learned
    position table crashed with an IndexError in the model."""
    from tests.test_methods import tiny_gpt2

    argv = ["bench", "--model", str(tmp_path / "nowhere"), "--methods", "lora", "--protocols", "none", "--no-peft"]
    assert main(argv) == 2
    assert f"--model {str(tmp_path / 'nowhere')!r}: no such folder; give a model folder" in capsys.readouterr().err
    config = BenchConfig(methods=("lora",), rounds=1, warmup=0, batch_size=1, seq_len=8, protocols=(), peft=False,
                         options={"targets": "c_attn"})  # fmt: skip
    positions = tiny_gpt2().config.n_positions
    with pytest.raises(ValueError, match=rf"--seq {positions + 1} is longer than the model's {positions} positions"):
        run_bench(replace(config, seq_len=positions + 1), model=tiny_gpt2())


def test_a_reducer_option_given_to_also_changes_the_methods_defaults_not_a_variants():
    """From a review: built on the Reducer variant it is compared with, --also reducer=random was refused as the
    method's own setting, reducer=off as contradicting the variant's shortcuts, and on a two-layer model (every
    Reducer-on variant left out) k=1 failed after loading."""
    BenchConfig(methods=("effilora",), reducer=("off", "importance:0.25"), also=("reducer=random",)).check_methods()
    with pytest.raises(ValueError, match=r"--also 'reducer=random' is what '--reducer random:0.25' gives effilora"):
        BenchConfig(methods=("effilora",), also=("reducer=random",))  # the default variants time it already
    BenchConfig(methods=("effilora",), reducer=("importance:0.25",), also=("reducer=off",)).check_methods()
    config = BenchConfig(methods=("effilora",), also=("k=1", "dropout=0"), reducer=("off", "importance:0.25"),
                         rounds=1, warmup=0, batch_size=1, seq_len=8, protocols=(), peft=False)  # fmt: skip
    rows = {r["contender"]: r for r in run_bench(config, model=tiny_llama())["rows"]}
    assert (
        rows["effilora (k=1)"]["reducer"] == ""
        and rows["effilora (k=1)"]["baseline"] == "effilora (importance:0.25, default)"
    )
    assert rows["effilora (dropout=0)"]["baseline"] == "effilora (importance:0.25, default)"
    # the Reducer off takes its options with it; an --also that times a --reducer row again is refused; one whose
    # K is every layer (the Reducer off, under its label) is left out with a note (from a review of the fix)
    BenchConfig(methods=("effilora",), options={"k": "2"}, reducer=("importance:0.25",), also=("reducer=off",))
    with pytest.raises(ValueError, match=r"--also 'reducer=off' is what '--reducer off' gives effilora"):
        BenchConfig(methods=("effilora",), reducer=("off", "importance:0.25"), also=("reducer=off",))
    two = replace(config, also=("k=2",), reducer=("off",))
    assert "effilora (k=2)" not in {r["contender"] for r in run_bench(two, model=tiny_llama(layers=2))["rows"]}


def test_a_reducer_option_naming_a_selection_gives_way_to_a_variants_or_an_also_items():
    """From a review: ``harness bench --methods lora --option reducer=importance --no-peft`` was refused
    ("reducer=importance and selection=random both set the selection"), the default --reducer variants setting a
    selection beside it, and so was ``--also selection=random`` beside it. A variant or a Reducer --also item
    replaces the method's Reducer settings: each row times the selection its label says."""
    from harness.bench import _variant_options, _with_also, build_contenders

    BenchConfig(methods=("lora",), options={"reducer": "importance"}, peft=False)  # was refused
    config = BenchConfig(methods=("lora",), options={"reducer": "importance"}, also=("selection=random",),
                         reducer=("off", "importance:0.25", "random:0.5"), batch_size=1, seq_len=8, protocols=(),
                         peft=False)  # fmt: skip
    _, contenders = build_contenders(config, tiny_llama(), ["lora"], torch.device("cpu"))
    timed = {c.name: c.config.reducer and (c.config.reducer.selection, c.config.reducer.drop_ratio)
             for c in contenders if c.source == "ours"}  # fmt: skip
    assert timed == {
        "lora (off)": None,
        "lora (importance:0.25, default)": ("importance", 0.25),
        "lora (random:0.5)": ("random", 0.5),
        "lora (selection=random)": ("random", 0.25),
    }
    # the other way round, and a dict of Reducer fields: the fields the variant or the item sets give way
    BenchConfig(methods=("effilora",), options={"selection": "importance"}, reducer=("off",), also=("reducer=random",))
    assert _with_also({"selection": "importance", "k": "2"}, "reducer=random") == {"k": "2", "reducer": "random"}
    assert _with_also({"reducer": {"selection": "random", "k": 2}}, "drop_ratio=0.5") == {
        "reducer": {"selection": "random"},
        "drop_ratio": "0.5",
    }
    assert _variant_options({"reducer": {"selection": "random", "k": 2, "interval": 5}}, "importance:0.25") == {
        "reducer": {"interval": 5},
        "selection": "importance",
        "drop_ratio": 0.25,
    }


def _timed(contender: str, method: str, reducer: str, step_s: float, variant: str = "", source: str = "ours") -> dict:
    """A made-up train row as ``run_bench`` hands ``relate`` (three rounds at ``step_s``, 1 GFLOP a second)."""
    return {
        "kind": "train", "contender": contender, "source": source, "method": method, "reducer": reducer,
        "fast_path": source == "ours", "variant": variant, "baseline": "", "step_s": step_s, "hook_s": 0.0,
        "cpu_s": step_s, "round_s": [step_s] * 3, "gflops": step_s, "hook_gflops": 0.0,
    }  # fmt: skip


def test_an_also_row_neither_replaces_the_off_row_nor_saves_against_the_defaults_off_row():
    """From a review: ``--also`` rows keep the Reducer label of the row they change, so an ``(off, dropout=0)`` row
    replaced the off row every Reducer variant's saving was taken against, and a Reducer-labelled ``--also`` row
    got a "saving" against the off row at the default options, the option's own effect included."""
    rows = relate([
        _timed("floor", "", "", 1.0, source="floor"),
        _timed("effilora (off)", "effilora", "off", 2.0),
        _timed("effilora (random:0.5)", "effilora", "random:0.5", 1.8),
        _timed("effilora (off, dropout=0)", "effilora", "off", 1.5, "dropout=0"),  # after the off row it changes
        _timed("hydralora (off)", "hydralora", "off", 2.0),
        _timed("hydralora (default)", "hydralora", "default", 1.9),
        _timed("hydralora (dropout=0)", "hydralora", "default", 1.4, "dropout=0"),  # no off row at dropout 0
        _timed("moslora (off, r=2)", "moslora", "off", 1.6, "r=2"),
        _timed("moslora (random:0.5, r=2)", "moslora", "random:0.5", 1.5, "r=2"),  # its own option's off row
    ])  # fmt: skip
    saves = {r["contender"]: r["reducer_saves_s"] for r in rows}
    assert saves["effilora (random:0.5)"] == pytest.approx(0.2)  # against effilora (off), not its dropout=0 row
    assert saves["hydralora (default)"] == pytest.approx(0.1)
    assert saves["hydralora (dropout=0)"] is None  # 0.6 before: dropout's saving, not the Reducer's
    assert saves["moslora (random:0.5, r=2)"] == pytest.approx(0.1)
    gflops = {r["contender"]: r["reducer_saves_gflops"] for r in rows}
    assert gflops["effilora (random:0.5)"] == pytest.approx(0.2) and gflops["hydralora (dropout=0)"] is None
    assert saves["effilora (off)"] is saves["effilora (off, dropout=0)"] is saves["floor"] is None


def _plotted(scores: bool) -> dict:
    """A made-up report for ``figure``: long contender names, and scoring protocols (a second panel) or none."""
    train = [
        {**_timed(name, "effilora", "", 2.0 + i / 10), "step_min_s": 1.9, "step_max_s": 2.6, "x_floor": 1.2}
        for i, name in enumerate(["effilora (importance:0.25, dropout=0)", "effilora (random:0.25) reference"])
    ]
    train.insert(0, {**_timed("floor", "", "", 1.7, source="floor"), "step_min_s": 1.6, "step_max_s": 1.8})
    train[0]["x_floor"] = 1.0
    protocols = [
        {"kind": "score", "contender": p, "step_s": 3.0, "step_min_s": 2.5, "step_max_s": 4.0, "examples": 8}
        for p in ("cloze", "choice")
    ]
    return {
        "model": "meta-llama/Meta-Llama-3-8B", "model_dtype": "bfloat16",
        "config": {"batch_size": 16, "seq_len": 256, "rounds": 9},
        "environment": {"device": "NVIDIA H200", "torch_threads": 16, "torch": "2.11.0+cu130"},
        "adapter": {"r": 16, "alpha": 32.0, "dropout": 0.05, "targets": ["q_proj", "v_proj"], "heads": 4},
        "rows": train + (protocols if scores else []),
    }  # fmt: skip


@pytest.mark.parametrize("scores", [False, True], ids=["one panel", "with scoring"])
def test_bench_png_names_the_shape_it_timed_and_its_x_label_fits_the_figure(scores):
    """From a review: bench.png's title named the model and device only (not the batch x seq, dtype and threads
    bench.md's header gives), and its x label ran past the 7-inch figure ("...(median; step min" in the PNG)."""
    import matplotlib.pyplot as plt

    report = _plotted(scores)
    fig = figure(report)
    try:
        ax = fig.axes[0]
        [title] = [t for t in fig.texts + [a.title for a in fig.axes] if t.get_text()]  # one, over both panels
        assert title.get_text() == plot_title(report)
        for said in ("meta-llama/Meta-Llama-3-8B", "NVIDIA H200", "batch 16 x 256 tokens", "bfloat16", "16 threads"):
            assert said in title.get_text(), said
        assert "r=16" in title.get_text() and "dropout 0.05" in title.get_text()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for text in (ax.xaxis.label, title):
            box = text.get_window_extent(renderer)
            assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, text.get_text()
            assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, text.get_text()
        if scores:  # and not into the scoring panel beside it
            assert ax.xaxis.label.get_window_extent(renderer).x1 <= fig.axes[1].get_tightbbox(renderer).x0
    finally:
        plt.close(fig)


def test_bench_png_title_clears_a_tall_plot_and_wraps_a_long_model_name():
    """From a review of the fix above: the title over both panels ran into the plot's top once a report had ~45
    rows (tight_layout left it at 98% of the height), and a long model name or path ran past both edges."""
    import matplotlib.pyplot as plt

    report = _plotted(scores=False)
    report["model"] = "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T (random weights), 2 layers, from a long path"
    report["rows"] = report["rows"][:1] + [
        {**report["rows"][1], "contender": f"effilora (importance:0.25, dropout=0, r={i})"} for i in range(57)
    ]
    fig = figure(report)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        [title] = [t for t in fig.texts if t.get_text()]
        box = title.get_window_extent(renderer)
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
        assert box.y0 >= fig.axes[0].get_window_extent(renderer).y1  # above the plot's frame, not across it
    finally:
        plt.close(fig)


def test_bench_png_whiskers_span_the_rounds_totals_and_the_scoring_panel_has_the_tables_min_max():
    """From a review: a Reducer row's bar is its total (step + that round's scoring) over the floor, but its whiskers
    were the step's own min-max offsets about that total, matching no measured round (effilora (importance:0.25,
    default): 1.645 drawn [1.466, 10.110]); and the scoring panel drew no spread where bench.md prints one."""
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    report = _plotted(scores=True)
    floor = {**_timed("floor", "", "", 1.0, source="floor"), "step_min_s": 1.0, "step_max_s": 1.0, "x_floor": 1.0}
    reducer = _timed("effilora (importance:0.25, default)", "effilora", "importance:0.25", 1.1)
    reducer |= {"round_s": [1.0, 1.2, 1.1], "step_min_s": 1.0, "step_max_s": 1.2, "hook_s": 0.3}
    reducer |= {"hook_round_s": [0.1, 0.5, 0.3], "x_floor": 1.4}  # rounds' totals 1.1, 1.7, 1.4
    report["rows"] = [floor, reducer, *report["rows"][3:]]
    fig = figure(report)
    try:
        [train_bars] = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
        spans = [sorted(x for x, _ in segment) for segment in train_bars.lines[2][0].get_segments()]
        assert spans == [pytest.approx([1.0, 1.0]), pytest.approx([1.1, 1.7])]  # was [1.3, 1.5]: step spread + 0.3
        assert "min-max over rounds" in fig.axes[0].get_xlabel()
        [score_bars] = [c for c in fig.axes[1].containers if isinstance(c, ErrorbarContainer)]
        spans = [sorted(y for _, y in segment) for segment in score_bars.lines[2][0].get_segments()]
        assert spans == [pytest.approx([2.5, 4.0])] * 2  # bench.md's "3.000 [2.500-4.000]"
        assert "min-max" in fig.axes[1].get_ylabel()
    finally:
        plt.close(fig)


def _rounds_report(rounds: int) -> dict:
    """A made-up report for ``markdown`` whose contenders were timed over ``rounds`` rounds, an ``--also`` row too."""

    def timed(contender: str, method: str, step_s: list[float], **more) -> dict:
        row = _timed(contender, method, "", statistics.median(step_s), source="floor" if method == "" else "ours")
        return row | {"round_s": step_s, "step_min_s": min(step_s), "step_max_s": max(step_s), "peak_mb": 10.0,
                      "state_mb": 1.0, **more}  # fmt: skip

    floor = [1.0 + i / 100 for i in range(rounds)]
    rows = relate([
        timed("floor", "", floor),
        timed("lora", "lora", [1.1 * f + (i % 2) / 50 for i, f in enumerate(floor)]),
        timed("lora (dropout=0)", "lora", [1.05 * f for f in floor], variant="dropout=0", baseline="lora"),
    ])  # fmt: skip
    return {
        "model": "tiny", "config": {"batch_size": 1, "seq_len": 8, "rounds": rounds},
        "environment": {"device": "cpu", "torch_threads": 1, "torch": "2"}, "rows": rows,
    }  # fmt: skip


def test_below_five_rounds_bench_md_gives_the_paired_min_max_not_a_95_percent_interval():
    """From a review: with fewer than 5 rounds the "95% bootstrap interval" bench.md printed is the rounds' min-max
    (``median_interval([1, 2, 3])`` is ``(1.0, 3.0)``), which holds the median only 75% of the time at 3 rounds."""
    assert median_interval([1.0, 2.0, 3.0]) == (1.0, 3.0)
    md = markdown(_rounds_report(3))
    assert "95% bootstrap" not in md and "(95%)" not in md
    assert "no 95% interval from 3 rounds" in md and "holds the median 75% of the time" in md
    assert "| x floor, paired [min-max] |" in md and "round: median [min-max]:" in md
    [lora] = [line for line in md.splitlines() if line.startswith("| lora |")]
    assert re.search(r"\| \d\.\d{3} \[\d\.\d{3}-\d\.\d{3}\] \|", lora) and "(" not in lora  # no interval
    assert re.search(r"^- lora \(dropout=0\): \d\.\d{3} x lora \[", md, re.M)
    md = markdown(_rounds_report(5))  # from 5 rounds as before (the committed reports, 9 to 41 rounds, unchanged)
    assert "no 95% interval" not in md and "| x floor, paired (95%) [min-max] |" in md
    assert "(paired: the median (95% bootstrap interval, rounds resampled) [min-max] over rounds" in md
    assert re.search(r"^- lora \(dropout=0\): \d\.\d{3} x lora \(\d\.\d{3}-\d\.\d{3}\) \[", md, re.M)


def _tiny_gemma3(folder: Path) -> Path:
    """A tiny Gemma 3 config saved to ``folder``: its vocabulary is in its text config, and a vision tower whose
    layers the default targets also match sits beside the language model (the loss on text never reaches it)."""
    from transformers import Gemma3Config

    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 256}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4).save_pretrained(folder)
    return folder


def test_a_model_whose_vocabulary_is_in_its_text_config_is_benched(tmp_path):
    """From a review: the random batch read ``model.config.vocab_size``, which a Gemma 3 config keeps in its text
    config, so `harness bench --model <a Gemma 3 folder> --random-weights` ended in an AttributeError traceback."""
    folder = _tiny_gemma3(tmp_path / "gemma3")
    argv = ["bench", "--model", str(folder), "--random-weights", "--methods", "lora", "--no-peft", "--batch", "2"]
    argv += ["--seq", "16", "--rounds", "1", "--warmup", "0", "--protocols", "none", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    rows = json.loads((tmp_path / "o" / "bench.json").read_text())["rows"]
    assert [r["contender"] for r in rows] == ["floor", "lora"]


def test_peft_lora_fa_is_left_out_with_a_note_where_its_targets_get_no_gradient(tmp_path, capsys):
    """From a review: on a Gemma 3 model the default targets also adapt the vision tower, whose adapters get no
    gradient from a text loss, and peft's LoRA-FA optimizer then failed in its step (TypeError: unsupported operand
    ... 'NoneType' and 'Tensor'), ending the bench. It is left out with a note naming such a layer; ours and peft's
    LoRA are timed, and targets that name only the language model's layers time peft's LoRA-FA too."""
    folder = _tiny_gemma3(tmp_path / "gemma3")
    argv = ["bench", "--model", str(folder), "--random-weights", "--methods", "lora,lora_fa", "--batch", "2"]
    argv += ["--seq", "16", "--rounds", "1", "--warmup", "0", "--protocols", "none", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    rows = json.loads((tmp_path / "o" / "bench.json").read_text())["rows"]
    assert [r["contender"] for r in rows] == ["floor", "lora", "lora_fa", "peft lora"]
    err = capsys.readouterr().err
    assert "note: peft lora_fa left out: 3 of its adapted layers get no gradient from the loss" in err
    assert "model.vision_tower.encoder.layers.0" in err and "Traceback" not in err
    language = ["--targets", ".*language_model.*_proj", "--out", str(tmp_path / "o2")]
    assert main([*argv, *language]) == 0
    rows = json.loads((tmp_path / "o2" / "bench.json").read_text())["rows"]
    assert [r["contender"] for r in rows] == ["floor", "lora", "lora_fa", "peft lora", "peft lora_fa"]
    assert "left out" not in capsys.readouterr().err


def test_the_reducer_s_rollouts_at_suppression_0_skip_the_suppressed_layers_as_run_records_count_them(tmp_path):
    """From a review: the Reducer's scoring FLOPs counted every layer's adapter in every rollout, while at
    ``suppression=0`` a rollout skips its ``n_suppressed`` layers' adapters (a wrapper at gate 0 returns its base's
    output) and run records count it so (``hook_forward_flops`` with those wrappers skipped): ``hook_gflops`` (and
    the total, and the Reducer's GFLOPs saving) was the same at 0 as at 0.25."""
    from harness.accounting import hook_forward_flops
    from harness.adapter import attach
    from harness.config import make_config
    from tasks.lm import CausalLMRecipe
    from tests.conftest import meta_of

    config = BenchConfig(methods=("effilora",), batch_size=2, seq_len=16, rounds=1, warmup=0, peft=False,
                         reducer=("importance:0.25",), also=("suppression=0",), protocols=(), threads=1,
                         out=str(tmp_path))  # fmt: skip
    rows = {r["contender"]: r for r in run_bench(config, model=tiny_llama(), tokenizer=CharTokenizer())["rows"]}
    at_default, at_0 = rows["effilora (importance:0.25, default)"], rows["effilora (suppression=0)"]
    assert at_0["hook_gflops"] < at_default["hook_gflops"]
    cfg = make_config(METHODS.get("effilora").config_cls, {"suppression": "0"}, "effilora")
    adapter = attach(tiny_llama(), "effilora", config=cfg)  # 4 layers alike: which n_suppressed of them, the same
    with adapter.reducer.suppressed(range(adapter.reducer.n_suppressed)):
        skipped = adapter.skipped_layers()  # what the training loop keys a rollout's count by
    assert skipped
    recipe = CausalLMRecipe(CharTokenizer(), cutoff_len=config.seq_len, train_on_inputs=True)
    shape = [config.batch_size, config.seq_len, config.seq_len]
    forward = hook_forward_flops(
        meta_of(tiny_llama()), "effilora", cfg, [{"shape": shape, "skipped": skipped}], recipe, at_0["fast_path"]
    )[0]
    counted = forward * cfg.reducer.rollouts / cfg.reducer.interval
    assert at_0["hook_gflops"] * 1e9 == pytest.approx(counted, rel=1e-12)


def test_a_tilde_in_out_is_the_home_s(tmp_path, monkeypatch, capsys):
    """From a re-review: ``harness bench --out=~/b`` (the shell leaves it as it is) wrote a folder ``./~/b`` and said
    ``wrote ~/b/bench.csv``, as ``run`` and ``leaderboard`` did before theirs were expanded."""
    import harness.bench

    seen = {}

    def fake_run_bench(config):
        seen["out"] = config.out
        raise SystemExit(0)

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(harness.bench, "run_bench", fake_run_bench)
    with pytest.raises(SystemExit):
        main(["bench", "--methods", "lora", "--random-weights", "--protocols", "none", "--out=~/b"])
    assert seen["out"] == str(tmp_path / "b")


def test_a_task_that_scores_no_causal_lm_is_refused_before_anything_loads(tmp_path, capsys, monkeypatch):
    """From a review: ``harness bench --task multimodal --protocols native`` (or a plugin task's protocol) timed every
    training step, then scored bench's causal LM with the task's ``evaluate`` and ended in a traceback (an
    AttributeError on ``vision_config``; a plugin's float inputs in an embedding), writing nothing; ``--task
    diffusion`` was refused for its default protocols with the advice to pass ``--protocols native``, which ended so
    too. A protocol its task refuses (lm-eval without lm-eval installed) was refused only after the timing too."""
    import importlib.util

    out = tmp_path / "bench"
    argv = ["bench", "--model", "no/such-model", "--methods", "lora", "--no-peft", "--out", str(out)]  # none loads
    for task, protocols in (("diffusion", []), ("multimodal", ["--protocols", "native"])):
        assert main([*argv, "--task", task, *protocols]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--task {task}: bench times scoring on the causal LM it loads" in err
        assert "bench can score commonsense (choice, generate, lm-eval, cloze): pass --task with one of those" in err
    assert not out.exists()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    assert main([*argv, "--protocols", "lm-eval"]) == 2
    assert "the lm-eval protocol needs lm-eval: pip install" in capsys.readouterr().err


def test_a_reducer_option_a_variant_replaces_is_named_in_a_note_and_in_the_report(tmp_path, capsys):
    """From a review: ``harness bench --methods effilora --option drop_ratio=0.5`` timed drop_ratio=0.5 in no row
    (every default --reducer variant replaces it) while bench.json's config carried it, and nothing said so."""
    config = BenchConfig(methods=("effilora",), options={"drop_ratio": "0.5", "interval": "5"}, batch_size=1,
                         seq_len=8, rounds=2, warmup=0, peft=False, protocols=(), reducer=("off", "importance:0.25"),
                         threads=1, out=str(tmp_path))  # fmt: skip
    report = run_bench(config, model=tiny_llama())
    rows = ["effilora (off)", "effilora (importance:0.25)"]
    err = capsys.readouterr().err
    assert f"note: the --reducer variants replace Reducer options given: drop_ratio=0.5 in {', '.join(rows)}; " in err
    assert "interval=5 in effilora (off);" in err  # the Reducer off replaces every one; importance:0.25 keeps it
    assert report["config"]["options"] == {"drop_ratio": "0.5", "interval": "5"}  # as given
    assert report["config"]["options_replaced"] == {"drop_ratio=0.5": rows, "interval=5": ["effilora (off)"]}
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["config"]["options_replaced"] == report["config"]["options_replaced"]
    assert f"Options not timed as given: `drop_ratio=0.5` in {', '.join(rows)}; " in (tmp_path / "bench.md").read_text()
    # (fix 5) each row keeps its scoring rounds per step, round by round
    scored = next(r for r in report["rows"] if r["contender"] == "effilora (importance:0.25)")
    assert len(scored["hook_round_s"]) == 2 and statistics.median(scored["hook_round_s"]) == pytest.approx(
        scored["hook_s"]
    )
    # --reducer default times the options as given: nothing replaced, no note
    from harness.bench import build_contenders

    build_contenders(replace(config, reducer=("default",)), tiny_llama(), ["effilora"], torch.device("cpu"))
    assert "replace Reducer options" not in capsys.readouterr().err


def test_a_seq_past_an_opt_or_gpt_neo_learned_position_table_is_refused_and_a_rotary_model_runs_past(tmp_path):
    """From a review: the --seq check read only GPT-2's ``n_positions``; an OPT or a GPT-Neo (a learned table of
    ``max_position_embeddings``) ended in an IndexError after loading. A Llama's rotary positions run past theirs."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM, OPTConfig, OPTForCausalLM

    from harness.bench_contenders import learned_positions

    torch.manual_seed(0)
    opt = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                   num_attention_heads=2, max_position_embeddings=8, word_embed_proj_dim=16))  # fmt: skip
    neo = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2,
                                         attention_types=[[["global"], 2]], max_position_embeddings=8,
                                         bos_token_id=0, eos_token_id=0))  # fmt: skip
    assert learned_positions(opt) == 8  # its table has 10 rows, the first 2 its offset
    config = BenchConfig(methods=("lora",), rounds=1, warmup=0, batch_size=1, seq_len=9, protocols=(), peft=False,
                         options={"targets": "q_proj,v_proj"}, out=str(tmp_path))  # fmt: skip
    for model in (opt, neo):
        with pytest.raises(ValueError, match=r"--seq 9 is longer than the model's 8 positions; give --seq 8 or less"):
            run_bench(config, model=model)
    assert learned_positions(tiny_llama(context=8)) is None  # rotary: not refused, as before
    from harness.bench import build_contenders

    _, contenders = build_contenders(replace(config, seq_len=12), tiny_llama(context=8), ["lora"], torch.device("cpu"))
    for c in contenders:  # the floor and lora step 12 tokens
        c.step()


def test_ab_flag_script_times_the_reducer_the_options_set(tiny_model, capsys, monkeypatch):
    """From a review: ab_flag built every method with ``--reducer off``, which dropped a Reducer option
    (``--option k=1``) while its header printed the options as used."""
    kept_freed_memory(monkeypatch)
    ns = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "ab_flag.py"))
    args = ["--flag", "STACK_RAW", "--model", str(tiny_model), "--random-weights", "--batch", "1", "--seq", "4"]
    ns["main"]([*args, "--methods", "effilora", "--option", "k=1", "--option", "dropout=0", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "{'k': '1', 'dropout': '0'}" in out and "\neffilora " in out and "(off)" not in out
    assert ns["reducer_variant"]({"dropout": "0"}) == ("off",)  # no Reducer option: the Reducer off, as before
    assert ns["reducer_variant"]({"reducer": "random"}) == ns["reducer_variant"]({"k": "1"}) == ()
    # a re-review: a K of every layer (the Reducer off) left the method out, and nothing was compared
    ns["main"]([*args, "--methods", "effilora", "--option", "k=2", "--option", "dropout=0", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "\neffilora " in out and "effilora: STACK_RAW=False over STACK_RAW=True, paired: " in out


def test_a_reducer_rows_paired_ratio_adds_each_rounds_own_scoring_time():
    """From a review: the paired ratio (and its 95% interval) added a Reducer row's median scoring round to every
    round, not round k's own, so the interval left the scoring's spread out. A report that kept no per-round scoring
    times (the committed ones) is rendered as before."""
    floor = _timed("floor", "", "", 1.0, source="floor")
    row = _timed("effilora (importance:0.25)", "effilora", "importance:0.25", 1.0) | {"hook_s": 0.3}
    assert paired_ratios(row, floor) == pytest.approx([1.3, 1.3, 1.3])  # an older report: the median each round
    row["hook_round_s"] = [0.1, 0.5, 0.3]
    assert paired_ratios(row, floor) == pytest.approx([1.1, 1.5, 1.3])
    floor["hook_round_s"] = [0.0, 0.0, 0.0]
    [_, related] = relate([floor, row])
    assert related["x_floor_paired"] == pytest.approx(1.3)
    assert related["x_floor_paired_lo"] < 1.3 < related["x_floor_paired_hi"]  # one seen value was the interval
    assert (related["x_floor_paired_min"], related["x_floor_paired_max"]) == pytest.approx((1.1, 1.5))
    # paired with a baseline that scores too: its own rounds' scoring, round by round
    other = _timed("effilora (dropout=0)", "effilora", "importance:0.25", 1.0) | {"hook_s": 0.3}
    other |= {"hook_round_s": [0.5, 0.1, 0.3], "variant": "dropout=0", "baseline": row["contender"]}
    assert paired_ratios(other, row) == pytest.approx([1.5 / 1.1, 1.1 / 1.5, 1.0])


def test_a_roberta_style_position_table_counts_from_past_its_padding_index():
    """From a re-review: RoBERTa's family (XLM-R, CamemBERT) numbers positions from ``padding_idx + 1``, so the
    last two --seq values its table seemed to hold passed the check and crashed inside the model."""
    from transformers import RobertaConfig, RobertaForCausalLM

    from harness.bench_contenders import learned_positions

    size = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = RobertaConfig(**size, intermediate_size=32, max_position_embeddings=34, is_decoder=True, pad_token_id=1)
    model = RobertaForCausalLM(config)
    assert learned_positions(model) == 32
    model(torch.full((1, 32), 5))  # the longest it holds runs
    with pytest.raises((IndexError, RuntimeError)):
        model(torch.full((1, 33), 5))


def test_a_prophetnet_position_table_holds_one_position_fewer_its_predicting_stream_reads_the_next_row(tmp_path):
    """From a review: ProphetNet's decoder embeds each position and, for its predicting stream, the row after it,
    so --seq one past the longest that runs passed the check and ended in an IndexError inside the model."""
    from transformers import AutoModelForCausalLM, ProphetNetConfig

    from harness.bench import build_contenders
    from harness.bench_contenders import learned_positions

    torch.manual_seed(0)
    size = {"vocab_size": 50, "hidden_size": 16, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "ngram": 2}
    heads = {"num_encoder_layers": 1, "num_decoder_layers": 1, "num_encoder_attention_heads": 2}
    config = ProphetNetConfig(**size, **heads, num_decoder_attention_heads=2, max_position_embeddings=12,
                              pad_token_id=1, num_buckets=4, relative_max_distance=8)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)  # bench's loader: ProphetNetForCausalLM, the decoder alone
    assert learned_positions(model) == 9  # 12 rows, less positions 0..1 (padding_idx 1) and the row read after 10
    model(input_ids=torch.full((1, 9), 5), labels=torch.full((1, 9), 5))  # the longest it holds runs
    with pytest.raises(IndexError):
        model(input_ids=torch.full((1, 10), 5), labels=torch.full((1, 10), 5))
    bench = BenchConfig(methods=("lora",), rounds=1, warmup=0, batch_size=1, seq_len=10, protocols=(), peft=False,
                        options={"targets": "query_proj,value_proj"}, out=str(tmp_path))  # fmt: skip
    with pytest.raises(ValueError, match=r"--seq 10 is longer than the model's 9 positions; give --seq 9 or less"):
        run_bench(bench, model=model)
    _, contenders = build_contenders(replace(bench, seq_len=9), model, ["lora"], torch.device("cpu"))
    for c in contenders:  # the floor and lora step 9 tokens
        c.step()


def test_bench_with_protocols_none_refuses_an_unknown_task_or_a_missing_data_dir_before_the_model_loads(
    tmp_path, capsys
):
    """From a review: ``harness bench --protocols none`` took any ``--task`` and ``--data-dir``: a mistyped task
    name or data folder passed silently, where with protocols the registry names the valid tasks."""
    nowhere = str(tmp_path / "nowhere")  # the model: loading it would fail, so each refusal comes before it loads
    argv = ["bench", "--model", nowhere, "--methods", "lora", "--no-peft", "--protocols", "none"]
    argv += ["--out", str(tmp_path)]
    assert main([*argv, "--task", "commonsens"]) == 2
    err = capsys.readouterr().err
    said = "unknown task 'commonsens' (did you mean 'commonsense'?); available: commonsense"
    assert err.count("\n") == 1 and said in err
    (tmp_path / "a-file").write_text("")
    for data, state in (("no-data", "does not exist"), ("a-file", "is a file, not a folder")):
        assert main([*argv, "--data-dir", str(tmp_path / data)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--data-dir {str(tmp_path / data)!r} {state}; pass the task's data" in err
    # a task bench cannot score is still taken with --protocols none (README), and a data folder that is there
    assert main([*argv, "--task", "diffusion", "--data-dir", str(tmp_path)]) == 2
    assert f"--model {nowhere!r}: no such folder" in capsys.readouterr().err  # it got as far as loading


@pytest.mark.parametrize("seed", [-1, 2**32, 10**23])
def test_a_bench_seed_out_of_range_is_refused_naming_the_flag(seed, capsys):
    """From a fuzz review: bench's --seed was never checked: -1 was taken (run's --seeds refuses it) and a huge one
    failed as torch's "Overflow when unpacking long long", naming no flag."""
    with pytest.raises(ValueError, match=rf"--seed {seed} is out of range; a seed is an integer in 0\.\.4294967295"):
        BenchConfig(seed=seed)
    assert main(["bench", "--seed", str(seed), "--methods", "lora", "--protocols", "none"]) == 2
    assert "--seed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you tried"),
    ],
)
def test_a_bench_out_of_memory_says_so_in_one_line(error, capsys, monkeypatch):
    """From a fuzz review: `harness bench --batch 64 --seq 8192` ended in the CPU allocator's traceback (only
    ValueError and OSError were said in one line)."""
    import harness.bench as bench

    def fail(*args):
        raise error

    monkeypatch.setattr(bench, "_run", fail)
    assert main(["bench", "--batch", "64", "--seq", "8192", "--methods", "lora", "--protocols", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch 64 --seq 8192 does not fit in memory" in err[0], err


def test_a_model_that_does_not_fit_is_said_to_be_the_model_not_the_step(capsys, monkeypatch):
    """From a re-review: the out-of-memory line blamed --batch and --seq for a model whose weights did not fit."""
    import harness.bench as bench

    def load(config, device):
        raise MemoryError()

    monkeypatch.setattr(bench, "load", load)
    assert main(["bench", "--methods", "lora", "--protocols", "none", "--random-weights"]) == 2
    err = capsys.readouterr().err
    assert "model 'embedded' does not fit in memory here" in err and "--batch" not in err


def test_median_interval_is_the_2_5th_and_97_5th_percentiles_of_the_bootstrap_medians():
    """Pins ``median_interval``'s quantiles at 95% (a mutation test found that a 90% interval, the 5th and 95th
    percentiles, passed every test: the existing ones only check min <= lo <= median <= hi <= max). For the
    values 1..9 a resample's median is its 5th smallest draw, so P(median <= k) = P(Binomial(9, k/9) >= 5):
    0.0014 at 1, 0.030 at 2, 0.145 at 3 (and mirrored above). The 2.5th percentile is therefore 2 and the 97.5th
    8; a 90% interval would give (3, 7)."""
    assert median_interval(list(range(1, 10))) == (2.0, 8.0)
    assert median_interval(list(range(1, 10)), resamples=20_000, seed=1) == (2.0, 8.0)  # not the seed's luck
