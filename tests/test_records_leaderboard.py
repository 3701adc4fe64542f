"""Run records and the leaderboard, from fixture records (no training)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.leaderboard import write_leaderboards
from harness.records import RECORD, RERUN, new_record, read_record, write_record
from harness.runner import build_specs
from harness.stats import holm
from tests.conftest import ALL_METHODS, trained_record_fields

BENCHES = {"ARC-Easy": 40.0, "boolq": 60.0}


def scored(answers: str, preds: str, n_options: str | None = None, metric: str = "acc") -> dict:
    """A new-schema eval entry: per-example answers and predictions, the value computed from them."""
    value = 100.0 * sum(p == a for p, a in zip(preds, answers, strict=True)) / len(answers)
    return {
        "metric": metric,
        "value": value,
        "metrics": {metric: value},
        "n": len(answers),
        "protocol": "choice",
        "higher_is_better": True,
        "file": "x/test.json",
        "sha256": "x",
        "answers": answers,
        "preds": {metric: preds},
        "n_options": n_options or "4" * len(answers),
    }


def fixture_record(
    method: str, seed: int, shift: float = 0.0, preset: str = "smoke", evals: dict | None = None
) -> dict:
    """A successful record; ``evals`` (benchmark -> entry) replaces the old-style scores (no per-example data)."""
    [spec] = build_specs("commonsense", [method], [seed], preset)
    record = new_record(spec.run_id, spec.to_dict(), {"device": "Test CPU", "torch": "2.x", "transformers": "5.x"})
    record["run"]["status"] = "success"
    record["run"]["config"]["model_label"] = "tiny"
    record["eval"] = evals or {
        b: {"metric": "acc", "value": v + shift, "n": 10, "protocol": "choice", "sha256": "x"}
        for b, v in BENCHES.items()
    }
    record["eval"].setdefault("hellaswag", {"status": "absent"})
    if method == "base":
        return record
    record["train"] = trained_record_fields(seed)
    return record


def write_fixture(runs, record):
    run_dir = runs / record["run"]["id"]
    run_dir.mkdir(parents=True)
    write_record(run_dir, record)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


OUTPUTS = {
    "commonsense.csv",
    "commonsense_comparisons.csv",
    "commonsense_seeds.csv",
    "commonsense.png",
    "overhead.csv",
    "leaderboard.md",
    "leaderboard.html",
}


def test_old_records_without_per_example_data_still_tabulate_without_intervals(tmp_path):
    runs = tmp_path / "runs"
    for seed, shift in ((0, 0.0), (1, 2.0)):
        write_fixture(runs, fixture_record("effilora", seed, shift))
    write_fixture(runs, fixture_record("lora", 0, -10.0))
    paths = write_leaderboards(runs, tmp_path / "out")
    assert {p.name for p in paths} == OUTPUTS
    rows = read_csv(tmp_path / "out" / "commonsense.csv")
    assert [r["method"] for r in rows] == ["effilora", "lora"]  # best average first; no answers: no baselines
    effi = rows[0]
    assert (effi["ARC-Easy"], effi["ARC-Easy_lo"], effi["ARC-Easy_hi"]) == ("41.0", "", "")
    assert effi["boolq"] == "61.0" and effi["hellaswag"] == "absent" and effi["hellaswag_lo"] == ""
    assert effi["Avg"] == "51.0" and effi["Avg_lo"] == "" and effi["Avg_n"] == "2/3" and effi["ARC-Easy_vs_lora"] == ""
    assert effi["Param %"] == "0.5" and effi["seeds"] == "0 1" and effi["n_runs"] == "2" and effi["kind"] == "trained"
    assert effi["protocol"] == "cloze" and effi["preset"] == "smoke" and effi["hardware"] == "Test CPU"
    assert rows[1]["ARC-Easy"] == "30.0"
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| effilora | 41.0 [–] | 61.0 [–] | absent | 51.0 [–] | 2/3 | 0.500 |" in md
    overhead = read_csv(tmp_path / "out" / "overhead.csv")
    assert {r["method"]: r["relative_flops"] for r in overhead} == {"effilora": "1.25", "lora": "1.25"}
    assert {r["flops_per_step"] for r in overhead} == {"2000"}
    assert {r["method"]: r["hook_val_s"] for r in overhead} == {"effilora": "2.5", "lora": "2.0"}  # seeds 0 1; 0
    assert {r["peak_mem_kind"] for r in overhead} == {"process_rss (malloc default)"}  # an older record's kind
    assert {r["peak_mem_gb"] for r in overhead} == {"1.5"}
    assert read_csv(tmp_path / "out" / "commonsense_comparisons.csv") == []
    assert "| effilora | 0 1 | 40.0–42.0 | 60.0–62.0 | absent | 50.0–52.0 |" in md  # spread over seeds
    assert "| lora | 0 |" not in md  # one seed: no spread
    seeds = {
        (r["method"], r["seed"], r["benchmark"]): r["value"]
        for r in read_csv(tmp_path / "out" / "commonsense_seeds.csv")
    }
    assert seeds[("effilora", "1", "boolq")] == "62.0" and seeds[("effilora", "0", "Avg")] == "50.0"
    assert seeds[("lora", "0", "ARC-Easy")] == "30.0" and ("lora", "0", "hellaswag") not in seeds


def test_the_reducers_scoring_flops_show_beside_the_step_and_uncounted_ones_are_named(tmp_path, capsys):
    runs = tmp_path / "runs"
    effi, lora, old = fixture_record("effilora", 0), fixture_record("lora", 0), fixture_record("effilora", 1)
    assert effi["train"]["hook_val_flops"]["per_step"] == 200.0
    del old["train"]["hook_val_flops"]  # a record written before they were counted
    lora["train"]["hook_val_flops"] = {"status": "not counted", "reason": "resumed from an old checkpoint"}
    lora["train"]["hook_val_s"] = 0.0  # but no hook ran: none to count
    for record in (effi, lora):
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    overhead = {r["method"]: r for r in read_csv(tmp_path / "out" / "overhead.csv")}
    assert (
        overhead["effilora"]["hook_val_flops_per_step"] == "200" and overhead["lora"]["hook_val_flops_per_step"] == "0"
    )
    assert overhead["effilora"]["flops_per_step"] == "2000"  # the step alone, as before
    # against lora's step (2000 / 1.25 = 1600): the step alone, and the step with its scoring forwards
    assert overhead["effilora"]["relative_flops"] == "1.25"
    assert overhead["effilora"]["relative_flops_with_scoring"] == "1.375"  # (2000 + 200) / 1600
    assert overhead["lora"]["relative_flops_with_scoring"] == "1.25"  # no scoring forwards
    html = (tmp_path / "out" / "leaderboard.html").read_text()
    assert (
        "FLOPs per optimizer step, x lora&#x27;s at the same shapes (with the Reducer&#x27;s scoring forwards)" in html
    )
    assert re.search(r"<title>effilora: [^<]* at 1\.375", html)  # the step and its scoring forwards, x lora's step
    assert re.search(r"<title>lora: [^<]* at 1\.25", html)
    assert "do not count their FLOPs" not in capsys.readouterr().err

    write_fixture(runs, old)  # hook time recorded, their FLOPs not: the cell is empty and the warning says why
    write_leaderboards(runs, tmp_path / "out")
    assert "1 run(s) (" + old["run"]["id"] in capsys.readouterr().err
    overhead = {r["method"]: r for r in read_csv(tmp_path / "out" / "overhead.csv")}
    assert overhead["effilora"]["hook_val_flops_per_step"] == "200"  # the row's first run's, as flops_per_step


def test_the_flops_plot_compares_rows_at_their_own_shapes_not_their_first_seeds_padding(tmp_path):
    """From a review: the FLOPs plot (and its Pareto front) put each row at its first run's absolute FLOPs, counted
    at that seed's padded shapes: a row starting at seed 1 (shorter batches) sat 30% left of one starting at seed 0
    with the same cost a step. Points are now x lora's step at each row's own shapes."""
    runs = tmp_path / "runs"
    lora, mos = fixture_record("lora", 0), fixture_record("moslora", 1)
    mos["train"]["flops_per_step"] = dict(lora["train"]["flops_per_step"])
    mos["train"]["flops_per_step"]["total"] = 1401  # seed 1's shorter batches, 1.05 x lora's step there
    mos["train"]["flops_per_step"]["relative_to_lora"] = 1.05
    for record in (lora, mos):
        record["train"]["hook_val_flops"] = {"status": "not counted", "reason": "no hook ran"}
        record["train"]["hook_val_s"] = 0.0  # no scoring forwards: the step alone
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    html = (tmp_path / "out" / "leaderboard.html").read_text()
    plot = html[html.index("Avg vs training FLOPs per step") :]
    assert re.search(r"<title>lora: [^<]* at 1\.25</title>", plot)  # costs more: not on the front
    assert re.search(r"<title>moslora: [^<]* at 1\.05 \(Pareto front\)</title>", plot)


def test_overhead_names_what_tokens_per_s_counts_and_the_tasks_own_trained_params(tmp_path):
    """From a review: diffusion's tokens_per_s is images a second, under a tokens header; and a multimodal row that
    trained its projector showed only the method's parameters. A record names its unit (older ones: the task's)."""
    runs = tmp_path / "runs"
    text, image = fixture_record("lora", 0), fixture_record("lora", 0)
    image["run"]["config"].update(task="diffusion")
    image["run"]["id"] = image["run"]["id"].replace("commonsense", "diffusion")
    text["train"].update(throughput_unit="tokens", task_trained_params=1_070_208)
    for record in (text, image):
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    overhead = {r["task"]: r for r in read_csv(tmp_path / "out" / "overhead.csv")}
    assert overhead["commonsense"]["throughput_unit"] == "tokens"
    assert overhead["diffusion"]["throughput_unit"] == "images"  # an older record: the task's unit
    assert (
        overhead["commonsense"]["task_trained_params"] == "1070208"
        and overhead["diffusion"]["task_trained_params"] == ""
    )


def test_each_row_names_the_hardware_of_its_own_runs(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        record = fixture_record("effilora", seed)
        record["env"]["device"] = "CPU A" if seed == 0 else "CPU B"
        write_fixture(runs, record)
    write_fixture(runs, fixture_record("lora", 0))
    write_leaderboards(runs, tmp_path / "out")
    hardware = {r["method"]: r["hardware"] for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert hardware == {"effilora": "CPU A; CPU B", "lora": "Test CPU"}
    overhead = {r["method"]: r["hardware"] for r in read_csv(tmp_path / "out" / "overhead.csv")}
    assert overhead == hardware
    assert "hardware CPU A; CPU B; Test CPU" in (tmp_path / "out" / "leaderboard.md").read_text()  # the section's


def test_the_leaderboard_is_a_pure_function_of_the_records(tmp_path):
    runs = tmp_path / "runs"
    answers = "0123" * 5
    for method, seed, preds in (("lora", 0, "0123" * 5), ("lora", 1, "0120" * 5), ("effilora", 0, "0000" * 5)):
        write_fixture(runs, fixture_record(method, seed, evals={"ARC-Easy": scored(answers, preds)}))
    write_fixture(runs, fixture_record("base", 0, evals={"ARC-Easy": scored(answers, "1111" * 5)}))
    paths = write_leaderboards(runs, tmp_path / "out")
    first = {p.name: p.read_bytes() for p in paths if p.suffix != ".png"}
    assert set(first) | {"commonsense.png"} == OUTPUTS
    write_leaderboards(runs, tmp_path / "again")
    assert first == {p.name: (tmp_path / "again" / p.name).read_bytes() for p in paths if p.suffix != ".png"}
    rows = {r["method"]: r for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert list(rows) == ["lora", "effilora", "base", "majority", "chance"]
    assert rows["lora"]["ARC-Easy"] == "87.5" and rows["lora"]["seeds"] == "0 1"  # 100 and 75, pooled
    assert rows["effilora"]["constant"] == "ARC-Easy" and rows["lora"]["constant"] == ""
    assert (
        rows["base"]["Param %"] == "0.0" and rows["majority"]["Param %"] == "" and rows["chance"]["kind"] == "baseline"
    )
    # where a model's paired interval does not put it above both majority and chance (at 25%, as they are here)
    assert {m: r["not_above_baselines"] for m, r in rows.items()} == {
        **{"lora": "none", "effilora": "ARC-Easy Avg", "base": "ARC-Easy Avg"},
        **{"majority": "", "chance": ""},
    }
    md = (tmp_path / "out" / "leaderboard.md").read_text().splitlines()
    assert next(line for line in md if line.startswith("| method |")).endswith("| not above majority and chance |")
    assert next(line for line in md if line.startswith("| lora |")).endswith("| none |")
    assert next(line for line in md if line.startswith("| effilora |")).endswith("| ARC-Easy, Avg |")
    html = (tmp_path / "out" / "leaderboard.html").read_text()
    assert "not above majority and chance</th>" in html and '<td data-v="ARC-Easy, Avg">ARC-Easy, Avg</td>' in html


def test_a_row_above_chance_but_not_the_majority_label_is_listed_and_a_section_without_baselines_says_so(tmp_path):
    runs = tmp_path / "runs"
    answers = "0" * 24 + "1231" * 4  # the majority label (0) is right 60% of the time, chance 25%
    mid = "1" * 4 + "0" * 20 + "1231" * 2 + "0" * 8  # 70%: 4 zeros missed, 8 others hit; above chance, not majority
    for method, preds in (("lora", answers), ("effilora", mid)):
        write_fixture(runs, fixture_record(method, 0, evals={"ARC-Easy": scored(answers, preds)}))
    old = fixture_record("lora", 0)  # another section, whose records keep no per-example answers
    old["run"]["config"]["extra"]["task_settings"] = {"stage1": {"steps": 60}}
    old["run"]["id"] += "-old"
    write_fixture(runs, old)
    write_leaderboards(runs, tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "commonsense.csv")
    listed = {r["method"]: r["not_above_baselines"] for r in rows if r["settings"] == "task_settings unset"}
    assert listed == {"lora": "none", "effilora": "ARC-Easy Avg", "majority": "", "chance": ""}
    tested = {(r["method"], r["reference"]): r["p"] for r in read_csv(tmp_path / "out" / "commonsense_comparisons.csv")}
    # against chance the test of guessing (28 of 40 right at 25% each), against majority the sign-flip test
    assert float(tested[("effilora", "chance")]) < 1e-6 and float(tested[("effilora", "majority")]) > 0.05
    # p_holm: Holm's adjustment within a section's comparisons against one reference, a comparison of two
    # references once (in the family of the later reference: lora - majority, not majority - lora), its mirror alike
    order = ["lora", "base", "majority", "chance"]
    compared = read_csv(tmp_path / "out" / "commonsense_comparisons.csv")
    mirror = lambda r: r["method"] in order and order.index(r["method"]) > order.index(r["reference"])  # noqa: E731
    families: dict = {}
    for r in compared:
        if r["p"] != "" and not mirror(r):
            families.setdefault((r["section"], r["reference"]), []).append(r)
    assert any(len(f) > 1 for f in families.values())
    for family in families.values():
        expected = holm([float(r["p"]) for r in family])
        assert [float(r["p_holm"]) for r in family] == pytest.approx(expected, rel=1e-3)
    key = lambda r, a, b: (r["section"], r[a], r[b], r["benchmark"])  # noqa: E731
    adjusted = {key(r, "method", "reference"): r["p_holm"] for r in compared}
    mirrors = [r for r in compared if mirror(r)]
    assert mirrors and all(r["p_holm"] == adjusted[key(r, "reference", "method")] for r in mirrors)
    assert [r["not_above_baselines"] for r in rows if r["settings"] == ""] == [""]  # the old section: nothing to beat
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    without = "Not in this section: no zero-shot (base) run; no majority or chance row (its records keep no per-example"
    assert md.count("Not in this section: no zero-shot (base) run.") == 1 and md.count(without) == 1


def test_runs_at_other_task_settings_are_other_sections_not_pooled_seeds(tmp_path):
    runs = tmp_path / "runs"
    answers = "0123" * 5
    for settings, preds in (({"stage1": {"steps": 60}}, "0000" * 5), ({"stage1": {"steps": 180}}, "0123" * 5)):
        record = fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, preds)})
        record["run"]["config"]["extra"]["task_settings"] = settings
        record["run"]["id"] += f"-{settings['stage1']['steps']}"
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "commonsense.csv")
    lora = sorted(float(r["ARC-Easy"]) for r in rows if r["method"] == "lora")
    assert lora == [25.0, 100.0] and len({r["section"] for r in rows}) == 2  # two sections, not one 62.5 row
    # under one title, each section says what sets it apart (in the table's settings column and the page)
    assert sorted(r["settings"] for r in rows if r["method"] == "lora") == [
        "task_settings.stage1.steps 180",
        "task_settings.stage1.steps 60",
    ]
    assert (
        "Set apart from the other sections of this title by: task_settings.stage1.steps 60."
        in (tmp_path / "out" / "leaderboard.md").read_text()
    )


def test_runs_on_several_processes_are_another_section(tmp_path):
    runs = tmp_path / "runs"
    for processes in (1, 2):
        record = fixture_record("lora", 0)
        if processes > 1:  # a larger batch (micro x accum x processes): not a seed of the 1-process row
            record["run"]["config"]["processes"] = 2
            record["run"]["id"] += "-p2"
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    rows = [r for r in read_csv(tmp_path / "out" / "commonsense.csv") if r["method"] == "lora"]
    assert len(rows) == 2 and sorted(r["settings"] for r in rows) == ["train.processes 2", "train.processes unset"]


def test_a_row_gives_its_own_steps_and_no_time_averaged_over_other_cpus(tmp_path):
    runs = tmp_path / "runs"
    for method, seed, steps, device in (
        ("lora", 0, 3, "CPU A"),
        ("effilora", 0, 5, "CPU A"),
        ("effilora", 1, 5, "CPU B"),
    ):
        record = fixture_record(method, seed)
        record["train"]["steps"], record["env"]["device"] = steps, device
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    steps = {r["method"]: r["steps"] for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert steps["lora"] == "3" and steps["effilora"] == "5"  # not the section's "3 5"
    overhead = {r["method"]: r for r in read_csv(tmp_path / "out" / "overhead.csv")}
    assert overhead["lora"]["train_s"] == "10.0" and overhead["effilora"]["train_s"] == ""
    assert overhead["effilora"]["train_s_by_device"] == "CPU A: 10.0; CPU B: 11.0"


def test_a_column_whose_records_say_lower_is_better_is_named_in_its_section_line(tmp_path):
    """From a review: diffusion's KID read as an accuracy % ("Cells: accuracy %"), higher looking better."""
    runs = tmp_path / "runs"
    record = fixture_record("lora", 0)
    first = next(iter(record["eval"]))
    record["eval"][first]["higher_is_better"] = False
    write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    assert f"Lower is better: {first} (not a percentage)." in (tmp_path / "out" / "leaderboard.md").read_text()
    plain = fixture_record("lora", 0)  # the same run, every column higher-is-better: nothing said
    write_record(runs / plain["run"]["id"], plain)
    write_leaderboards(runs, tmp_path / "out")
    assert "Lower is better" not in (tmp_path / "out" / "leaderboard.md").read_text()


def test_no_time_is_averaged_over_runs_under_two_malloc_settings(tmp_path):
    """From a review: lora_fa's overhead train_s pooled 452 s (default malloc) with 277 and 288 s (malloc keeping
    freed memory, which makes a CPU step faster) into 338.9 s, below lora's."""
    runs = tmp_path / "runs"
    for seed, malloc in ((0, None), (1, {"mmap_threshold": 1 << 30, "trim_threshold": 2 << 30})):
        record = fixture_record("lora", seed)
        record["env"]["device"], record["train"]["train_s"] = "CPU A", 10.0 + seed
        if malloc:
            record["env"]["malloc"] = malloc
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    [row] = [r for r in read_csv(tmp_path / "out" / "overhead.csv") if r["method"] == "lora"]
    assert row["train_s"] == "" and row["tokens_per_s"] == ""
    assert row["train_s_by_device"] == "CPU A: 10.0; CPU A (malloc keeps freed memory): 11.0"


def test_no_time_is_averaged_over_runs_with_other_cpu_thread_counts(tmp_path):
    """From a review: CPU names are generic ("AMD EPYC"), so a 2-thread and a 16-thread run pooled their times."""
    runs = tmp_path / "runs"
    for seed, threads in ((0, 2), (1, 16)):
        record = fixture_record("lora", seed)
        record["env"].update(device="AMD EPYC", device_type="cpu", torch_threads=threads)
        record["train"]["train_s"] = 10.0 + seed
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    [row] = [r for r in read_csv(tmp_path / "out" / "overhead.csv") if r["method"] == "lora"]
    assert row["train_s"] == "" and row["train_s_by_device"] == "AMD EPYC, 16 threads: 11.0; AMD EPYC, 2 threads: 10.0"


def test_runs_of_one_model_that_counted_its_parameters_two_ways_are_warned_about(tmp_path, capsys):
    """From a review: one multimodal record counted the language model only (134.5M) where the others count the
    vision tower and projector too (140.2M): its param_% read 3.63 against 3.48 for the same adapter."""
    runs = tmp_path / "runs"
    for seed, base in ((0, 1_000_000), (1, 1_100_000)):
        record = fixture_record("lora", seed)
        record["train"]["base_params"] = base
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    err = capsys.readouterr().err
    assert "count its parameters two ways, 1,000,000 (section " in err and "1,100,000 (section " in err
    assert "param\\_% do not compare" in (tmp_path / "out" / "leaderboard.md").read_text()  # escaped: md_text
    for record_file in runs.rglob("record.json"):  # one count: nothing said
        record = json.loads(record_file.read_text())
        record["train"]["base_params"] = 1_000_000
        write_record(record_file.parent, record)
    write_leaderboards(runs, tmp_path / "out")
    assert "two ways" not in capsys.readouterr().err


def test_runs_made_with_other_plugin_code_are_warned_about(tmp_path, capsys):
    """From a review: seeds run with different plugin code (records' ``env.plugins`` sha256s differ) were pooled
    into one row without a word, where runs of two versions of a built-in are named. A row's runs are compared:
    its method's plugin and the task's; a record without ``env.plugins`` says nothing. From its re-review: plugins
    are named by file name only, so two rows' plugin.py (or one record's two) are two files, not an edit."""
    runs = tmp_path / "runs"
    made = [("lora", 0, "1", "a", "2026-12-01"), ("lora", 1, "2", "b", "2026-12-02"), ("base", 0, None, "b", "")]
    for method, seed, mine, task, created in made:
        record = fixture_record(method, seed)
        record["run"]["created_at"] = f"{created}T00:00:00+00:00" if created else record["run"]["created_at"]
        record["env"]["plugins"] = [{"file": "toy_task.py", "sha256": task * 64}]
        record["env"]["plugins"] += [{"file": "my_lora.py", "sha256": mine * 64}] if mine else []
        write_fixture(runs, record)
    write_fixture(runs, fixture_record("lora", 2))  # no env.plugins: nothing known, nothing said
    write_leaderboards(runs, tmp_path / "out")
    err = capsys.readouterr().err
    assert re.search(
        r"holds lora runs made with 2 versions of the plugin file my_lora\.py \(sha256 11111111 in 1 run, "
        r"22222222 in 1 run; the last is the newest\): their scores may not compare; run the older ones again "
        "with --force",
        err,
    ), err
    assert "holds lora runs made with 2 versions of the plugin file toy_task.py (sha256 aaaaaaaa in 1 run, bbbb" in err
    assert "holds base runs" not in err
    assert (
        "holds lora runs made with 2 versions of the plugin file my_lora.py"
        in (tmp_path / "out" / "leaderboard.md").read_text()
    )
    for record_file in runs.rglob("record.json"):  # one code per plugin: nothing said
        record = json.loads(record_file.read_text())
        for plugin in record["env"].get("plugins", []):
            plugin["sha256"] = "c" * 64
        write_record(record_file.parent, record)
    write_leaderboards(runs, tmp_path / "out")
    assert "versions of the plugin" not in capsys.readouterr().err

    same = tmp_path / "same"  # a/plugin.py defines lora's task and method, b/plugin.py effilora's method: unedited
    for method, seed in (("lora", 0), ("lora", 1), ("effilora", 0), ("effilora", 1)):
        record = fixture_record(method, seed)
        mine = "d" if method == "lora" else "e"
        record["env"]["plugins"] = [
            {"file": "plugin.py", "sha256": "f" * 64},
            {"file": "plugin.py", "sha256": mine * 64},
        ]
        write_fixture(same, record)
    write_leaderboards(same, tmp_path / "out2")
    assert "versions of the plugin" not in capsys.readouterr().err


def test_the_plot_shows_the_newest_section_of_a_preset(tmp_path):
    from harness.leaderboard import load_records, newest_sections, sections

    runs = tmp_path / "runs"
    for steps, created in ((180, "2026-01-02T00:00:00+00:00"), (60, "2026-01-01T00:00:00+00:00")):
        record = fixture_record("lora", 0, evals={"ARC-Easy": scored("0123" * 5, "0123" * 5)})
        record["run"]["config"]["extra"]["task_settings"] = {"stage1": {"steps": steps}}
        record["run"]["id"] += f"-{steps}"
        record["run"]["created_at"] = created
        write_fixture(runs, record)
    secs = sections(load_records(runs))
    assert len(secs) == 2
    (shown,) = newest_sections(secs)
    assert shown.rows[0].runs[0]["run"]["id"].endswith("-180")  # the later run, whatever the order of keys
    assert newest_sections(list(reversed(secs))) == [shown]


def test_a_fresh_base_run_does_not_move_the_plot_to_an_older_section(tmp_path):
    """``base`` joins every section of its settings: its date says nothing about which training is newest."""
    from harness.leaderboard import load_records, newest_sections, sections

    runs = tmp_path / "runs"
    for lr, created in ((0.001, "2026-01-02T00:00:00+00:00"), (0.5, "2026-01-01T00:00:00+00:00")):
        record = fixture_record("lora", 0, evals={"ARC-Easy": scored("0123" * 5, "0123" * 5)})
        record["run"]["config"]["train"]["lr"] = lr
        record["run"]["id"] += f"-lr{lr}"
        record["run"]["created_at"] = created
        write_fixture(runs, record)
    base = fixture_record("base", 0, evals={"ARC-Easy": scored("0123" * 5, "0000" * 5)})
    base["run"]["created_at"] = "2026-02-01T00:00:00+00:00"
    write_fixture(runs, base)
    secs = sections(load_records(runs))
    assert len(secs) == 2
    for order in (secs, list(reversed(secs))):
        (shown,) = newest_sections(order)
        assert shown.rows[0].runs[0]["run"]["id"].endswith("-lr0.001")


def write_rerun(runs, method: str, seed: int, batch: int, answers: str, preds: str, created: str) -> None:
    """A fixture run of ``method`` and ``seed`` scored at eval batch size ``batch`` (its own run id, as a rerun at
    another batch size has), made at ``created``."""
    record = fixture_record(method, seed, evals={"ARC-Easy": scored(answers, preds)})
    record["run"]["config"]["eval_batch_size"] = batch
    record["run"]["id"] += f"-b{batch}"
    record["run"]["created_at"] = created
    write_fixture(runs, record)


def test_a_seed_run_twice_in_one_row_counts_once_the_newest_with_a_warning(tmp_path, capsys):
    """Settings outside a row's key (the eval batch size) give a second run id for the same row and seed."""
    runs = tmp_path / "runs"
    answers = "0123" * 5
    for seed, batch, preds, created in (
        (0, 16, answers, "2026-01-01T00:00:00+00:00"),  # 100%, replaced by the rerun below
        (0, 8, "1111" * 5, "2026-01-03T00:00:00+00:00"),  # 25%
        (1, 16, "0000" * 5, "2026-01-02T00:00:00+00:00"),  # 25%
    ):
        write_rerun(runs, "lora", seed, batch, answers, preds, created)
    write_leaderboards(runs, tmp_path / "out")
    rows = {r["method"]: r for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    row = rows["lora"]
    assert (row["ARC-Easy"], row["seeds"], row["n_runs"]) == ("25.0", "0 1", "2")  # not 50.0 over three runs
    assert rows["majority"]["steps"] == rows["chance"]["steps"] == ""  # not models: no steps
    err = capsys.readouterr().err
    assert "warning: lora has 2 runs of seed 0; counted once, the newest" in err and "-b8)" in err


def test_a_zero_shot_seed_run_twice_counts_once_the_newest_with_a_warning(tmp_path, capsys):
    """README: a row "counts its newest run, with a warning naming the others"; base's were dropped unnamed."""
    runs = tmp_path / "runs"
    answers = "0123" * 5
    for batch, preds, created in (
        (16, answers, "2026-01-01T00:00:00+00:00"),
        (8, "0000" * 5, "2026-01-02T00:00:00+00:00"),
    ):
        write_rerun(runs, "base", 0, batch, answers, preds, created)
    write_leaderboards(runs, tmp_path / "out")
    rows = {r["method"]: r for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert (rows["base"]["ARC-Easy"], rows["base"]["n_runs"]) == ("25.0", "1")  # the newest, not 62.5 over both
    err = capsys.readouterr().err
    assert "warning: base has 2 runs of seed 0; counted once, the newest" in err and "-b8), not " in err, err


def _on_data(record: dict, test: str, train: str | None = None) -> dict:
    """``record`` as a run on other data: its test file's sha256 (as its eval entries record it) and, for a trained
    run, its training file's (``run.config.data``, as ``describe()`` records it)."""
    for entry in record["eval"].values():
        if "value" in entry:
            entry["sha256"] = test * 64
    if train is not None:
        record["run"]["config"]["data"] = {"train_files": [{"file": "ARC-Easy/train.json", "sha256": train * 64}]}
    return record


def test_seeds_run_on_other_data_are_other_sections_not_one_pooled_row(tmp_path, capsys):
    """From a review: seeds of one method on two test sets were pooled into one row (their mean, with no interval
    and no comparison: the per-example scores could not pair), silently. Now each data is a section; the oldest
    keeps the id it had alone, the zero-shot run joins the one whose data it read, and each says which data."""
    answers = "0123" * 5
    old = [
        _on_data(fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, answers)}), "a", "c"),
        _on_data(fixture_record("effilora", 0, evals={"ARC-Easy": scored(answers, "0000" * 5)}), "a", "c"),
        _on_data(fixture_record("base", 0, evals={"ARC-Easy": scored(answers, "1111" * 5)}), "a"),
    ]
    new = _on_data(fixture_record("lora", 1, evals={"ARC-Easy": scored(answers, "0000" * 5)}), "b", "c")
    for i, record in enumerate([*old, new]):
        record["run"]["created_at"] = f"2026-01-0{i + 1}T00:00:00+00:00"
        write_fixture(tmp_path / "runs", record)
        if record is not new:
            write_fixture(tmp_path / "alone", record)
    write_leaderboards(tmp_path / "alone", tmp_path / "out_alone")
    [alone] = {r["section"] for r in read_csv(tmp_path / "out_alone" / "commonsense.csv")}
    write_leaderboards(tmp_path / "runs", tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "commonsense.csv")
    by_section: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_section.setdefault(r["section"], {})[r["method"]] = r
    assert len(by_section) == 2 and alone in by_section  # the older data keeps its section's id
    first, [second] = by_section.pop(alone), list(by_section.values())
    assert (first["lora"]["ARC-Easy"], first["lora"]["seeds"], second["lora"]["ARC-Easy"]) == ("100.0", "0", "25.0")
    assert first["lora"]["ARC-Easy_lo"] != "" and first["effilora"]["ARC-Easy_vs_lora"] == "-75.0"  # still paired
    assert "base" in first and "base" not in second and "effilora" not in second
    assert first["lora"]["settings"].startswith("data ") and second["lora"]["settings"].startswith("data ")
    assert first["lora"]["settings"] != second["lora"]["settings"]
    # a training file read two ways splits too; one a run did not read (the zero-shot run's) contradicts nothing
    other = _on_data(fixture_record("effilora", 1, evals={"ARC-Easy": scored(answers, answers)}), "a", "d")
    write_fixture(tmp_path / "runs", other)
    write_leaderboards(tmp_path / "runs", tmp_path / "out")
    effi = [r for r in read_csv(tmp_path / "out" / "commonsense.csv") if r["method"] == "effilora"]
    assert sorted((r["ARC-Easy"], r["seeds"]) for r in effi) == [("100.0", "1"), ("25.0", "0")]
    assert sum(r["method"] == "base" for r in read_csv(tmp_path / "out" / "commonsense.csv")) == 2


def _on_model(record: dict, weights: str, tokenizer: str = "t") -> dict:
    """``record`` as a run of a model folder holding ``weights`` (its files' sha256s, as the runner keeps them)."""
    manifest = {"config.json": "c" * 64, "model.safetensors": weights * 64, "tokenizer.json": tokenizer * 64}
    record["run"]["config"]["model_info"] = {
        "weights_sha256": hashlib.sha256(json.dumps(manifest).encode()).hexdigest(),
        "weights_files": 3,
        "weights_digest_version": 2,
        "weights_manifest": manifest,
    }
    return record


def test_runs_of_one_model_folder_whose_files_changed_are_other_sections(tmp_path):
    """From a review of the model digests: a folder's weights replaced between two methods' runs (one re-run with
    --force, the other left) put both in one section, comparing methods on other weights, silently. Now the model's
    files split sections as the data's do; a file one run did not read (a model built from its config), or a record
    from before the digests were kept, contradicts nothing."""
    answers = "0123" * 5
    runs = tmp_path / "runs"
    lora = _on_model(fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, answers)}), "a")
    effi = _on_model(fixture_record("effilora", 0, evals={"ARC-Easy": scored(answers, "0000" * 5)}), "b")
    base = _on_model(fixture_record("base", 0, evals={"ARC-Easy": scored(answers, "1111" * 5)}), "a")
    unknown = fixture_record("moslora", 0, evals={"ARC-Easy": scored(answers, "0123" * 4 + "0000")})  # no digest
    for i, record in enumerate([lora, effi, base, unknown]):
        record["run"]["created_at"] = f"2026-01-0{i + 1}T00:00:00+00:00"
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    by_section: dict[str, dict[str, dict]] = {}
    for r in read_csv(tmp_path / "out" / "commonsense.csv"):
        by_section.setdefault(r["section"], {})[r["method"]] = r
    assert sorted(sorted(x) for x in by_section.values()) == [
        ["base", "chance", "lora", "majority", "moslora"],  # base read lora's weights; moslora's are not known
        ["chance", "effilora", "majority"],
    ]
    [first] = [x for x in by_section.values() if "lora" in x]
    [second] = [x for x in by_section.values() if "effilora" in x]
    assert second["effilora"]["ARC-Easy_vs_lora"] == ""  # not compared with lora on other weights
    assert "model files " in first["lora"]["settings"] and "model files " in second["effilora"]["settings"]
    assert first["lora"]["settings"] != second["effilora"]["settings"]
    # the same weights with another tokenizer file is another model too; a run that read no weights there (a model
    # built from its config: its digest covers other files) contradicts nothing on them
    write_fixture(
        runs, _on_model(fixture_record("sharelora", 0, evals={"ARC-Easy": scored(answers, answers)}), "a", "u")
    )
    built = _on_model(fixture_record("lora_fa", 0, evals={"ARC-Easy": scored(answers, answers)}), "a")
    info = built["run"]["config"]["model_info"]
    del info["weights_manifest"]["model.safetensors"]  # a model built from its config: its digest leaves weights out
    info["weights_digest_covers"] = "configs, tokenizer and code (no weights read)"
    info["weights_sha256"] = hashlib.sha256(json.dumps(info["weights_manifest"]).encode()).hexdigest()
    write_fixture(runs, built)
    write_leaderboards(runs, tmp_path / "out")
    sections = {}
    for r in read_csv(tmp_path / "out" / "commonsense.csv"):
        sections.setdefault(r["section"], set()).add(r["method"])
    assert {"lora", "lora_fa", "base"} <= sections[[k for k, v in sections.items() if "lora" in v][0]]
    assert "sharelora" not in sections[[k for k, v in sections.items() if "lora" in v][0]]
    # a hub id's runs: by the blob of each file they loaded; one not downloaded at the later commit is not known
    hub = tmp_path / "hub"
    for method, blobs in (("lora", {"model.safetensors": "sha256:b1", "tokenizer_config.json": "git:t1"}),
                          ("effilora", {"model.safetensors": "sha256:b1", "tokenizer_config.json": "git:t2"}),
                          ("moslora", {"model.safetensors": "sha256:b1", "tokenizer_config.json": "sha256:t3"})):  # fmt: skip
        record = fixture_record(method, 0, evals={"ARC-Easy": scored(answers, answers)})
        record["run"]["config"]["model_info"] = {"hub_revision": "c" * 40, "hub_manifest": blobs}
        record["run"]["created_at"] = f"2026-01-0{len(list(hub.glob('*'))) + 1 if hub.exists() else 1}T00:00:00+00:00"
        write_fixture(hub, record)
    write_leaderboards(hub, tmp_path / "out_hub")
    sections = {}
    for r in read_csv(tmp_path / "out_hub" / "commonsense.csv"):
        sections.setdefault(r["section"], set()).add(r["method"])
    # moslora fits both (its tokenizer's id is of another form, read from a copied cache: not compared): it joins
    # the oldest (lora's), as a run that read part of the data does
    assert sorted(sorted(v - {"majority", "chance"}) for v in sections.values()) == [["effilora"], ["lora", "moslora"]]


def _sections(out: Path) -> dict[str, dict[str, dict]]:
    by_section: dict[str, dict[str, dict]] = {}
    for r in read_csv(out / "commonsense.csv"):
        by_section.setdefault(r["section"], {})[r["method"]] = r
    return by_section


def test_model_digests_split_sections_only_where_they_contradict_and_say_so_only_then(tmp_path):
    """From a review of the model-file sections: two zero-shot runs on other weights that both fit a section without
    digests, the later replaced the earlier's base row (silently lost); a split made by the data labelled the
    section without model digests "model files unset"; a version-1 digest never contradicted a manifest of other
    weights."""
    from harness.identity import manifest_digest

    answers = "0123" * 5
    lost = tmp_path / "lost"
    write_fixture(lost, fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, answers)}))  # no digests
    for i, (weights, preds) in enumerate((("a", "0123" * 4 + "1111"), ("b", "1111" * 5))):
        record = _on_model(fixture_record("base", i, evals={"ARC-Easy": scored(answers, preds)}), weights)
        record["run"]["created_at"] = f"2026-01-0{i + 1}T00:00:00+00:00"
        write_fixture(lost, record)
    write_leaderboards(lost, tmp_path / "out_lost")
    bases = sorted(x["base"]["ARC-Easy"] for x in _sections(tmp_path / "out_lost").values() if "base" in x)
    assert bases == ["25.0", "85.0"]  # both shown: the older with lora, the later in a section of its own
    said = [x["base"]["settings"] for x in _sections(tmp_path / "out_lost").values()]  # and each says its weights
    assert len(set(said)) == 2 and all(x.startswith("model files ") for x in said), said

    by_data = tmp_path / "data"
    write_fixture(by_data, _on_data(fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, answers)}), "a", "c"))
    later = _on_model(_on_data(fixture_record("lora", 1, evals={"ARC-Easy": scored(answers, answers)}), "b", "c"), "a")
    later["run"]["created_at"] = "2026-01-09T00:00:00+00:00"
    write_fixture(by_data, later)
    write_leaderboards(by_data, tmp_path / "out_data")
    settings = [x["lora"]["settings"] for x in _sections(tmp_path / "out_data").values()]
    assert len(settings) == 2 and all(x.startswith("data ") and "model files" not in x for x in settings), settings

    versions = tmp_path / "versions"
    manifest = {"config.json": "c" * 64, "model.safetensors": "a" * 64, "tokenizer.json": "t" * 64}
    v1 = fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, answers)})
    v1["run"]["config"]["model_info"] = {"weights_sha256": manifest_digest(manifest, 1), "weights_files": 2}
    write_fixture(versions, v1)  # a version-1 record of weights a
    same = _on_model(fixture_record("effilora", 0, evals={"ARC-Easy": scored(answers, answers)}), "a")
    same["run"]["config"]["model_info"]["weights_digest_covers"] = "weights, configs, tokenizer and code"
    other = _on_model(fixture_record("moslora", 0, evals={"ARC-Easy": scored(answers, answers)}), "b")
    other["run"]["config"]["model_info"]["weights_digest_covers"] = "weights, configs, tokenizer and code"
    for i, record in enumerate((same, other)):
        record["run"]["created_at"] = f"2026-01-0{i + 2}T00:00:00+00:00"
        write_fixture(versions, record)
    write_leaderboards(versions, tmp_path / "out_versions")
    rows = sorted(sorted(set(x) - {"majority", "chance"}) for x in _sections(tmp_path / "out_versions").values())
    assert rows == [["effilora", "lora"], ["moslora"]], rows

    # two sections on other test data, one model; a newer base run naming more of its files (a version-2 manifest
    # beside version-1 records) joins one: the same model, so no "model files" is said (from a review: it was)
    same_model = tmp_path / "same_model"
    for i, (method, test) in enumerate((("lora", "a"), ("effilora", "a"), ("lora", "b"))):
        record = _on_data(fixture_record(method, i, evals={"ARC-Easy": scored(answers, answers)}), test, "c")
        record["run"]["config"]["model_info"] = {"weights_sha256": manifest_digest(manifest, 1), "weights_files": 2}
        record["run"]["created_at"] = f"2026-01-0{i + 1}T00:00:00+00:00"
        write_fixture(same_model, record)
    base = _on_model(_on_data(fixture_record("base", 0, evals={"ARC-Easy": scored(answers, "1111" * 5)}), "a"), "a")
    base["run"]["config"]["model_info"]["weights_digest_covers"] = "weights, configs, tokenizer and code"
    base["run"]["created_at"] = "2026-01-09T00:00:00+00:00"
    write_fixture(same_model, base)
    write_leaderboards(same_model, tmp_path / "out_same_model")
    said = sorted(x["lora"]["settings"] for x in _sections(tmp_path / "out_same_model").values())
    assert len(said) == 2 and all(x.startswith("data ") and "model files" not in x for x in said), said


def test_seeds_that_scored_different_examples_of_one_data_are_named(tmp_path, capsys):
    """Their per-example scores cannot pool (a judge that failed on other images in each run): the row shows the
    mean without an interval, and says why, naming the runs (it read "no per-example scores")."""
    runs = tmp_path / "runs"
    for seed, answers in ((0, "0123" * 5), (1, "0000" * 5)):
        write_fixture(runs, fixture_record("lora", seed, evals={"ARC-Easy": scored(answers, answers)}))
    write_leaderboards(runs, tmp_path / "out")
    [row] = [r for r in read_csv(tmp_path / "out" / "commonsense.csv") if r["method"] == "lora"]
    assert (row["ARC-Easy"], row["ARC-Easy_lo"]) == ("100.0", "")
    err = capsys.readouterr().err
    assert "warning: lora ARC-Easy: its runs scored different examples (commonsense-lora-" in err, err


def test_per_example_scores_without_an_examples_id_are_shown_but_never_paired(tmp_path, capsys):
    """A plugin task that leaves out ``examples``: unrelated examples must not be pooled or paired (nor crash)."""
    runs = tmp_path / "runs"
    for method, scores in (("lora", [100.0, 0.0] * 5), ("effilora", [100.0] * 12)):
        entry = {"metric": "anls", "value": float(sum(scores) / len(scores)), "n": len(scores), "scores": scores}
        write_fixture(runs, fixture_record(method, 0, evals={"ARC-Easy": entry}))
    write_leaderboards(runs, tmp_path / "out")
    rows = {r["method"]: r for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert (rows["lora"]["ARC-Easy"], rows["effilora"]["ARC-Easy"]) == ("50.0", "100.0")
    assert rows["effilora"]["ARC-Easy_lo"] == rows["effilora"]["ARC-Easy_vs_lora"] == ""
    assert "per-example scores without 'examples'" in capsys.readouterr().err


def test_vs_lora_is_against_the_plain_lora_row_and_names_the_row_it_used(tmp_path):
    """A better-ranked single-source ``lora`` does not become the reference; where it is the only one, the
    comparisons say so instead of calling it ``lora``."""
    answers = "0123" * 5
    for folder, variants in (("both", (None, ["ARC-Easy"])), ("one", (["ARC-Easy"],))):
        runs = tmp_path / folder / "runs"
        for sources in variants:
            preds = answers if sources else "1111" * 5  # the single-source row ranks first
            record = fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, preds)})
            if sources:
                record["run"]["config"]["task_options"]["train_sources"] = sources
                record["run"]["id"] += "-arc"
            write_fixture(runs, record)
        write_fixture(runs, fixture_record("base", 0, evals={"ARC-Easy": scored(answers, "0000" * 5)}))
        write_leaderboards(runs, tmp_path / folder / "out")
    rows = {r["method"]: r for r in read_csv(tmp_path / "both" / "out" / "commonsense.csv")}
    assert rows["lora"]["ARC-Easy_vs_lora"] == ""  # the reference itself
    assert rows["lora (trained_on=ARC-Easy)"]["ARC-Easy_vs_lora"] == "75.0"  # 100% against the plain row's 25%
    assert rows["base"]["ARC-Easy_vs_lora"] == "0.0" and rows["base"]["steps"] == "0"  # trained none
    refs = {r["reference"] for r in read_csv(tmp_path / "both" / "out" / "commonsense_comparisons.csv")}
    assert refs == {"lora", "base", "majority", "chance"}
    one = read_csv(tmp_path / "one" / "out" / "commonsense_comparisons.csv")
    assert {r["reference"] for r in one if r["method"] == "base"} == {
        "lora (trained_on=ARC-Easy)",
        "majority",
        "chance",
    }
    md = (tmp_path / "one" / "out" / "leaderboard.md").read_text()
    assert "Paired difference to lora (trained_on=ARC-Easy) (points" in md
    assert "vs lora (trained_on=ARC-Easy) " in (tmp_path / "one" / "out" / "leaderboard.html").read_text()


def test_an_option_one_row_sets_to_none_and_another_lacks_sets_their_labels_and_holm_ps_apart(tmp_path):
    """From a review: two lora rows whose options differed only by a key one record set to None and the other
    lacked (a newer and an older harness) were both labelled ``lora``, so the table showed ``lora`` twice and a
    mirrored comparison looked up by label (``majority`` against lora) took the other lora row's Holm p."""
    from harness.records import config_hash

    runs, answers = tmp_path / "runs", "0123012301230123"
    old = fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, "0123012301230000")})
    new = fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, "0123012300000000")})
    new["run"]["config"]["method_options"]["newopt"] = None
    new["run"]["id"] = new["run"]["id"][:-8] + config_hash(new["run"]["config"])
    for record in (old, new, fixture_record("effilora", 0, evals={"ARC-Easy": scored(answers, "0123012301230100")})):
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    methods = [r["method"] for r in read_csv(tmp_path / "out" / "commonsense.csv")]
    assert methods == ["effilora", "lora", "lora (newopt=None)", "majority", "chance"]
    comparisons = read_csv(tmp_path / "out" / "commonsense_comparisons.csv")
    by = {(r["method"], r["reference"], r["benchmark"]): r["p_holm"] for r in comparisons}
    assert len(by) == len(comparisons)  # one comparison per row, reference and column
    assert by[("lora", "majority", "ARC-Easy")] != by[("lora (newopt=None)", "majority", "ARC-Easy")]
    mirrored = [(m, ref, b) for m, ref, b in by if m in ("majority", "chance") and ref == "lora"]
    assert len(mirrored) == 4
    for method, ref, b in mirrored:  # its own: the plain lora row's against it
        assert by[(method, ref, b)] == by[(ref, method, b)], (method, b)


def test_labels_of_rows_whose_options_read_alike_stay_apart():
    """From a review: labels are what the tables and the comparisons look rows up by; options that differ only by
    a key one lacks, by 1 against True, or by values that print alike (1 against "1") made one label twice."""
    from harness.leaderboard_sections import _labels

    keys = [("lora", json.dumps(o, sort_keys=True)) for o in ({}, {"x": None}, {"y": 1}, {"y": True}, {"y": "1"})]
    labels = _labels(keys)
    assert len(set(labels.values())) == len(keys), labels
    assert labels[keys[0]] == "lora" and labels[keys[1]] == "lora (x=None)"
    assert labels[keys[4]] == 'lora (y="1")' and labels[keys[3]] == "lora (y=True)"


def test_rows_apart_by_one_reducer_setting_are_labelled_by_that_setting():
    """From a review: two effilora rows whose Reducer differed by drop_ratio were each labelled with the whole
    Reducer dict (nine settings); an option that is a dict in every row is compared key by key."""
    from harness.leaderboard_sections import _labels

    reducer = {"drop_ratio": 0.25, "interval": 10, "k": None, "seed": None}
    keys = [("effilora", json.dumps({"reducer": r}, sort_keys=True)) for r in (reducer, reducer | {"drop_ratio": 0.5})]
    assert list(_labels(keys).values()) == ["effilora (reducer.drop_ratio=0.25)", "effilora (reducer.drop_ratio=0.5)"]
    # a re-review: beside a run with the Reducer off (reducer=None) they still read the whole dict; that row is
    # named by its own value, and a row whose records lack the option (from before it) by nothing
    keys += [("effilora", json.dumps({"reducer": None})), ("effilora", json.dumps({}))]
    assert list(_labels(keys).values()) == [
        "effilora (reducer.drop_ratio=0.25)",
        "effilora (reducer.drop_ratio=0.5)",
        "effilora (reducer=None)",
        "effilora",
    ]
    # one Reducer row beside one without: no key tells it apart from another dict, so the dict whole
    alone = [keys[0], keys[2]]
    assert (
        _labels(alone)[keys[0]].startswith("effilora (reducer={")
        and _labels(alone)[keys[2]] == "effilora (reducer=None)"
    )


def _targeting(record: dict, targets: str) -> dict:
    """``record`` with its method option ``targets`` set, its run id made again from its config."""
    from harness.records import config_hash

    record["run"]["config"]["method_options"]["targets"] = targets
    record["run"]["id"] = record["run"]["id"][:-8] + config_hash(record["run"]["config"])
    return record


def _write_tiny_model_row(runs) -> None:
    """A lora_fa run of a model labelled ``<tiny>_model``: its own section, titled with what Markdown reads."""
    record = fixture_record("lora_fa", 0)
    record["run"]["config"]["model_label"] = "<tiny>_model"
    write_fixture(runs, record)


def test_a_row_label_holding_a_targets_regex_reads_as_written_in_the_markdown(tmp_path):
    """From a review: only ``|`` was escaped in ``leaderboard.md``, so ``.*\\.(q|v)_proj`` lost its backslash and
    ``(?P<attn>...)`` became a hidden HTML tag; labels and titles escape what Markdown reads, and ``_`` inside a
    word (``lora_fa``, as the committed tables have it) stays as it is."""
    runs, answers = tmp_path / "runs", "0123" * 6
    targets = [r".*\.(q|v)_proj", r"(?P<attn>.*self_attn)\.(q|k)_proj", "[a-z]+`x`"]
    for i, target in enumerate(targets):
        record = fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, "3" * i + answers[i:])})
        write_fixture(runs, _targeting(record, target))
    _write_tiny_model_row(runs)
    write_leaderboards(runs, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    shown = ["lora (targets=.\\*\\\\.(q\\|v)\\_proj)", "lora (targets=(?P\\<attn\\>.\\*self_attn)\\\\.(q\\|k)\\_proj)"]
    shown.append("lora (targets=\\[a-z\\]+\\`x\\`)")
    assert all(f"| {label} | " in md for label in shown), md
    paired = shown[0].replace("\\|", "|")  # the best-ranked, all right, is the reference: named outside a table
    assert f"Paired difference to {paired} (points" in md
    assert re.search(r"\| majority \| -\d+\.\d\* \|", md)  # score cells keep their significance marks
    assert "| lora_fa | 40.0 [–] |" in md and "### \\<tiny\\>\\_model · preset smoke" in md
    from harness.leaderboard_render import md_text

    assert md_text("lora_fa _x x_ a_b_c") == "lora_fa \\_x x\\_ a_b_c"
    markdown_it = pytest.importorskip("markdown_it")
    rows = [line for line in md.splitlines() if line.startswith("| lora (targets=")][:3]
    html = markdown_it.MarkdownIt("commonmark").enable("table").render("| m | x |\n| --- | --- |\n" + "\n".join(rows))
    cells = re.findall(r"<td>(lora \(targets=[^<]*)</td>", html)
    assert sorted(cells) == sorted(f"lora (targets={t.replace('<', '&lt;').replace('>', '&gt;')})" for t in targets)


def test_a_warning_and_the_overhead_table_escape_labels_as_the_tables_do(tmp_path):
    """From a re-review: the ``**Warning:**`` lines under ``leaderboard.md`` and the overhead table's ``model``
    column printed labels unescaped, where the score tables and titles escape them (``md_text``): a ``<tiny>`` was
    hidden as an HTML tag there."""
    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0))
    # no seed in common with the other row: a warning names both
    write_fixture(runs, _targeting(fixture_record("lora", 1), r"(?P<attn>.*self_attn)\.(q|k)_proj"))
    _write_tiny_model_row(runs)
    write_leaderboards(runs, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    [warning] = [line for line in md.splitlines() if line.startswith("**Warning:**") and "not compared" in line]
    assert "(?P\\<attn\\>.\\*self_attn)\\\\.(q|k)\\_proj" in warning and "<attn>" not in warning, warning
    overhead = md[md.index("## overhead") :]
    assert "| \\<tiny\\>\\_model |" in overhead and "| <tiny>_model |" not in overhead, overhead


def test_flops_per_step_stay_whole_numbers_where_another_row_was_not_counted(tmp_path):
    """From a review: a row whose FLOPs were not counted made the overhead column float, so counted rows read
    617535995904.0 in overhead.csv and leaderboard.md."""
    runs = tmp_path / "runs"
    lora, effi = fixture_record("lora", 0), fixture_record("effilora", 0)
    lora["train"]["flops_per_step"] = {"total": 617535995904, "adapter": 59759493120, "relative_to_lora": 1.0}
    effi["train"]["flops_per_step"] = {"status": "not counted", "reason": "x", "micro_batches": []}
    write_fixture(runs, lora)
    write_fixture(runs, effi)
    write_leaderboards(runs, tmp_path / "out")
    overhead = {r["method"]: r for r in read_csv(tmp_path / "out" / "overhead.csv")}
    assert overhead["lora"]["flops_per_step"] == "617535995904" and overhead["effilora"]["flops_per_step"] == ""
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| 617535995904 | 59759493120 |" in md and "617535995904.0" not in md


def test_unreadable_and_failed_records_are_reported_and_skipped(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, 0.0))
    (runs / "broken").mkdir()
    (runs / "broken" / RECORD).write_text("{ half a record")
    failed = fixture_record("effilora", 0, 0.0)
    failed["run"]["status"] = "failed"
    write_fixture(runs, failed)
    write_leaderboards(runs, tmp_path / "out")
    assert "warning: skipped" in capsys.readouterr().err
    assert [r["method"] for r in read_csv(tmp_path / "out" / "commonsense.csv")] == ["lora"]


def cannot_enter(monkeypatch, folder: Path) -> None:
    """Make ``folder`` what a folder chmod 000 is to a user other than root (the tests run as root, whom chmod does
    not stop): listing it, and looking up or opening a name in it, raise ``PermissionError``."""
    import errno
    import io
    import os

    real_stat, real_scandir, real_open = os.stat, os.scandir, io.open

    def refused(path, itself: bool) -> bool:
        if not isinstance(path, str | os.PathLike):  # a file descriptor
            return False
        return folder in Path(path).parents or (itself and Path(path) == folder)

    def denied(path) -> PermissionError:
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def stat(path, *args, **kwargs):
        if refused(path, itself=False):
            raise denied(path)
        return real_stat(path, *args, **kwargs)

    def scandir(path="."):
        if refused(path, itself=True):
            raise denied(path)
        return real_scandir(path)

    def open_(file, *args, **kwargs):
        if refused(file, itself=True):
            raise denied(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(io, "open", open_)


def test_a_run_folder_the_machine_cannot_enter_is_skipped_with_a_warning_naming_it(tmp_path, monkeypatch, capsys):
    """From a review: the runs were found by ``glob("*/record.json")``, which leaves out a folder it cannot enter
    without a word: of seeds 0 and 1, s1's folder chmod 000, the leaderboard listed seed 0 alone, exit 0 and no
    warning, where a record.json it cannot read is skipped with one."""
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_fixture(runs, fixture_record("lora", seed, 0.0))
    closed = runs / fixture_record("lora", 1)["run"]["id"]
    cannot_enter(monkeypatch, closed)
    write_leaderboards(runs, tmp_path / "out")
    err = capsys.readouterr().err
    assert (
        f"warning: skipped {closed}: the machine could not enter this folder to read its {RECORD} (PermissionError: "
    ) in err, err
    assert "check the disk and the folder's permissions (this user must read and enter it: r and x)" in err, err
    assert {r["seed"] for r in read_csv(tmp_path / "out" / "commonsense_seeds.csv")} == {"0"}


def test_rescore_names_a_run_folder_the_machine_cannot_enter(tmp_path, monkeypatch, capfd):
    """From a review: ``harness rescore`` found the runs by ``glob("*/record.json")``, which leaves out a folder it
    cannot enter without a word: its one diffusion run's folder chmod 000, it said there was no diffusion run."""
    from tests.conftest import harness_here

    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, 0.0))  # a commonsense run: not one to score
    closed = runs / "diffusion-lora-embedded-s0-00000000"
    closed.mkdir()
    (closed / RECORD).write_text("{}")
    cannot_enter(monkeypatch, closed)
    args = ["rescore", "--task", "diffusion", "--runs-dir", str(runs), "--judge-model", "j", "--no-leaderboard"]
    done = harness_here(capfd, *args)
    assert done.returncode == 2 and "run `harness run --task diffusion` first" not in done.stderr, done.stderr
    assert (
        f"warning: {closed}: the machine could not enter this folder to read its {RECORD} (PermissionError: "
    ) in done.stderr, done.stderr
    assert "left unscored (whether it is a diffusion run is not known)" in done.stderr
    assert "harness: error: no successful diffusion run this machine can read in " in done.stderr
    assert "1 folder(s) it could not enter or read (the warnings above)" in done.stderr
    done = harness_here(capfd, *args, "--runs", closed.name)  # named: a problem of its own
    assert done.returncode == 2 and "harness: error: 1 problem(s) rescoring (above; the first: " in done.stderr


def test_rescore_warns_of_a_folder_it_cannot_enter_beside_runs_it_scores(tmp_path, monkeypatch, capsys):
    """From a re-review: every folder rescore could not enter was a problem, so ``lost+found`` at the top of a
    mounted disk (root's, 700) failed every rescore with exit 2 after scoring every run; it is a warning, as the
    leaderboard's, and the runs are scored."""
    import harness.rescore as rescore
    import harness.runner
    from harness.registry import TASKS

    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0))
    (runs / "lost+found").mkdir()
    cannot_enter(monkeypatch, runs / "lost+found")
    monkeypatch.setattr(harness.runner, "check_scorer_names", lambda *a: None)  # scoring itself stubbed: the listing
    monkeypatch.setattr(TASKS.get("commonsense"), "scorers", ("judge",))
    monkeypatch.setattr(TASKS.get("commonsense"), "check_scoring", classmethod(lambda cls, s: None))
    scored = {"run": {"rescored": [{"columns": ["judge_avg"]}]}, "eval": {"judge_avg": {"value": 5.0}}}
    monkeypatch.setattr(rescore, "_rescore_one", lambda *a: scored)
    monkeypatch.setattr(rescore, "git_state", lambda: {})
    done, problems = rescore.rescore_runs(runs, "commonsense", {"judge": "j"}, None, say=lambda line: None)
    assert len(done) == 1 and problems == []
    assert "lost+found: the machine could not enter this folder" in capsys.readouterr().err


def test_the_leaderboards_advice_to_count_flops_again_names_the_subcommand(tmp_path, capsys):
    """From a review: the advice ran ``python scripts/recount_flops.py``, a script an installed package (a wheel)
    does not hold; ``harness recount-flops`` is there wherever the harness is."""
    runs = tmp_path / "runs"
    new, old = fixture_record("effilora", 0), fixture_record("effilora", 1)
    new["train"]["flops_per_step"]["counted_by"] = "a later counter"  # two counters in one section
    del old["train"]["hook_val_flops"]  # a record written before the scoring forwards were counted
    for record in (new, old):
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    err = capsys.readouterr().err
    assert "holds FLOPs counted by 2 different counters" in err and "do not count their FLOPs" in err, err
    assert err.count(f"with harness recount-flops {runs} (adding --data-dir commonsense=FOLDER") == 2, err
    assert "scripts/recount_flops.py" not in err


def test_a_runs_dir_the_machine_cannot_read_is_said_so_not_said_to_hold_no_runs(tmp_path, monkeypatch, capfd):
    """From a review: ``--runs-dir`` at a folder chmod 000 said "no successful run records under ...; run `harness
    run ...` first", as if it held none, where it holds runs this user cannot read."""
    from tests.conftest import harness_here

    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, 0.0))
    cannot_enter(monkeypatch, runs)
    done = harness_here(capfd, "leaderboard", "--runs-dir", str(runs), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done
    assert done.stderr.startswith(
        f"harness: error: runs dir {str(runs)!r} cannot be read (PermissionError: Permission denied); check its "
        "permissions (this user must read and enter it: r and x) and the disk, or pass --runs-dir a folder of runs it "
        "can read"
    ), done.stderr
    assert "no successful run records" not in done.stderr and not (tmp_path / "out").exists()


def _holder(record: dict, field: str) -> tuple[dict, str]:
    """The dict of ``record`` holding a dotted ``field``, and the field's last key."""
    *parents, last = field.split(".")
    for key in parents:
        record = record[key]
    return record, last


@pytest.mark.parametrize(
    "field",
    [
        "run.config",
        "run.config.method",
        "run.config.train",
        "train.flops_per_step",
        "train.percent_trainable",
        "train.train_s",
    ],
)
def test_a_successful_record_cut_short_is_skipped_with_its_missing_field_named(tmp_path, capsys, field):
    """Was a KeyError traceback from the leaderboard (and at the end of `harness run`)."""
    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, 0.0))
    cut = fixture_record("effilora", 0, 0.0)
    holder, last = _holder(cut, field)
    del holder[last]
    write_fixture(runs, cut)
    write_leaderboards(runs, tmp_path / "out")
    err = capsys.readouterr().err
    assert f"{cut['run']['id']}/{RECORD}: a successful record without '{field}" in err, err
    assert [r["method"] for r in read_csv(tmp_path / "out" / "commonsense.csv")] == ["lora"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("train.memory", None),
        ("run.config.method_options", None),
        ("env.device", None),
        ("train.flops_per_step", "lots"),
        ("run.config.train", None),
        ("train.train_s", None),
        # from a review of the first fix: these too crashed it
        ("train.adapter_file_bytes", None),
        ("train.params_updated_per_step.mean", None),
        ("train.hook_val_s", None),
        ("train.tokens_per_s", "fast"),
        ("run.config.protocol", None),
        ("run.config.preset", None),
        # from a review of the CLI: these crashed it too
        ("run.created_at", None),
        ("run.config.extra", "x"),
        ("run.config.model_label", None),
        ("train.memory.peak_rss_gb", None),
        ("train.base_params", {}),
        ("train.flops_per_step.total", "lots"),
        ("train.flops_per_step.relative_to_lora", "1.2"),
    ],
)
def test_a_successful_record_with_a_field_of_another_kind_is_skipped_naming_it(tmp_path, capsys, field, value):
    """From a review: each of these, edited by hand, crashed the leaderboard (and the end of `harness run`) with a
    traceback; a record without train.train_s too."""
    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, 0.0))
    bad = fixture_record("effilora", 0, 0.0)
    holder, last = _holder(bad, field)
    holder[last] = value
    write_fixture(runs, bad)
    write_leaderboards(runs, tmp_path / "out")
    err = capsys.readouterr().err
    assert f"{bad['run']['id']}/{RECORD}: a successful record whose '{field}' is {type(value).__name__}" in err, err
    assert [r["method"] for r in read_csv(tmp_path / "out" / "commonsense.csv")] == ["lora"]


def skipped_and_named(tmp_path, capsys, bad: dict, message: str) -> None:
    """A leaderboard of a good ``lora`` record and ``bad``: ``bad`` is skipped with a warning naming its record and
    ``message``, and the good one tabulated."""
    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, 0.0))
    write_fixture(runs, bad)
    write_leaderboards(runs, tmp_path / "out")
    err = capsys.readouterr().err
    assert f"{bad['run']['id']}/{RECORD}: {message}" in err, err
    assert [r["method"] for r in read_csv(tmp_path / "out" / "commonsense.csv")] == ["lora"]


def test_a_record_with_an_empty_score_list_is_skipped_and_named(tmp_path, capsys):
    """n = 0 aborted the whole leaderboard ('scores must be a non-empty 1-D array'), naming no run."""
    empty = fixture_record("effilora", 0, 0.0)
    empty["eval"]["ARC-Easy"] = {"metric": "acc", "value": 0.0, "n": 0, "scores": []}
    skipped_and_named(tmp_path, capsys, empty, "ARC-Easy has no per-example scores (n = 0)")


def test_a_record_with_a_non_finite_train_field_is_skipped_and_named(tmp_path, capsys):
    """A NaN ``percent_trainable`` passed the checks, and the HTML page's axis raised "cannot convert float NaN to
    integer" after the tables and the Markdown were written, naming no file."""
    bad = fixture_record("effilora", 0, 0.0)
    bad["train"]["percent_trainable"] = float("nan")
    bad["train"]["memory"]["peak_rss_gb"] = float("inf")
    skipped_and_named(tmp_path, capsys, bad, "train.percent_trainable is not a finite number")


def test_a_record_that_is_not_utf8_is_skipped_and_named(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, 0.0))
    (runs / "damaged").mkdir()
    (runs / "damaged" / RECORD).write_bytes(b'{"schema": 1, "run": "\xff\xfe"}')  # not UTF-8
    write_leaderboards(runs, tmp_path / "out")
    err = capsys.readouterr().err
    assert f"warning: skipped {runs / 'damaged' / RECORD}: unreadable (" in err and "codec" in err, err


def test_per_example_scores_outside_their_scale_are_refused_naming_the_column(tmp_path, capsys):
    """The leaderboard reads scores without a ``scale`` as percent: a judge's 1-10 or a score below 0 must say so."""
    from harness.records import check_eval

    entry = {"metric": "judge", "value": 5.0, "n": 2, "scores": [4.0, 6.0], "examples": "e"}
    check_eval({"judge": entry})  # within 0-100: read as percent
    check_eval({"judge": {**entry, "scale": [1, 10]}})
    for bad, message in (
        (
            {**entry, "scores": [-1.0, 6.0]},
            r"'judge': scores holds -1.0, outside its scale 0 to 100; give the entry 'scale'",
        ),
        ({**entry, "scale": [1, 10], "scores": [0.0, 6.0]}, r"'judge': scores holds 0.0, outside its scale 1 to 10"),
        ({**entry, "scale": [10, 1]}, r"'judge': 'scale' \[10, 1\] must be \[low, high\]"),
        ({**entry, "scale": [1, 10], "baselines": {"chance": [5.0, 50.0]}}, r"baselines\['chance'\] holds 50.0"),
    ):
        with pytest.raises(ValueError, match=message):
            check_eval({"judge": bad})
    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, 0.0))
    over = fixture_record("effilora", 0, 0.0)
    over["eval"]["ARC-Easy"] = {**entry, "scores": [104.0, 6.0]}
    write_fixture(runs, over)
    write_leaderboards(runs, tmp_path / "out")
    assert f"{over['run']['id']}/{RECORD}: eval entry 'ARC-Easy': scores holds 104.0" in capsys.readouterr().err
    assert [r["method"] for r in read_csv(tmp_path / "out" / "commonsense.csv")] == ["lora"]


def test_the_tables_show_each_rows_seeds_and_say_which_references_a_section_lacks(tmp_path):
    """A one-seed row listed above a three-seed one is no ranking: the seeds column says so. A section with no
    zero-shot run says it has none (its rows were never compared with the untrained model)."""
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_fixture(runs, fixture_record("lora", seed, 0.0))
    write_fixture(runs, fixture_record("effilora", 0, 5.0))
    write_leaderboards(runs, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    # (these fixtures keep no per-example answers: no majority or chance row either, which is said too)
    assert "Not in this section: no zero-shot (base) run; no majority or chance row (none of this task's" in md
    lines = md.splitlines()
    assert lines[[i for i, line in enumerate(lines) if line.startswith("| method |")][0]].endswith("| seeds |")
    assert any(line.startswith("| lora |") and line.endswith("| 0 1 |") for line in lines)
    assert any(line.startswith("| effilora |") and line.endswith("| 0 |") for line in lines)
    html = (tmp_path / "out" / "leaderboard.html").read_text()
    assert '<th data-type="text" title="the seeds a row pools">seeds</th>' in html and ">0 1</td>" in html
    assert "Not in this section: no zero-shot (base) run;" in html
    write_fixture(runs, fixture_record("base", 0, 0.0))
    write_leaderboards(runs, tmp_path / "out")
    assert "no zero-shot (base) run" not in (tmp_path / "out" / "leaderboard.md").read_text()


def test_a_section_of_a_task_whose_records_hold_no_baselines_says_it_has_no_majority_or_chance_row(tmp_path):
    """From a review: the diffusion section (records from before its fidelity baselines) showed no majority or
    chance row and said nothing, where a commonsense section without them says so."""
    runs = tmp_path / "runs"
    for method in ("lora", "base"):
        record = fixture_record(method, 0, 0.0)
        for entry in record["eval"].values():
            for key in ("answers", "n_options", "baselines"):
                entry.pop(key, None)
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "Not in this section: no majority or chance row (none of this task's records keep" in md
    assert "| majority |" not in md
    assert "no majority or chance row (none of this task" in (tmp_path / "out" / "leaderboard.html").read_text()


def test_record_schema_is_checked(tmp_path):
    path = tmp_path / RECORD
    record = fixture_record("lora", 0, 0.0)
    path.write_text(json.dumps(record))
    assert read_record(path)["run"]["id"] == record["run"]["id"]
    for breakage, message in (
        (lambda r: r.pop("eval"), "missing or malformed 'eval'"),
        (lambda r: r["run"].update(status="done"), "status 'done'"),
        (lambda r: r.update(schema=99), "schema 99"),
    ):
        broken = json.loads(json.dumps(record))
        breakage(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=message):
            read_record(path)


def test_run_ids_change_with_the_config_not_the_data_dir():
    [a] = build_specs("commonsense", ["lora"], [0], "smoke")
    [b] = build_specs("commonsense", ["lora"], [0], "smoke", method_options={"r": 4})
    [c] = build_specs("commonsense", ["lora"], [1], "smoke")
    assert len({a.run_id, b.run_id, c.run_id}) == 3 and a.run_id.startswith("commonsense-lora-smoke-s0-")
    assert "data_dir" not in a.to_dict()["task_options"]


@pytest.mark.parametrize(("task", "preset", "setting"), [
    ("commonsense", "paper", "eval_limit"),
    ("commonsense", "paper", "train_cap"),
    ("multimodal", "embedded", "eval_limit"),
])  # fmt: skip
def test_a_limit_of_0_is_no_limit_and_the_presets_run_id(task, preset, setting):
    """From a review: --eval-limit 0 and --train-cap 0 ("0: no limit") over a preset with no limit (None) ran the same
    and made a second run id (trained again, a leaderboard section of its own)."""
    [none] = build_specs(task, ["lora"], [0], preset)
    assert getattr(none.task_options, setting) is None
    [zero] = build_specs(task, ["lora"], [0], preset, task_overrides={setting: 0})
    [five] = build_specs(task, ["lora"], [0], preset, task_overrides={setting: 5})
    assert zero.run_id == none.run_id and five.run_id != none.run_id
    # (a re-review) a record from before, which kept the 0, still rebuilds its own run id (a recount), and groups
    # with the None runs in the leaderboard's sections
    import dataclasses

    from harness.leaderboard import _settings
    from harness.runner import RunSpec, spec_from_record

    old = dataclasses.replace(none, task_options=dataclasses.replace(none.task_options, **{setting: 0}))
    assert old.run_id != none.run_id
    record = {"run": {"id": old.run_id, "config": old.to_dict()}}
    assert isinstance(spec_from_record(record), RunSpec) and spec_from_record(record).run_id == old.run_id
    assert _settings(record) == _settings({"run": {"id": none.run_id, "config": none.to_dict()}})


@pytest.mark.parametrize("method", ALL_METHODS)
def test_an_option_given_as_the_presets_number_keeps_its_run_id(method):
    """From a review: --alpha 16 (a float) over the smoke preset's alpha 16 made a second run id for the same run
    (trained again, a second row)."""
    [preset] = build_specs("commonsense", [method], [0], "smoke")
    [given] = build_specs("commonsense", [method], [0], "smoke", method_options={"alpha": 16.0, "r": 8})
    [other] = build_specs("commonsense", [method], [0], "smoke", method_options={"alpha": 16.5})
    assert preset.method_options["alpha"] == 16 and type(preset.method_options["alpha"]) is int
    assert given.run_id == preset.run_id and other.run_id != preset.run_id
    [embedded] = build_specs("commonsense", [method], [0], "embedded")  # its alpha is the config's default, 32.0
    [given] = build_specs("commonsense", [method], [0], "embedded", method_options={"alpha": 32})
    assert given.run_id == embedded.run_id and type(given.method_options["alpha"]) is float


def test_a_reducer_option_given_as_its_default_number_keeps_its_run_id():
    """From a review: score_lr=10 (an int) from Python, as a shortcut or in the ``reducer`` dict, made a second run
    id beside the default 10.0 (the command line's score_lr=10 is parsed as a float): top-level options kept the
    preset's form of a number, the Reducer's did not."""
    [preset] = build_specs("commonsense", ["effilora"], [0], "smoke")
    assert type(preset.method_options["reducer"]["score_lr"]) is float
    for options in (
        {"score_lr": 10},
        {"reducer": {"score_lr": 10}},
        {"reducer": {"score_lr": 10, "suppression": 0.25}},
    ):
        [given] = build_specs("commonsense", ["effilora"], [0], "smoke", method_options=options)
        assert given.run_id == preset.run_id, options
        assert type(given.method_options["reducer"]["score_lr"]) is float
    [other] = build_specs("commonsense", ["effilora"], [0], "smoke", method_options={"score_lr": 5})
    assert other.run_id != preset.run_id
    # a method with no Reducer of its own, given one: the form is ReducerConfig's
    [on] = build_specs("commonsense", ["lora"], [0], "smoke", method_options={"reducer": {"score_lr": 10.0}})
    [given] = build_specs("commonsense", ["lora"], [0], "smoke", method_options={"reducer": {"score_lr": 10}})
    assert given.run_id == on.run_id


@pytest.mark.parametrize("method", ALL_METHODS)
def test_heads_given_to_a_method_that_never_reads_them_keeps_its_run_id(method):
    """From a review: --methods lora,hydralora --heads 8 gave lora a second run id for the same training. A method
    whose tensors do not depend on heads declares it (``ignored_options``); one whose tensors do must not."""
    from harness import attach
    from tests.conftest import tiny_llama

    def size(heads: int) -> int:
        return attach(tiny_llama(), method, targets="q_proj,v_proj", r=2, heads=heads).num_trainable_params

    reads = size(2) != size(5)
    [preset] = build_specs("commonsense", [method], [0], "smoke")
    [given] = build_specs("commonsense", [method], [0], "smoke", method_options={"heads": 5})
    assert (given.run_id != preset.run_id) == reads, f"{method}: declare ignored_options = ('heads',) or not"
    assert given.method_options["heads"] == (5 if reads else preset.method_options["heads"])


def test_epochs_asked_for_replace_a_presets_step_count():
    """The smoke preset trains 3 steps: ``--epochs`` alone must not be ignored (a new run id, the same run)."""
    [preset] = build_specs("commonsense", ["lora"], [0], "smoke")
    [two] = build_specs("commonsense", ["lora"], [0], "smoke", train_overrides={"epochs": 2})
    [steps] = build_specs("commonsense", ["lora"], [0], "smoke", train_overrides={"steps": 5})
    assert preset.train.steps == 3 and (two.train.steps, two.train.epochs) == (None, 2)
    assert steps.train.steps == 5
    with pytest.raises(ValueError, match="--steps or --epochs, not both"):
        build_specs("commonsense", ["lora"], [0], "smoke", train_overrides={"steps": 5, "epochs": 2})


def test_paper_preset_resolves_offline():
    from harness.models import build_meta

    [spec] = build_specs("commonsense", ["effilora"], [0], "paper")
    assert spec.model == "meta-llama/Meta-Llama-3-8B" and spec.protocol == "generate"
    preset_options = {"r": 16, "alpha": 32, "dropout": 0.05, "heads": 4}
    assert {k: spec.method_options[k] for k in preset_options} == preset_options  # plus the resolved defaults
    t = spec.train
    assert (t.lr, t.epochs, t.warmup_steps, t.cutoff_len, t.micro_batch_size * t.grad_accum) == (
        3e-4,
        3.0,
        100,
        256,
        16,
    )
    assert t.train_on_inputs and spec.task_options.template == "llm-adapters" and spec.task_options.val_size == 120
    assert sum(p.numel() for p in build_meta(spec.model).model.parameters()) == 8_030_261_248


def test_a_failing_rerun_never_replaces_a_finished_record(tmp_path, monkeypatch):
    from harness import runner

    [spec] = build_specs("commonsense", ["lora"], [0], "smoke")
    finished = fixture_record("lora", 0, 0.0)
    finished["run"]["id"] = spec.run_id
    write_fixture(tmp_path, finished)
    original = (tmp_path / spec.run_id / RECORD).read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runner, "_execute", boom)
    ctx, forced = runner.RunContext(tmp_path), runner.RunContext(tmp_path, force=True)
    # a task that does not say what data it has (test or training files)
    unknown_data = SimpleNamespace(
        data_fingerprint=lambda: None, training_files=lambda described=None: {}, other_scoring=lambda finished: None
    )
    assert runner.run_one(spec, unknown_data, ctx) == (finished, False)  # finished: skipped, not run
    failed, ran = runner.run_one(spec, None, forced)
    assert ran
    assert failed["run"]["status"] == "failed" and "out of memory" in failed["run"]["error"]
    assert (tmp_path / spec.run_id / RECORD).read_bytes() == original
    assert len(list((tmp_path / spec.run_id).glob("failed-*.json"))) == 1
    stamp = int(next(iter((tmp_path / spec.run_id).glob("failed-*.json"))).stem.split("-")[1])
    with pytest.MonkeyPatch.context() as clock:  # again within the same second: a second file beside the first
        clock.setattr(runner.time, "time", lambda: float(stamp))
        runner.run_one(spec, None, forced)
    names = sorted(p.name for p in (tmp_path / spec.run_id).glob("failed-*.json"))
    assert names == [f"failed-{stamp}-1.json", f"failed-{stamp}.json"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run_one(spec, None, forced)
    assert (tmp_path / spec.run_id / RECORD).read_bytes() == original
    assert len(list((tmp_path / spec.run_id).glob("cancelled-*.json"))) == 1


def test_a_forced_rerun_replaces_the_finished_runs_files_only_when_it_succeeds(tmp_path, monkeypatch):
    """Its adapter and predictions are written apart: a failure (in scoring, say) leaves the finished record
    beside the files it describes."""
    from harness import runner

    [spec] = build_specs("commonsense", ["lora"], [0], "smoke")
    finished = fixture_record("lora", 0, 0.0)
    finished["run"]["id"] = spec.run_id
    write_fixture(tmp_path, finished)
    run_dir = tmp_path / spec.run_id
    (run_dir / "adapter").mkdir()
    (run_dir / "adapter" / "weights").write_text("first run")
    (run_dir / "predictions.jsonl").write_text("first run")

    def execute(fail: bool):
        def run(spec, task, run_dir, out_dir, device, record, ctx):
            (out_dir / "adapter").mkdir(parents=True)
            (out_dir / "adapter" / "weights").write_text("re-run")
            (out_dir / "predictions.jsonl").write_text("re-run")
            if fail:
                raise RuntimeError("scoring ran out of memory")

        return run

    forced = runner.RunContext(tmp_path, force=True)
    monkeypatch.setattr(runner, "_execute", execute(fail=True))
    assert runner.run_one(spec, None, forced)[0]["run"]["status"] == "failed"
    assert (run_dir / "adapter" / "weights").read_text() == (run_dir / "predictions.jsonl").read_text() == "first run"
    monkeypatch.setattr(runner, "_execute", execute(fail=False))
    assert runner.run_one(spec, None, forced)[0]["run"]["status"] == "success"
    assert (run_dir / "adapter" / "weights").read_text() == (run_dir / "predictions.jsonl").read_text() == "re-run"
    assert not (run_dir / RERUN).exists() and read_record(run_dir / RECORD)["run"]["status"] == "success"


def test_a_forced_rerun_killed_while_swapping_its_files_in_is_finished_by_the_next_start(tmp_path, monkeypatch, capsys):
    """Killed after its first file replaced the finished run's: the leaderboard warns and counts the old record;
    the next plain start completes the swap (the new record, every new file) instead of skipping the run."""
    from harness import leaderboard, runner

    [spec] = build_specs("commonsense", ["lora"], [0], "smoke")
    finished = fixture_record("lora", 0, 0.0)
    finished["run"]["id"] = spec.run_id
    write_fixture(tmp_path, finished)
    run_dir = tmp_path / spec.run_id
    for name in ("adapter", "samples"):
        (run_dir / name).mkdir()
        (run_dir / name / "weights").write_text("first run")
    (run_dir / "predictions.jsonl").write_text("first run")

    def execute(spec, task, run_dir, out_dir, device, record, ctx):
        for name in ("adapter", "samples"):
            (out_dir / name).mkdir(parents=True)
            (out_dir / name / "weights").write_text("re-run")
        (out_dir / "predictions.jsonl").write_text("re-run")
        record["eval"] = {"piqa": {"acc": 1.0}}

    renamed = []
    real_rename = Path.rename

    def killed_after_one(self, target):  # SIGKILL after the first rename of the swap
        if renamed:
            raise SystemExit("killed")
        renamed.append(self.name)
        return real_rename(self, target)

    monkeypatch.setattr(runner, "_execute", execute)
    monkeypatch.setattr(Path, "rename", killed_after_one)
    with pytest.raises(SystemExit):
        runner.run_one(spec, None, runner.RunContext(tmp_path, force=True))
    monkeypatch.setattr(Path, "rename", real_rename)
    assert renamed == ["adapter"] and (run_dir / "adapter" / "weights").read_text() == "re-run"
    assert (run_dir / "samples" / "weights").read_text() == "first run"  # a mixed folder, for now
    assert read_record(run_dir / RECORD)["eval"] == finished["eval"]
    assert [r["run"]["id"] for r in leaderboard.load_records(tmp_path)] == [spec.run_id]
    assert f"warning: {spec.run_id}: a forced re-run succeeded but was stopped" in capsys.readouterr().err

    monkeypatch.setattr(runner, "_execute", lambda *a, **k: pytest.fail("the finished re-run ran again"))
    unknown_data = SimpleNamespace(
        data_fingerprint=lambda: None, training_files=lambda described=None: {}, other_scoring=lambda finished: None
    )
    record, ran = runner.run_one(spec, unknown_data, runner.RunContext(tmp_path))
    assert not ran and record["eval"] == {"piqa": {"acc": 1.0}} == read_record(run_dir / RECORD)["eval"]
    for name in ("adapter/weights", "samples/weights", "predictions.jsonl"):
        assert (run_dir / name).read_text() == "re-run", name
    assert not (run_dir / RERUN).exists()
    assert "finished that" in capsys.readouterr().out
    leaderboard.load_records(tmp_path)
    assert "stopped while" not in capsys.readouterr().err


def test_the_swap_flushes_its_folders_before_and_after_the_record_is_renamed_in(tmp_path, monkeypatch):
    """From the README's list of what was left: the swap's renames were not followed by a folder fsync, so a power
    cut could leave the new record on the disk beside the finished run's old files."""
    from harness import runner

    run_dir = tmp_path / "run"
    (run_dir / RERUN / "adapter").mkdir(parents=True)
    (run_dir / RERUN / "predictions.jsonl").write_text("re-run")
    (run_dir / RERUN / RECORD).write_text("{}")
    (run_dir / "predictions.jsonl").write_text("first run")
    events = []
    real_replace = runner.os.replace
    monkeypatch.setattr(runner, "flush_folder", lambda folder: events.append(("flush", Path(folder).name)))
    monkeypatch.setattr(
        runner.os, "replace", lambda a, b: (events.append(("record", Path(b).name)), real_replace(a, b))[1]
    )
    assert runner.finish_swap(run_dir)
    assert events == [("flush", RERUN), ("flush", "run"), ("record", RECORD), ("flush", "run")]
    assert (run_dir / "predictions.jsonl").read_text() == "re-run"


def test_a_pending_swap_that_cannot_finish_stops_with_the_fix_and_a_kill_at_its_end_leaves_no_checkpoint(
    tmp_path, monkeypatch
):
    from harness import runner
    from harness.guard import RunLock
    from harness.train import CHECKPOINT

    [spec] = build_specs("commonsense", ["lora"], [0], "smoke")
    finished = fixture_record("lora", 0, 0.0)
    finished["run"]["id"] = spec.run_id
    write_fixture(tmp_path, finished)
    run_dir = tmp_path / spec.run_id
    rerun = fixture_record("lora", 0, 1.0)
    rerun["run"]["id"] = spec.run_id
    (run_dir / RERUN).mkdir()
    (run_dir / RERUN / "predictions.jsonl").write_text("re-run")
    write_record(run_dir / RERUN, rerun)
    (run_dir / CHECKPOINT).write_text("the re-run's last checkpoint")
    real_rename = Path.rename

    def refused(self, target):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(Path, "rename", refused)
    with pytest.raises(ValueError, match=r"a forced re-run succeeded, but its files in rerun/ could not replace .*"
                       r"Permission denied.*run the same command again: it finishes the swap"):  # fmt: skip
        runner.run_one(spec, None, runner.RunContext(tmp_path))
    monkeypatch.setattr(Path, "rename", real_rename)
    assert RunLock(run_dir).acquire(blocking=False)  # let go despite the error

    def killed(src, dst):  # SIGKILL as the record is about to replace the finished one
        raise SystemExit("killed")

    monkeypatch.setattr(runner.os, "replace", killed)
    with pytest.raises(SystemExit):
        runner.finish_swap(run_dir)
    assert not (run_dir / CHECKPOINT).exists()  # gone before the record: never left beside the new one
    assert (run_dir / "predictions.jsonl").read_text() == "re-run" and (run_dir / RERUN / RECORD).is_file()


def test_the_contact_sheet_leaves_out_a_run_whose_swap_is_pending(tmp_path, capsys):
    from tasks.diffusion.sheet import contact_sheets

    record = fixture_record("lora", 0, 0.0)
    record["run"]["config"].update(task="diffusion", preset="smoke")
    run_dir = tmp_path / record["run"]["id"]
    (run_dir / RERUN).mkdir(parents=True)
    (run_dir / "predictions.jsonl").write_text("")
    write_record(run_dir / RERUN, record)
    assert contact_sheets([record], tmp_path, tmp_path) == []
    assert f"{record['run']['id']}: left out of the contact sheet until its swap is finished" in capsys.readouterr().err


def test_a_damaged_sample_or_predictions_file_leaves_a_cell_or_run_off_the_sheet_not_the_leaderboard(tmp_path, capsys):
    """An unreadable sample PNG raised out of ``harness leaderboard`` (the CSVs written, the Markdown and HTML
    not) and out of ``harness rescore``; a garbled ``predictions.jsonl`` the same. Now: the cell is left empty,
    the run left out, each with a warning, and the sheet is written."""
    from PIL import Image

    from tasks.diffusion.sheet import contact_sheets

    records = []
    for method, damage in (("base", None), ("lora", "png"), ("moslora", "jsonl"), ("hydralora", "null")):
        record = fixture_record(method, 0, 0.0)
        record["run"]["config"].update(task="diffusion", preset="smoke")
        folder = tmp_path / record["run"]["id"]
        (folder / "samples").mkdir(parents=True)
        Image.new("RGB", (8, 8), "red").save(folder / "samples" / "real-000.png")
        Image.new("RGB", (8, 8), "blue").save(folder / "samples" / "000.png")
        if damage == "png":
            (folder / "samples" / "000.png").write_bytes(b"not a png")
        rows = [{"n": 0, "file": "samples/000.png", "prompt": "a cat", "real": "cat.png", "category": "animal"}]
        text = "\n".join(json.dumps(r) for r in rows) + "\n"
        if damage == "null":  # a row whose file is null (a review: a TypeError out of the sheet)
            text = json.dumps({**rows[0], "file": None}) + "\n"
        (folder / "predictions.jsonl").write_text("{not json\n" if damage == "jsonl" else text)
        write_record(folder, record)
        records.append(record)
    [sheet] = contact_sheets(records, tmp_path, tmp_path)
    assert sheet.is_file() and not list(tmp_path.glob("*.tmp*"))
    err = capsys.readouterr().err
    assert "000.png: left empty on the contact sheet (UnidentifiedImageError" in err
    assert f"{records[2]['run']['id']}: left out of the contact sheet: its predictions.jsonl cannot be read" in err
    assert (
        f"{records[3]['run']['id']}: left out of the contact sheet: its predictions.jsonl cannot be read (a row" in err
    )


def test_a_failed_run_gets_a_failed_record(tmp_path, monkeypatch):
    from harness import runner

    [spec] = build_specs("commonsense", ["lora"], [0], "smoke")
    monkeypatch.setattr(runner, "_execute", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad batch")))
    record, _ = runner.run_one(spec, None, runner.RunContext(tmp_path))
    assert read_record(tmp_path / spec.run_id / RECORD)["run"]["status"] == "failed"
    assert record["run"]["error"] == "ValueError: bad batch" and "Traceback" in record["run"]["traceback"]


def test_the_committed_leaderboard_is_what_the_committed_records_make(tmp_path):
    """README: ``harness leaderboard --runs-dir results/runs`` rebuilds every committed leaderboard file: tables,
    Markdown and HTML byte for byte; the plots as images of the same size (their bytes carry matplotlib's
    version and its rendering, which another release may change)."""
    from PIL import Image

    from harness.cli import main

    results = Path(__file__).resolve().parents[1] / "results"
    assert main(["leaderboard", "--runs-dir", str(results / "runs"), "--out", str(tmp_path)]) == 0
    made = sorted(p.name for p in tmp_path.iterdir())
    assert len(made) == 16, made
    texts = [name for name in made if not name.endswith(".png")]
    differ = [name for name in texts if (tmp_path / name).read_bytes() != (results / name).read_bytes()]
    assert not differ, f"regenerate them: harness leaderboard --runs-dir results/runs --out results ({differ})"
    for name in sorted(set(made) - set(texts)):
        with Image.open(tmp_path / name) as new, Image.open(results / name) as committed:
            assert new.size == committed.size, name


def test_a_plot_names_the_model_steps_seeds_and_hardware_of_its_points(tmp_path, monkeypatch):
    """Plot titles named only the section key: a PNG read apart from the page did not say what made it."""
    import matplotlib.figure

    from harness.leaderboard import load_records, sections
    from harness.leaderboard_plot import plot, plot_label

    runs = tmp_path / "runs"
    for seed in (0, 1):
        record = fixture_record("lora", seed)
        record["env"]["device"] = "CPU A"
        write_fixture(runs, record)
    [s] = sections(load_records(runs))
    label = plot_label(s)
    assert s.model in label and "steps 3" in label and "seeds 0 1" in label and "CPU A" in label
    texts = []
    real = matplotlib.figure.Figure.text
    monkeypatch.setattr(
        matplotlib.figure.Figure, "text", lambda self, x, y, t, **k: texts.append(t) or real(self, x, y, t, **k)
    )
    plot([s], "commonsense", tmp_path / "p.png")
    assert any(label in t for t in texts) and (tmp_path / "p.png").is_file()


def test_plot_labels_name_the_model_where_the_shown_sections_differ_by_it(tmp_path, monkeypatch):
    """Two models at one preset and protocol both read "lora (smoke, cloze)" on the PNG."""
    import matplotlib.axes

    from harness.leaderboard import load_records, sections
    from harness.leaderboard_plot import plot

    runs = tmp_path / "runs"
    for model in ("tiny-a", "tiny-b"):
        record = fixture_record("lora", 0, evals={"ARC-Easy": scored("0123" * 5, "0123" * 5)})
        record["run"]["config"]["model_label"] = model
        record["run"]["id"] += f"-{model}"
        write_fixture(runs, record)
    secs = sections(load_records(runs))
    texts = []
    real = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(
        matplotlib.axes.Axes, "annotate", lambda self, text, *a, **k: texts.append(text) or real(self, text, *a, **k)
    )
    plot(secs, "commonsense", tmp_path / "p.png")
    assert sorted(texts) == ["lora (smoke, cloze, tiny-a)", "lora (smoke, cloze, tiny-b)"]
    texts.clear()
    plot([s for s in secs if s.model == "tiny-a"], "commonsense", tmp_path / "p.png")
    assert texts == ["lora"]  # one section: no suffix, as before


def test_leftover_files_of_tasks_not_rebuilt_are_named_not_deleted(tmp_path, capsys):
    """Rebuilt from runs without a task's, its old tables sat beside a leaderboard.md that does not mention them."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_fixture(runs, fixture_record("lora", 0))
    out.mkdir()
    for name in ("diffusion.csv", "diffusion_seeds.csv", "multimodal.png", "notes.csv", "commonsense_old.csv"):
        (out / name).write_text("old")
    write_leaderboards(runs, out)
    err = capsys.readouterr().err
    assert f"warning: {out} still holds diffusion.csv, diffusion_seeds.csv, multimodal.png from an earlier " in err
    assert "notes.csv" not in err and "commonsense_old.csv" not in err and (out / "diffusion.csv").read_text() == "old"
    (out / "diffusion.csv").unlink()
    (out / "diffusion_seeds.csv").unlink()
    (out / "multimodal.png").unlink()
    write_leaderboards(runs, out)
    assert "still holds" not in capsys.readouterr().err


def test_a_contact_sheet_of_a_task_without_records_is_named_with_its_tables_and_only_there(tmp_path, capsys):
    """From a review: rebuilt from runs without a diffusion record, ``leftover_files`` named diffusion.csv but not
    ``diffusion_samples_<preset>.png``, which stayed beside pages that show none of its runs. A task's per-preset
    ``{task}_samples_*.png`` are named with its tables, not deleted; where the task has records (its sheets rebuilt,
    and those of presets without records named by the task's ``leaderboard_files``), not a second time."""
    from harness.leaderboard import leftover_files

    runs, out = tmp_path / "runs", tmp_path / "out"
    write_fixture(runs, fixture_record("lora", 0))
    out.mkdir()
    for name in ("diffusion.csv", "diffusion_samples_embedded.png", "diffusion_samples_smoke.png", "diffusionx.png"):
        (out / name).write_text("old")
    write_leaderboards(runs, out)
    err = capsys.readouterr().err
    names = "diffusion.csv, diffusion_samples_embedded.png, diffusion_samples_smoke.png"
    assert f"warning: {out} still holds {names} from an earlier leaderboard: " in err, err
    assert "diffusionx.png" not in err and (out / "diffusion_samples_embedded.png").read_text() == "old"
    assert leftover_files(out, {"commonsense", "diffusion"}, runs) == []  # the task rebuilt: its sheets say it


def test_a_leaderboard_killed_mid_write_leaves_temp_files_the_next_one_removes(tmp_path):
    """From a review: SIGTERM during ``harness leaderboard`` left ``.commonsense.png.<hex>.tmp`` in --out, still there
    after the next leaderboard (only run folders were cleaned). Now the next one removes its folder's own (not the
    run folders' below it, which their runs' locks guard; not one written in the last minute, which a live writer
    may hold; not a name ``atomic_path`` does not make)."""
    import os
    import time

    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0))
    run_dir = next(runs.iterdir())
    killed = [runs / ".commonsense.png.0a1b2c3d.tmp", runs / ".leaderboard.md.deadbeef.tmp"]
    kept = [runs / ".commonsense.csv.12345678.tmp", runs / ".notes.tmp", run_dir / ".checkpoint.pt.0a1b2c3d.tmp"]
    for path in killed + kept:
        path.write_text("x")
    hour_ago = time.time() - 3600
    for path in [*killed, *kept[1:]]:  # kept[0] was just written: a live writer's
        os.utime(path, (hour_ago, hour_ago))
    write_leaderboards(runs, runs)
    assert not any(p.exists() for p in killed) and all(p.exists() for p in kept)
    assert (runs / "leaderboard.md").is_file()


def test_the_contact_sheet_takes_its_runs_from_the_data_of_the_newest_trained_run(tmp_path):
    """From a review: the sheet grouped runs by settings alone, so after base and lora on data A a newer lora on
    data B went beside A's base (the newest lora per method, whatever its data). As the leaderboard's sections
    (and its plot, the newest section): the runs on the newest trained run's data, base too where it read it."""
    from PIL import Image

    from tasks.diffusion.sheet import _newest_settings, contact_sheets

    a, b = "a" * 64, "b" * 64
    records = []
    for method, data, created in (("base", a, "1"), ("lora", a, "2"), ("lora", b, "3")):
        record = fixture_record(method, 0, evals={"similarity": {"metric": "sim", "value": 1.0, "sha256": data}})
        record["run"]["config"].update(task="diffusion", preset="smoke", data={"files": {"metadata.jsonl": data}})
        record["run"].update(id=f"{method}-{data[0]}", created_at=f"2026-01-0{created}")
        folder = tmp_path / record["run"]["id"]
        (folder / "samples").mkdir(parents=True)
        Image.new("RGB", (8, 8), "red").save(folder / "samples" / "real-000.png")
        Image.new("RGB", (8, 8), "blue" if data == b else "green").save(folder / "samples" / "000.png")
        row = {"n": 0, "file": "samples/000.png", "prompt": "a cat", "real": "cat.png"}
        (folder / "predictions.jsonl").write_text(json.dumps(row) + "\n")
        write_record(folder, record)
        records.append(record)
    assert [r["run"]["id"] for r in _newest_settings(records)] == ["lora-b"]  # was base-a, lora-a and lora-b
    assert [r["run"]["id"] for r in _newest_settings(records[:2])] == ["base-a", "lora-a"]
    [sheet] = contact_sheets(records, tmp_path, tmp_path)
    with Image.open(sheet) as im:
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert (0, 0, 255) in colours and (0, 128, 0) not in colours  # lora on B alone: not beside the base of A


def test_a_harness_vendored_in_a_monorepo_records_its_commit_and_an_installed_copy_none(tmp_path):
    """From a review: git_state recorded no commit unless the folder above the package was a repository's top level,
    which was right for an installed copy in a venv inside the user's repository but nulled the commit of a harness
    vendored as a subfolder of a monorepo, which that repository's commit pins. Its dirty flag is its own files'."""
    import subprocess

    from harness.records import git_state

    mono = tmp_path / "mono"
    vendored = mono / "third_party" / "lora-harness"  # the folder above harness/
    (vendored / "harness").mkdir(parents=True)
    (vendored / "harness" / "x.py").write_text("x = 1\n")
    (mono / "app.py").write_text("a = 1\n")
    installed = mono / ".venv" / "lib" / "python3.11" / "site-packages"
    installed.mkdir(parents=True)
    git = ["git", "-C", str(mono), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "third_party", "app.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the monorepo"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert git_state(vendored) == {"git_commit": head, "git_dirty": False}
    (mono / "app.py").write_text("a = 2\n")  # another project's change: not the harness's code
    assert git_state(vendored) == {"git_commit": head, "git_dirty": False}
    (vendored / "harness" / "x.py").write_text("x = 2\n")
    assert git_state(vendored) == {"git_commit": head, "git_dirty": True}
    assert git_state(installed) == {"git_commit": None, "git_dirty": None}  # a venv's copy: not the repository's
    assert git_state(mono / ".venv" / "lib" / "python3" / "dist-packages") == {"git_commit": None, "git_dirty": None}


def test_a_row_that_scored_other_examples_than_lora_says_why_it_is_not_compared(tmp_path, capsys):
    """From a review: a column two rows scored on other examples (a judge that failed on some images in one run)
    was left out of the paired comparison without a word, its empty cell read as "no per-example data"."""
    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, evals={"ARC-Easy": scored("0123" * 5, "0123" * 5)}))
    write_fixture(runs, fixture_record("effilora", 0, evals={"ARC-Easy": scored("0123" * 4, "0123" * 4)}))
    write_leaderboards(runs, tmp_path / "out")
    [effi] = [r for r in read_csv(tmp_path / "out" / "commonsense.csv") if r["method"] == "effilora"]
    assert effi["ARC-Easy_vs_lora"] == ""
    err = capsys.readouterr().err
    assert "effilora is not compared with lora on ARC-Easy: the two scored other examples (ARC-Easy: 16 and 20)" in err
    assert "effilora is not compared with lora on ARC-Easy" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_a_copied_or_renamed_run_folder_is_counted_once_and_named(tmp_path, capsys):
    """From a review: a run folder copied (``cp -r X X.bak``) gave "counted once, the newest (X), not X", and a
    renamed diffusion folder was left off the contact sheet without a word."""
    import shutil

    runs = tmp_path / "runs"
    lora = fixture_record("lora", 0)
    write_fixture(runs, lora)
    run_id = lora["run"]["id"]
    shutil.copytree(runs / run_id, runs / "a-copy")  # sorts before the original
    write_leaderboards(runs, tmp_path / "out")
    err = capsys.readouterr().err
    assert f"{runs / 'a-copy' / RECORD} also hold run {run_id} (a copy of its folder?); counted once, from " in err
    assert f"counted once, the newest ({run_id}), not {run_id}" not in err
    assert len(read_csv(tmp_path / "out" / "commonsense_seeds.csv")) > 0
    (runs / run_id).rename(runs / "renamed")
    shutil.rmtree(runs / "a-copy")
    write_leaderboards(runs, tmp_path / "out")
    assert f"holds run {run_id} in a folder of another name" in capsys.readouterr().err


def test_rescore_stamps_every_run_with_the_checkouts_state_before_the_first_record_was_written(tmp_path, monkeypatch):
    """From a review: `harness rescore` took git_state() for each run as it wrote it, so with the runs folder in
    the checkout (README: --runs-dir results/runs) every run after the first was stamped git_dirty by the record
    just rewritten; the state is taken once, before any record is written."""
    import harness.rescore as rescore
    from harness.registry import TASKS

    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_fixture(runs, fixture_record("lora", seed))
    task_cls = TASKS.get("commonsense")  # a task that scores a finished run again, as the diffusion suite's judge
    monkeypatch.setattr(task_cls, "scorers", ("judge_model",))
    monkeypatch.setattr(
        task_cls, "rescore", classmethod(lambda cls, run_dir, record, scoring: {"judge": scored("01", "01")})
    )

    def git_state():  # as the checkout says it: dirty once a record in it was rewritten
        return {"git_commit": "c0ffee", "git_dirty": any("rescored" in p.read_text() for p in runs.glob(f"*/{RECORD}"))}

    monkeypatch.setattr(rescore, "git_state", git_state)
    done, problems = rescore.rescore_runs(runs, "commonsense", {"judge_model": "judge-test"}, say=lambda line: None)
    assert len(done) == 2 and not problems, problems
    stamps = [read_record(p)["run"]["rescored"][-1] for p in sorted(runs.glob(f"*/{RECORD}"))]
    assert [(s["git_commit"], s["git_dirty"]) for s in stamps] == [("c0ffee", False)] * 2


def test_a_run_resumed_on_another_machine_is_left_out_of_its_rows_times_and_warned_about(tmp_path, capsys):
    """From a review: a resumed run's train_s carries its earlier steps' time, but its record's env is the resuming
    machine's, so overhead.csv pooled a run started on another CPU with this one's runs. A record that names where
    its earlier steps ran (``train.timed_on_before_resume``) is left out of the row's times, with a warning that says
    why; one resumed where it started is pooled as before."""
    runs = tmp_path / "runs"
    for seed, resumed, before in ((0, None, None), (1, 1, None), (2, 1, "CPU B")):
        record = fixture_record("lora", seed)
        record["env"]["device"], record["train"]["resumed_from_step"] = "CPU A", resumed
        if before:
            record["train"]["timed_on_before_resume"] = [
                {"device": before, "device_type": "cpu", "torch_threads": None, "malloc": None}
            ]
            moved = record["run"]["id"]
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    [row] = [r for r in read_csv(tmp_path / "out" / "overhead.csv") if r["method"] == "lora"]
    assert (row["train_s"], row["hook_val_s"], row["train_s_by_device"]) == ("10.5", "2.5", "CPU A: 10.5")
    line = (
        f"run {moved} trained part of its steps on CPU B and was resumed on CPU A: its train_s, hook_val_s and "
        "tokens_per_s are the sessions' together, so overhead.csv leaves them out of its row's times"
    )
    assert line in capsys.readouterr().err and line in (tmp_path / "out" / "leaderboard.md").read_text()


@pytest.mark.parametrize(
    "before",
    ["CPU B", [None], [{"device": None}], [{"device": "CPU B", "malloc": "on"}]],
    ids=["a string", "no entry", "no name", "malloc not a setting"],
)
def test_a_hand_edited_timed_on_before_resume_is_refused_naming_it_not_a_crash(tmp_path, before):
    """From a re-review: the leaderboard reads ``train.timed_on_before_resume`` but the record check did not, so a
    malformed one crashed ``write_leaderboards`` with an AttributeError or TypeError."""
    from harness.records import check_success

    record = fixture_record("lora", 0)
    record["train"]["timed_on_before_resume"] = before
    with pytest.raises(ValueError, match="timed_on_before_resume"):
        check_success(tmp_path / "record.json", record)


def test_the_csv_files_are_written_to_the_folder_named_even_under_a_folder_called_tilde(tmp_path, monkeypatch):
    """From a review: each CSV's atomic temp file was handed to pandas as a path, and pandas expands a leading
    ``~``: into a folder ``./~/lb`` the temp files stayed empty and were renamed into place (four 0-byte CSVs, exit
    0) while pandas wrote the tables to ``$HOME/lb/.<name>.csv.<hex>.tmp``. A path here is a path as given."""
    runs, home, here = tmp_path / "runs", tmp_path / "home", tmp_path / "here"
    for seed in (0, 1):
        write_fixture(runs, fixture_record("lora", seed))
    (home / "lb").mkdir(parents=True)
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    paths = write_leaderboards(runs, Path("~/lb"))
    write_leaderboards(runs, tmp_path / "plain")
    assert {p.name for p in paths} == OUTPUTS and not list((home / "lb").iterdir())  # nothing written there
    for name in OUTPUTS - {"commonsense.png"}:
        assert (here / "~" / "lb" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


def test_an_eval_value_that_is_not_the_mean_of_its_per_example_scores_is_refused_saying_what_it_must_be(
    tmp_path, capsys
):
    """From a review: a plugin's accuracy given as a fraction (``value`` = acc / 100) beside its ``preds`` and
    ``answers`` put two numbers in one column: the cells the per-example mean (52.5), the seeds' table, the seed
    spread and the ``†`` marks the value (0.72, 0.33): "chance | -2.5† | 0.0†"."""
    from harness.records import check_eval

    right = scored("0123", "0120")  # 75.0: 3 of 4 right
    check_eval({"ARC-Easy": right})
    check_eval({"ARC-Easy": {**right, "value": 75.0 + 1e-9}})  # float noise
    with pytest.raises(
        ValueError,
        match=r"eval entry 'ARC-Easy': 'value' 0.75 is not the mean of its per-example answers right \(100 an "
        r"example, 0 wrong: percent\), 75; give 'value': 75 ",
    ):
        check_eval({"ARC-Easy": {**right, "value": 0.75}})
    judged = {"metric": "p", "value": 5.0, "n": 2, "scores": [4.0, 6.0], "scale": [0, 10], "examples": "e"}
    check_eval({"p": {**judged, "value": 5.0004}})  # scores rounded to 3 decimals, the value from the unrounded
    with pytest.raises(ValueError, match=r"'p': 'value' 0.5 is not the mean of its per-example 'scores', 5; give"):
        check_eval({"p": {**judged, "value": 0.5}})
    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, evals={"ARC-Easy": right}))
    fraction = fixture_record("effilora", 0, evals={"ARC-Easy": {**right, "value": 0.75}})
    write_fixture(runs, fraction)
    write_leaderboards(runs, tmp_path / "out")
    err = capsys.readouterr().err
    assert f"{fraction['run']['id']}/{RECORD}: eval entry 'ARC-Easy': 'value' 0.75 is not the mean" in err, err
    assert [r["method"] for r in read_csv(tmp_path / "out" / "commonsense.csv")] == ["lora", "majority", "chance"]


def test_a_small_significant_difference_on_a_scale_of_ten_shows_its_sign_and_size(tmp_path):
    """From a review: on a plugin's ``scale: [0, 10]`` (or the diffusion judge's 1-10) a difference of -0.04 with
    its interval below 0 printed "0.0*": significant, with neither its sign nor its size."""
    from harness.leaderboard_render import fmt

    assert (fmt(-0.04, signed=True), fmt(0.0012), fmt(0.05, signed=True), fmt(-1e-12, signed=True)) == (
        "-0.040",
        "0.0012",
        "+0.1",
        "0.0",
    )
    runs = tmp_path / "runs"
    base = [4.0 + i % 5 for i in range(40)]

    def judged(scores: list[float]) -> dict:
        mean = sum(scores) / len(scores)
        return {"metric": "judge", "value": mean, "n": 40, "scores": scores, "scale": [0, 10], "examples": "e"}

    lower = [x - (0.02 if i % 2 else 0.06) for i, x in enumerate(base)]  # 0.04 lower on average, every one lower
    write_fixture(runs, fixture_record("lora", 0, evals={"ARC-Easy": judged(base)}))
    write_fixture(runs, fixture_record("effilora", 0, evals={"ARC-Easy": judged(lower)}))
    write_leaderboards(runs, tmp_path / "out")
    assert "| effilora | -0.040* | -0.040* |" in (tmp_path / "out" / "leaderboard.md").read_text()
    assert "vs lora -0.040*" in (tmp_path / "out" / "leaderboard.html").read_text()


def test_the_csvs_keep_a_difference_that_two_decimals_would_write_as_zero(tmp_path):
    """From a review: the CSVs kept two decimals, so a 1-10 judge's difference of 0.004 read 0.0 there (its sign
    and size lost) where the Markdown and HTML tables show it; two significant digits below 0.005, as they do."""
    runs = tmp_path / "runs"
    base = [4.0 + i % 5 for i in range(40)]

    def judged(scores: list[float]) -> dict:
        mean = sum(scores) / len(scores)
        return {"metric": "judge", "value": mean, "n": 40, "scores": scores, "scale": [0, 10], "examples": "e"}

    lower = [x - (0.002 if i % 2 else 0.006) for i, x in enumerate(base)]  # 0.004 lower on average
    write_fixture(runs, fixture_record("lora", 0, evals={"ARC-Easy": judged(base)}))
    write_fixture(runs, fixture_record("effilora", 0, evals={"ARC-Easy": judged(lower)}))
    write_leaderboards(runs, tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "commonsense_comparisons.csv")
    row = next(r for r in rows if (r["method"], r["reference"], r["benchmark"]) == ("effilora", "lora", "ARC-Easy"))
    assert float(row["diff"]) == -0.004 and float(row["ci_high"]) < 0


def test_runs_on_another_kind_of_device_are_another_section(tmp_path):
    """From a review: a seed run on a GPU (bf16) and one on a CPU (fp32) were pooled in one row and compared with
    ``*``, where the runner refuses to take one for the other (every built-in task computes in another dtype)."""
    runs = tmp_path / "runs"
    for device_type in ("cpu", "cuda"):
        for method in ("lora", "base"):
            record = fixture_record(method, 0 if device_type == "cpu" else 1)
            record["env"]["device_type"], record["env"]["device"] = device_type, f"Test {device_type}"
            write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    table = read_csv(tmp_path / "out" / "commonsense.csv")
    rows = [r for r in table if r["method"] == "lora"]
    assert sorted(r["settings"] for r in rows) == ['device_type "cpu"', 'device_type "cuda"']
    assert sorted(r["seeds"] for r in rows) == ["0", "1"]
    # a re-review: the zero-shot base pooled both devices' runs in one row, joined to both sections
    base = {r["section"]: (r["seeds"], r["hardware"]) for r in table if r["method"] == "base"}
    assert sorted(base.values()) == [("0", "Test cpu"), ("1", "Test cuda")]
    assert {r["section"]: r["hardware"] for r in rows} == {s: hw for s, (_, hw) in base.items()}


def test_a_base_kept_from_a_section_by_its_device_says_so(tmp_path):
    """From a re-review: a GPU base beside CPU runs only made a section of its own, with the same title as the CPU
    section's and nothing said to set it apart (a zero-shot section's training settings are not compared)."""
    runs = tmp_path / "runs"
    for method, device_type in (("lora", "cpu"), ("base", "cuda")):
        record = fixture_record(method, 0)
        record["env"]["device_type"], record["env"]["device"] = device_type, f"Test {device_type}"
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    settings = {r["method"]: r["settings"] for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert settings["lora"] == 'device_type "cpu"' and settings["base"] == 'device_type "cuda"'
    markdown = (tmp_path / "out" / "leaderboard.md").read_text()
    assert 'Set apart from the other sections of this title by: device_type "cuda".' in markdown


def test_hidden_run_folders_are_listed_as_the_glob_listed_them_and_a_runs_dir_without_x_is_said(tmp_path, monkeypatch):
    """From a re-review: find_records left out run folders whose names start with "." (the glob it replaced listed
    them, and the leaderboard counted them); and a runs dir that lists but whose folders cannot be entered (r without
    x) still said "no successful run records"."""
    import os

    from harness import records

    for name in (".hidden", "a"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text("{}")
    assert records.find_records(tmp_path) == sorted(tmp_path.glob("*/record.json"))
    real = os.access  # as a user who is not root sees a folder of mode 644 (root enters any)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if path == tmp_path else real(path, mode, **kw))
    with pytest.raises(ValueError, match=r"cannot be read \(it lists, but cannot be entered: no x permission"):
        records.find_records(tmp_path)


def _plot_laid_out(secs: list, monkeypatch, tmp_path: Path) -> tuple[dict, list[str]]:
    """``plot`` run on ``secs``; returns where its texts and axes lay (pixels) as it saved, and its warnings."""
    import warnings

    import matplotlib.figure

    from harness.leaderboard_plot import plot

    seen = {}
    real = matplotlib.figure.Figure.savefig

    def measure(fig, *args, **kwargs):
        renderer = fig.canvas.get_renderer()
        [ax] = fig.axes
        [footer] = [t for t in fig.texts if t.get_text()]
        seen.update(fig=fig.bbox, frame=ax.get_window_extent(renderer), axes=ax.get_tightbbox(renderer))
        seen.update(title=ax.title.get_window_extent(renderer), footer=footer.get_window_extent(renderer))
        seen.update(height_in=fig.get_size_inches()[1], title_text=ax.title.get_text())
        return real(fig, *args, **kwargs)

    with monkeypatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        patch.setattr(matplotlib.figure.Figure, "savefig", measure)
        warnings.simplefilter("always")
        plot(secs, "commonsense", tmp_path / "p.png")
    return seen, [str(w.message) for w in caught]


def test_a_plot_of_many_sections_keeps_its_title_and_labels_in_the_figure_and_off_the_axes(tmp_path, monkeypatch):
    """From a review: the title lists every shown section's key, and from 3 sections on it ran past the 6.5-inch
    figure (the task's name cut off); with 30 sections tight_layout was not applied (a warning) and the labels under
    the plot, one line per section, lay across the axes. The title wraps, a label too wide for the figure (wide
    letters at 150 characters) wraps narrower, and the figure grows by their lines, the axes keeping their size."""
    from harness.leaderboard import load_records, newest_sections, sections

    runs = tmp_path / "runs"
    for i in range(30):
        record = fixture_record("lora", 0, evals={"ARC-Easy": scored("0123" * 5, "0120" * 5)})
        record["run"]["config"]["model"] = f"/models/ckpt-{i}"
        record["run"]["config"]["model_label"] = f"ckpt-{i}"
        record["env"]["device"] = "CPU" if i else "W" * 120  # a label line of wide letters
        record["run"]["id"] += f"-m{i}"
        write_fixture(runs, record)
    secs = sections(load_records(runs))
    one, _ = _plot_laid_out(secs[:1], monkeypatch, tmp_path)
    many, warned = _plot_laid_out(secs, monkeypatch, tmp_path)
    assert not [w for w in warned if "Tight layout not applied" in w], warned
    fig = many["fig"]
    for name in ("title", "footer", "axes"):
        box = many[name]
        assert fig.x0 <= box.x0 and box.x1 <= fig.x1 and fig.y0 <= box.y0 and box.y1 <= fig.y1, (name, box, fig)
    assert many["title"].y0 >= many["frame"].y1  # above the plot's frame, not across it
    assert many["footer"].y1 <= many["axes"].y0  # below the axes and their x label
    said = " ".join(many["title_text"].split())
    assert said.startswith("commonsense: Avg score") and all(s.key in said for s in newest_sections(secs))
    assert many["height_in"] > 7 and many["frame"].height >= 0.95 * one["frame"].height  # the figure grew instead
    assert one["height_in"] == 4.2 and one["title_text"].count("\n") == 0  # one section: the plot as it was


def test_the_code_a_checkpoint_keeps_is_dirty_by_its_code_only_not_by_results(tmp_path):
    """From a re-review: the dirty flag of a resumed run's code covered the whole checkout, so a leaderboard rebuilt
    into results/ between two sessions made a resume warn of "other harness code" and record it."""
    import subprocess

    from harness.records import CODE_PATHS, git_state

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    (tmp_path / "harness").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "harness" / "train.py").write_text("a = 1\n")
    (tmp_path / "results" / "commonsense.csv").write_text("x\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    (tmp_path / "results" / "commonsense.csv").write_text("y\n")
    assert git_state(tmp_path)["git_dirty"] is True  # the record's: the whole checkout
    assert git_state(tmp_path, CODE_PATHS)["git_dirty"] is False
    (tmp_path / "harness" / "train.py").write_text("a = 2\n")
    assert git_state(tmp_path, CODE_PATHS)["git_dirty"] is True


def test_a_successful_record_with_a_bool_for_a_number_is_refused(tmp_path):
    """From a mutation test: a bool where a number belongs (``true`` hand-edited into ``train.steps``) was
    accepted by the record check with its bool test removed."""
    from harness.records import check_success

    record = fixture_record("effilora", 0, 0.0)
    record["train"]["steps"] = True
    with pytest.raises(ValueError, match="'train.steps' is bool"):
        check_success(tmp_path / "record.json", record)


def test_a_value_half_a_point_from_its_per_example_mean_is_refused():
    """From a mutation test: the value-vs-mean tolerance was pinned from below only (1e-2 passed)."""
    from harness.records import check_eval

    entry = {"metric": "acc", "value": 75.5, "n": 4, "answers": "0123", "preds": {"acc": "0120"}}
    with pytest.raises(ValueError, match="is not the mean of its per-example answers right"):
        check_eval({"ARC-Easy": entry})


def test_a_score_just_over_100_is_outside_percent():
    """From a mutation test: the scale's upper bound was tested at 104 only (an off-by-one passed)."""
    from harness.records import check_eval

    entry = {"metric": "judge", "value": 53.25, "n": 2, "scores": [100.5, 6.0], "examples": "e"}
    with pytest.raises(ValueError, match="scores holds 100.5, outside its scale 0 to 100"):
        check_eval({"judge": entry})


@pytest.mark.parametrize("before", [None, 3])
def test_a_timed_on_before_resume_of_null_or_a_number_is_refused_not_a_crash(tmp_path, before):
    """From a mutation test: without its type check a hand-edited value crashed the reader with a TypeError."""
    from harness.records import check_success

    record = fixture_record("lora", 0)
    record["train"]["timed_on_before_resume"] = before
    with pytest.raises(ValueError, match="timed_on_before_resume"):
        check_success(tmp_path / "record.json", record)


def test_a_nan_inside_a_list_of_the_train_section_is_refused(tmp_path):
    """From a mutation test: the not-finite check was tested on plain numbers only, not inside lists."""
    from harness.records import check_success

    record = fixture_record("lora", 0)
    record["train"]["loss_curve"] = [[1, 2.0], [2, float("nan")]]
    with pytest.raises(ValueError, match=r"train\.loss_curve\.1\.1 is not a finite number"):
        check_success(tmp_path / "record.json", record)


def test_harness_code_dirty_flag_covers_only_the_code_paths(monkeypatch):
    """From a mutation test: ``harness_code`` asking ``git_state`` for the whole checkout passed (a rebuilt
    leaderboard under results/ would read as other harness code)."""
    from harness import records

    seen = {}

    def state(root=None, paths=(".",)):
        seen["paths"] = paths
        return {}

    monkeypatch.setattr(records, "git_state", state)
    records.harness_code()
    assert seen["paths"] == records.CODE_PATHS


def test_a_stray_file_in_the_runs_dir_is_no_run(tmp_path):
    """From a mutation test: a file beside the run folders (ENOTDIR when its record is looked for) was untested."""
    from harness.records import find_records

    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "run-a").mkdir()
    (tmp_path / "run-a" / RECORD).write_text("{}")
    assert find_records(tmp_path) == [tmp_path / "run-a" / RECORD]


def test_n_options_as_long_as_answers():
    """From a mutation test: ``n_options`` of another length than ``answers`` was refused by no test."""
    from harness.records import check_eval

    entry = {"metric": "acc", "value": 75.0, "n": 4, "answers": "0123", "preds": {"acc": "0120"}, "n_options": "44"}
    with pytest.raises(ValueError, match="'n_options' must be a string of one digit 1-9 an example"):
        check_eval({"ARC-Easy": entry})


def test_a_scale_of_one_point_is_refused():
    """From a mutation test: a scale whose low equals its high (a division by zero for a percent) was accepted."""
    from harness.records import check_eval

    entry = {"metric": "p", "value": 5.0, "n": 2, "scores": [5.0, 5.0], "scale": [5, 5], "examples": "e"}
    with pytest.raises(ValueError, match=r"'scale' \[5, 5\] must be \[low, high\]"):
        check_eval({"p": entry})


def test_rows_that_scored_as_many_but_other_examples_than_lora_are_named(tmp_path, capsys):
    """From a mutation test (leaderboard_checks.py:71, the examples compared by their number): two rows that scored 20 examples each,
    but other ones, are not compared (``_compare`` pairs the same examples only); the warning must say so, not only
    where the counts differ (the suite's case: 16 and 20)."""
    from harness.leaderboard import write_leaderboards
    from tests.test_records_leaderboard import fixture_record, read_csv, scored, write_fixture

    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, evals={"ARC-Easy": scored("0123" * 5, "0123" * 5)}))
    write_fixture(runs, fixture_record("effilora", 0, evals={"ARC-Easy": scored("3210" * 5, "3210" * 5)}))
    write_leaderboards(runs, tmp_path / "out")
    [effi] = [r for r in read_csv(tmp_path / "out" / "commonsense.csv") if r["method"] == "effilora"]
    assert effi["ARC-Easy_vs_lora"] == ""  # not paired
    err = capsys.readouterr().err
    assert "effilora is not compared with lora on ARC-Easy: the two scored other examples (ARC-Easy: 20 and 20)" in err


def test_runs_pooled_with_a_run_that_names_fewer_files_still_split_on_a_training_file_read_two_ways(tmp_path):
    """From a mutation test (leaderboard_sections.py:341, a group's digests not grown by the runs it takes in): the oldest lora run
    names its test file only (a record from before training files were recorded); seed 1 trained on training file c
    joins it, and seed 2, trained on file d, must then not (the group now knows c). With the mutant all three seeds
    were pooled into one row, though two of them read other training data."""
    from harness.leaderboard import write_leaderboards
    from tests.test_records_leaderboard import _on_data, fixture_record, read_csv, scored, write_fixture

    answers = "0123" * 5
    records = [
        _on_data(fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, answers)}), "a"),
        _on_data(fixture_record("lora", 1, evals={"ARC-Easy": scored(answers, answers)}), "a", "c"),
        _on_data(fixture_record("lora", 2, evals={"ARC-Easy": scored(answers, "0000" * 5)}), "a", "d"),
    ]
    for i, record in enumerate(records):
        record["run"]["created_at"] = f"2026-01-0{i + 1}T00:00:00+00:00"
        write_fixture(tmp_path / "runs", record)
    write_leaderboards(tmp_path / "runs", tmp_path / "out")
    lora = [r for r in read_csv(tmp_path / "out" / "commonsense.csv") if r["method"] == "lora"]
    assert sorted((r["seeds"], r["ARC-Easy"]) for r in lora) == [("0 1", "100.0"), ("2", "25.0")]  # two sections


def _judge_entry(judge: str, score: float) -> dict:
    """A judge's column on 1-10 over four examples, naming the judge that scored it."""
    return {"metric": "judge", "value": score, "n": 4, "scores": [score] * 4, "scale": [1, 10], "examples": "e"} | {
        "judge_model": judge
    }


def _judged_by_run(record: dict, judge: str, score: float = 6.0) -> dict:
    """``record`` as made with ``harness run --judge-model judge``: the scorer in its config (and run id)."""
    record["run"]["config"]["task_options"]["scoring"] = {"judge_model": judge}
    record["run"]["id"] += f"-judged-{judge}"
    record["eval"]["judge"] = _judge_entry(judge, score)
    return record


def _section_ids(out: Path) -> dict[str, str]:
    return {r["method"]: r["section"] for r in read_csv(out / "commonsense.csv")}


def test_a_run_given_a_scorer_joins_the_section_of_its_settings(tmp_path, capsys):
    """From a review: ``harness run --judge-model`` puts the scorer in ``task_options.scoring``, which made the run a
    section of its own (no base row, no comparisons, and another section of the same title set apart by nothing
    said), though the scorer changes neither training nor samples and ``harness rescore`` judges runs made without
    one. It joins its settings' section, whose id stays that of the runs without a scorer."""
    runs, answers = tmp_path / "runs", "0123" * 5
    for method in ("base", "lora"):
        write_fixture(runs, fixture_record(method, 0, evals={"ARC-Easy": scored(answers, answers[:10] + "0" * 10)}))
    write_leaderboards(runs, tmp_path / "plain")
    [plain] = set(_section_ids(tmp_path / "plain").values())
    judged = _judged_by_run(fixture_record("effilora", 0, evals={"ARC-Easy": scored(answers, answers)}), "A")
    write_fixture(runs, judged)
    write_leaderboards(runs, tmp_path / "out")
    assert set(_section_ids(tmp_path / "out").values()) == {plain}  # one section, its id unchanged
    rows = {r["method"]: r for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert rows["effilora"]["ARC-Easy_vs_lora"] == "40.0" and rows["effilora"]["judge"] == "6.0"
    compared = {(r["method"], r["reference"]) for r in read_csv(tmp_path / "out" / "commonsense_comparisons.csv")}
    assert {("effilora", "lora"), ("effilora", "base")} <= compared
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert md.count("### tiny · preset smoke") == 1 and "Set apart" not in md
    # a run judged by its own run (judge A) beside one rescored by judge B (its config has no scorer): one section,
    # and the warning that its rows do not compare on the judge's column
    rescored = fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, answers[:10] + "0" * 10)})
    rescored["eval"]["judge"] = _judge_entry("B", 5.0)
    write_record(runs / rescored["run"]["id"], rescored)
    capsys.readouterr()
    write_leaderboards(runs, tmp_path / "out")
    assert set(_section_ids(tmp_path / "out").values()) == {plain}
    assert "judge scored by 2 different scorers across its runs" in capsys.readouterr().err


def test_a_seed_run_with_and_without_a_scorer_counts_once_the_newest_with_a_warning(tmp_path, capsys):
    """One method and seed run plain and again with ``--judge-model`` (a new run id, the same training): one row,
    counting the newest run, with the warning naming the other (as for any rerun under settings outside the row's
    key); before, they were two sections of one title."""
    runs, answers = tmp_path / "runs", "0123" * 5
    plain = fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, answers)})
    plain["run"]["created_at"] = "2026-01-01T00:00:00+00:00"
    write_fixture(runs, plain)
    judged = _judged_by_run(fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, answers)}), "A")
    judged["run"]["created_at"] = "2026-01-02T00:00:00+00:00"
    write_fixture(runs, judged)
    write_leaderboards(runs, tmp_path / "out")
    [row] = read_csv(tmp_path / "out" / "commonsense.csv")[:1]
    assert (row["method"], row["n_runs"], row["judge"]) == ("lora", "1", "6.0")
    assert len(set(_section_ids(tmp_path / "out").values())) == 1
    err = capsys.readouterr().err
    assert (
        f"lora has 2 runs of seed 0; counted once, the newest ({judged['run']['id']}), not {plain['run']['id']}" in err
    )


def test_the_spread_over_seeds_names_the_seeds_that_scored_a_column_where_some_did_not(tmp_path):
    """From a review: a row of seeds 0 1 whose seed 1 failed a benchmark read ``60.0–60.0`` there, as if two seeds
    scored alike; it reads ``60.0 (seed 0 only)``, and one of three seeds failing names the two that scored."""
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        record = fixture_record("lora", seed, shift=seed)
        if seed == 1:  # boolq failed on seed 1 of lora
            record["eval"]["boolq"] = {"status": "failed", "reason": "out of memory"}
        write_fixture(runs, record)
        if seed < 2:
            effi = fixture_record("effilora", seed, shift=seed)
            if seed == 1:
                effi["eval"]["boolq"] = {"status": "failed", "reason": "out of memory"}
            write_fixture(runs, effi)
    write_leaderboards(runs, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    spread = md.split("Spread over seeds")[1].split("\n\n")[1]
    cells = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in spread.splitlines()[2:]}
    assert cells["lora"][1:3] == ["0 1 2", "40.0–42.0"] and cells["lora"][3] == "60.0–62.0 (seeds 0 2)"
    assert cells["effilora"][1:4] == ["0 1", "40.0–41.0", "60.0 (seed 0 only)"]
    assert "60.0–60.0" not in md


def test_a_trained_row_without_an_avg_is_listed_last_and_is_not_the_reference(tmp_path):
    """From a review: an unknown Avg ranked as 0.0, so with a plugin task's negative scores a row with no Avg was
    listed above rows at -5 and -20, and where ``lora`` ran only at labelled settings (``trained_on``), the one with
    no Avg was taken as the reference and nothing was compared with it."""
    runs = tmp_path / "runs"

    def negative(score: float) -> dict:
        return {"metric": "m", "value": score, "n": 4, "scores": [score, score, score, score], "scale": [-100, 100]} | {
            "examples": "e"
        }

    for method, sources, entry in (
        ("lora", ["a"], negative(-5.0)),
        ("lora", ["b"], {"status": "failed", "reason": "out of memory"}),
        ("effilora", None, negative(-20.0)),
    ):
        record = fixture_record(method, 0, evals={"ARC-Easy": entry})
        if sources:
            record["run"]["config"]["task_options"]["train_sources"] = sources
            record["run"]["id"] += "-" + "".join(sources)
        write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    order = [(r["method"], r["Avg"]) for r in read_csv(tmp_path / "out" / "commonsense.csv")]
    assert order == [("lora (trained_on=a)", "-5.0"), ("effilora", "-20.0"), ("lora (trained_on=b)", "")]
    [vs] = [r for r in read_csv(tmp_path / "out" / "commonsense_comparisons.csv") if r["benchmark"] == "ARC-Easy"]
    assert (vs["method"], vs["reference"], vs["diff"]) == ("effilora", "lora (trained_on=a)", "-15.0")
