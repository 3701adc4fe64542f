"""scripts/plot_reducer.py: a Reducer run's score trajectory and update counts, written where asked."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from harness.records import new_record

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_reducer.py"


def _record(tmp_path: Path, folder: str = "run") -> Path:
    reducer = {
        "k": 2,
        "num_layers": 3,
        "selection": "importance",
        "update_counts": [3, 1, 2],
        "score_trajectory": [{"step": 2, "scores": [0.1, -0.2, 0.0]}, {"step": 4, "scores": [0.3, -0.4, 0.1]}],
    }
    config = {"method": "effilora", "model": "tiny", "preset": "smoke"}
    run = tmp_path / folder
    run.mkdir()
    record = new_record("effilora-run", config, {"device": "Test CPU"}) | {"train": {"adapter": {"reducer": reducer}}}
    record["run"]["status"] = "success"
    (run / "record.json").write_text(json.dumps(record))
    return run


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_writes_the_png_where_asked_and_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    run = _record(tmp_path)
    out = tmp_path / "plot.png"
    monkeypatch.setattr(sys, "argv", ["plot_reducer.py", str(run), "-o", str(out)])  # the run folder will do
    runpy.run_path(str(SCRIPT), run_name="__main__")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (run / "reducer.png").exists()
    for argv, message in (
        ([str(tmp_path / "nowhere.json")], "is not a file; pass a run's record.json"),
        ([str(run), "-o", str(tmp_path / "no" / "x.png")], "is not a folder; pass -o in an existing one"),
        ([str(run), "-o", str(tmp_path)], "is a folder; pass the PNG's path"),  # were tracebacks
        ([str(_write(tmp_path / "list.json", "[1]"))], "not a JSON object; pass a run's record.json"),
        ([str(_write(tmp_path / "bench.json", '{"rows": []}'))], "missing or malformed 'schema'; pass a run's"),
    ):
        monkeypatch.setattr(sys, "argv", ["plot_reducer.py", *argv])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(SCRIPT), run_name="__main__")
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_reducer_summary_that_lacks_a_field_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """From a review: a summary without num_layers (or update_counts, k, selection) gave a KeyError traceback."""
    run = _record(tmp_path)
    record = json.loads((run / "record.json").read_text())
    del record["train"]["adapter"]["reducer"]["update_counts"]
    (run / "record.json").write_text(json.dumps(record))
    monkeypatch.setattr(sys, "argv", ["plot_reducer.py", str(run), "-o", str(tmp_path / "p.png")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exit_.value.code == 2 and "its Reducer summary lacks update_counts" in capsys.readouterr().err


def test_a_run_of_many_scoring_rounds_names_eight_in_its_legend_and_keeps_its_title(tmp_path, monkeypatch):
    """From a review: a diffusion run's 99 scoring rounds made 99 legend entries, covering the plot, and a long
    model label cut the title off at both ends."""
    import matplotlib.pyplot as plt

    run = _record(tmp_path)
    record = json.loads((run / "record.json").read_text())
    record["train"]["adapter"]["reducer"]["score_trajectory"] = [
        {"step": 10 * (i + 1), "scores": [0.01 * i, -0.01 * i, 0.0]} for i in range(99)
    ]
    record["run"]["config"]["model_label"] = "a long model label " * 10
    (run / "record.json").write_text(json.dumps(record))
    figures = []
    monkeypatch.setattr(
        plt, "subplots", lambda *a, real=plt.subplots, **k: figures.append(real(*a, **k)) or figures[-1]
    )
    monkeypatch.setattr(sys, "argv", ["plot_reducer.py", str(run), "-o", str(tmp_path / "p.png")])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    fig, (top, _) = figures[0]
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert labels[0] == "step 10" and labels[-1] == "step 990" and len(labels) == 8
    lines = fig._suptitle.get_text().splitlines()
    assert lines[0] == "effilora-run" and lines[1].startswith("effilora, smoke preset: K=2 of 3 layers")
    assert len(lines) == 3 and all(len(line) < 140 for line in lines)
    fig.canvas.draw()  # and within the figure (from a review: cut at 130 characters, it ran past both edges)
    box = fig._suptitle.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width, (box, fig.bbox)


def test_an_out_folder_that_cannot_be_written_is_refused_before_the_figure(tmp_path, monkeypatch, capsys):
    """From a review: an -o in a folder that exists but cannot be written was found by the write, after the figure
    was built, as a PermissionError traceback naming a temp file. The tests run as root, who writes anywhere: the
    folder's refusal is made where ``harness.atomic`` makes its files."""
    import errno
    import os

    import matplotlib.pyplot as plt

    import harness.atomic as atomic

    def refuse(folder, prefix):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder / f"{prefix}0.tmp"))

    def no_figure(*args, **kwargs):
        raise AssertionError("the figure was built before the -o folder was checked")

    monkeypatch.setattr(atomic, "_new_file", refuse)
    monkeypatch.setattr(plt, "subplots", no_figure)
    out = tmp_path / "locked" / "p.png"
    out.parent.mkdir()
    monkeypatch.setattr(sys, "argv", ["plot_reducer.py", str(_record(tmp_path)), "-o", str(out)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and ".tmp" not in err
    line = err.strip().splitlines()[-1]
    assert line.endswith(f"error: -o {out}: {out.parent} is not a folder you can write; pass -o as a PNG's path in one")


def _plot(argv: list[str], monkeypatch) -> int:
    """The script run on ``argv``: its exit status (0 where it returned)."""
    monkeypatch.setattr(sys, "argv", ["plot_reducer.py", *argv])
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def test_the_title_names_the_run_and_its_seed(tmp_path, monkeypatch):
    """From a review: the title named no run id, task or seed, so two seeds' plots were byte-identical."""
    import matplotlib.pyplot as plt

    pngs = []
    for seed in (0, 1):
        run = _record(tmp_path, f"s{seed}")
        record = json.loads((run / "record.json").read_text())
        record["run"]["id"] = f"commonsense-effilora-smoke-s{seed}-0123abcd"
        record["run"]["config"] |= {"seed": seed, "task": "commonsense"}
        (run / "record.json").write_text(json.dumps(record))
        figures = []
        monkeypatch.setattr(
            plt, "subplots", lambda *a, real=plt.subplots, **k: figures.append(real(*a, **k)) or figures[-1]
        )
        assert _plot([str(run), "-o", str(tmp_path / f"s{seed}.png")], monkeypatch) == 0
        title = figures[0][0]._suptitle.get_text()
        assert title.startswith(f"commonsense-effilora-smoke-s{seed}-0123abcd\n") and f"seed {seed}: K=2" in title
        pngs.append((tmp_path / f"s{seed}.png").read_bytes())
    assert pngs[0] != pngs[1]


@pytest.mark.parametrize(
    ("status", "error", "said"),
    [
        (
            "failed",
            "RuntimeError: out of\nmemory",
            "run effilora-run failed: RuntimeError: out of memory; plot a successful run",
        ),
        ("cancelled", None, "run effilora-run cancelled; plot a successful run"),
    ],
)
def test_a_run_that_did_not_succeed_is_refused_naming_its_status(status, error, said, tmp_path, monkeypatch, capsys):
    """From a review: a failed run was plotted with no mention of it, and a failed effilora run with an empty train
    said "this run has no Reducer"."""
    run = _record(tmp_path)
    record = json.loads((run / "record.json").read_text())
    record["run"] |= {"status": status, "error": error}
    (run / "record.json").write_text(json.dumps(record))
    out = tmp_path / "p.png"
    assert _plot([str(run), "-o", str(out)], monkeypatch) == 2  # its Reducer summary kept: still refused
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == f"plot_reducer.py: error: {run / 'record.json'}: {said}" and not out.exists()
    record["train"] = {}  # as a run that failed in training leaves it
    (run / "record.json").write_text(json.dumps(record))
    assert _plot([str(run), "-o", str(out)], monkeypatch) == 2
    err = capsys.readouterr().err
    assert said in err and "no Reducer" not in err


@pytest.mark.parametrize("name", ["reducer.pdf", "reducer.svg", "reducer"])
def test_an_out_that_is_not_a_png_is_refused_before_the_figure(name, tmp_path, monkeypatch, capsys):
    """From a review: ``-o x.pdf`` wrote PNG bytes under a .pdf name."""
    import matplotlib.pyplot as plt

    def no_figure(*args, **kwargs):
        raise AssertionError("the figure was built before -o's suffix was checked")

    monkeypatch.setattr(plt, "subplots", no_figure)
    out = tmp_path / name
    assert _plot([str(_record(tmp_path)), "-o", str(out)], monkeypatch) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith(
        f"error: -o {out}: the plot is a PNG; pass -o with a .png name (e.g. {tmp_path / 'reducer.png'})"
    )
    assert not out.exists()
    monkeypatch.undo()  # a .png of capitals is a PNG's name
    assert _plot([str(_record(tmp_path, "upper")), "-o", str(tmp_path / "R.PNG")], monkeypatch) == 0
    assert (tmp_path / "R.PNG").read_bytes()[:4] == b"\x89PNG"
