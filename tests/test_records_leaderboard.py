"""Run records and the leaderboard, from fixture records (no training)."""

from __future__ import annotations

import csv
import json

import pytest

from harness.leaderboard import write_leaderboards
from harness.records import RECORD, new_record, read_record, write_record
from harness.runner import build_specs

BENCHES = {"ARC-Easy": 40.0, "boolq": 60.0}


def fixture_record(method: str, seed: int, shift: float, preset: str = "smoke") -> dict:
    [spec] = build_specs("commonsense", [method], [seed], preset)
    record = new_record(spec.run_id, spec.to_dict(), {"device": "Test CPU", "torch": "2.x", "transformers": "5.x"})
    record["run"]["status"] = "success"
    record["run"]["config"]["model_label"] = "tiny"
    record["eval"] = {
        b: {"metric": "acc", "value": v + shift, "n": 10, "protocol": "choice", "sha256": "x"}
        for b, v in BENCHES.items()
    }
    record["eval"]["hellaswag"] = {"status": "absent"}
    record["train"] = {
        "steps": 3,
        "train_s": 10.0 + seed,
        "tokens_per_s": 100.0,
        "trainable_params": 1000,
        "percent_trainable": 0.5,
        "params_updated_per_step": {"mean": 800.0},
        "memory": {"peak_rss_gb": 1.5},
        "adapter_file_bytes": 4000,
        "flops_per_step": {"total": 2000, "adapter": 100, "relative_to_lora": 1.25},
    }
    return record


def write_fixture(runs, record):
    run_dir = runs / record["run"]["id"]
    run_dir.mkdir(parents=True)
    write_record(run_dir, record)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_leaderboard_is_a_pure_function_of_the_records(tmp_path):
    runs = tmp_path / "runs"
    for seed, shift in ((0, 0.0), (1, 2.0)):
        write_fixture(runs, fixture_record("effilora", seed, shift))
    write_fixture(runs, fixture_record("lora", 0, -10.0))
    paths = write_leaderboards(runs, tmp_path / "out")
    assert {p.name for p in paths} == {"commonsense.csv", "commonsense.png", "overhead.csv", "leaderboard.md"}
    rows = read_csv(tmp_path / "out" / "commonsense.csv")
    assert [r["method"] for r in rows] == ["effilora", "lora"]  # best average first
    effi = rows[0]
    assert effi["ARC-Easy"] == "41.0 ± 1.4" and effi["boolq"] == "61.0 ± 1.4" and effi["hellaswag"] == "absent"
    assert effi["Avg"] == "51.0 ± 1.4" and effi["Param %"] == "0.500" and effi["seeds"] == "0 1"
    assert effi["protocol"] == "choice" and effi["preset"] == "smoke" and effi["hardware"] == "Test CPU"
    assert rows[1]["ARC-Easy"] == "30.0"
    overhead = read_csv(tmp_path / "out" / "overhead.csv")
    assert {r["method"]: r["relative_flops"] for r in overhead} == {"effilora": "1.25", "lora": "1.25"}
    before = {p.name: p.read_bytes() for p in paths if p.suffix != ".png"}
    write_leaderboards(runs, tmp_path / "out")
    assert before == {p.name: p.read_bytes() for p in paths if p.suffix != ".png"}


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


def test_paper_preset_resolves_offline():
    from harness.models import build_meta

    [spec] = build_specs("commonsense", ["effilora"], [0], "paper")
    assert spec.model == "meta-llama/Meta-Llama-3-8B" and spec.protocol == "generate"
    assert spec.method_options == {"r": 16, "alpha": 32, "dropout": 0.05, "heads": 4}
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
    assert runner.run_one(spec, None, tmp_path)["run"]["status"] == "success"  # finished: skipped, not run
    failed = runner.run_one(spec, None, tmp_path, force=True)
    assert failed["run"]["status"] == "failed" and "out of memory" in failed["run"]["error"]
    assert (tmp_path / spec.run_id / RECORD).read_bytes() == original
    assert len(list((tmp_path / spec.run_id).glob("failed-*.json"))) == 1

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run_one(spec, None, tmp_path, force=True)
    assert (tmp_path / spec.run_id / RECORD).read_bytes() == original
    assert len(list((tmp_path / spec.run_id).glob("cancelled-*.json"))) == 1


def test_a_failed_run_gets_a_failed_record(tmp_path, monkeypatch):
    from harness import runner

    [spec] = build_specs("commonsense", ["lora"], [0], "smoke")
    monkeypatch.setattr(runner, "_execute", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad batch")))
    record = runner.run_one(spec, None, tmp_path)
    assert read_record(tmp_path / spec.run_id / RECORD)["run"]["status"] == "failed"
    assert record["run"]["error"] == "ValueError: bad batch" and "Traceback" in record["run"]["traceback"]
