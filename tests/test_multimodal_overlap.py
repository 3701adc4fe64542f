"""scripts/multimodal_overlap.py: test records whose source image is a training record's, pixel for pixel."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "multimodal_overlap.py"


def test_a_test_emoji_drawn_like_a_training_one_is_listed(tmp_path, capsys):
    emoji = tmp_path / "twemoji" / "images"
    emoji.mkdir(parents=True)
    Image.new("RGBA", (4, 4), (200, 0, 0, 255)).save(emoji / "es.png")  # Spain's flag and Ceuta's: one drawing
    Image.new("RGBA", (4, 4), (200, 0, 0, 255)).save(emoji / "ea.png")
    Image.new("RGBA", (4, 4), (0, 0, 200, 255)).save(emoji / "eu.png")
    data = tmp_path / "data"
    data.mkdir()
    train = [
        {"id": "general-train-0000", "source": "twemoji:ea.png"},
        {"id": "document-train-0000", "source": "rendered:x"},
    ]
    test = [
        {"id": "general-test-0000", "kind": "open", "source": "twemoji:es.png"},
        {"id": "general-test-0001", "kind": "choice", "source": "twemoji:eu.png"},
        {"id": "document-test-0000", "kind": "open", "source": "rendered:x"},
    ]
    (data / "train.json").write_text(json.dumps(train))
    (data / "test.json").write_text(json.dumps(test))
    script = runpy.run_path(str(SCRIPT))
    rows = script["overlap"](data, script["source_pixels"](tmp_path / "twemoji"))
    assert rows == [
        {"id": "general-test-0000", "kind": "open", "source": "twemoji:es.png", "equals": ["twemoji:ea.png"]}
    ]
    assert script["main"]([str(data), "--twemoji-dir", str(tmp_path / "twemoji")]) == 0
    out = capsys.readouterr().out
    assert "general: 1 of 2 test records share a training image" in out
    # from a review: "document: 0 of 1 test records share a training image", though rendered images are not compared
    assert "document: 1 test records not compared (rendered images" in out and "document: 0 of" not in out


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ("[{", "train.json cannot be read as JSON"),
        ('[{"id": "x"}]', "train.json is not a list of records with an id and a source"),
        ("{}", "train.json is not a list of records with an id and a source"),
    ],
)
def test_the_overlap_check_refuses_other_data_in_one_line(tmp_path, capsys, train, message):
    """From a review: a user's data without ``source`` fields, a file that is not JSON, or an object gave a
    KeyError or JSONDecodeError traceback (an object printed nothing and exited 0)."""
    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "multimodal_overlap.py"))["main"]
    (tmp_path / "train.json").write_text(train)
    (tmp_path / "test.json").write_text('[{"id": "general-1", "source": "render:x"}]')
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_overlap_check_names_an_image_the_twemoji_folder_lacks(tmp_path, capsys):
    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "multimodal_overlap.py"))["main"]
    (tmp_path / "images").mkdir()
    records = '[{"id": "general-1", "source": "twemoji:gone.png"}]'
    (tmp_path / "train.json").write_text(records)
    (tmp_path / "test.json").write_text(records)
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), "--twemoji-dir", str(tmp_path)])
    assert stop.value.code == 2 and "FileNotFoundError" in capsys.readouterr().err


def test_the_overlap_check_without_a_twemoji_folder_names_its_own_flag(tmp_path, capsys, monkeypatch):
    """From a review: it said "...or pass --data-dir with --twemoji-dir of your own", but this script has no
    --data-dir (twemoji_dir's advice is harness run's)."""
    main = runpy.run_path(str(SCRIPT))["main"]
    for name in ("HARNESS_TWEMOJI_DIR", "HARNESS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # nothing beside the working folder either (../shared/data/diffusion/twemoji-64)
    monkeypatch.setattr("tasks.twemoji.CHECKOUT", tmp_path / "checkout")  # nor beside the checkout
    data = tmp_path / "data"
    data.mkdir()
    records = '[{"id": "general-1", "source": "twemoji:a.png"}]'
    (data / "train.json").write_text(records)
    (data / "test.json").write_text(records)
    with pytest.raises(SystemExit) as stop:
        main([str(data)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "as --twemoji-dir" in err and "--data-dir" not in err


def test_the_twemoji_folder_is_found_beside_the_checkout_from_any_working_folder(tmp_path, monkeypatch):
    """From a review: "beside the checkout" was beside the working folder, so `harness leaderboard` run elsewhere
    drew the contact sheet's real images from another source, without a word."""
    from tasks.twemoji import CHECKOUT, twemoji_dir

    for name in ("HARNESS_TWEMOJI_DIR", "HARNESS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    shipped = CHECKOUT.parent / "shared" / "data" / "diffusion" / "twemoji-64"
    if not (shipped / "metadata.jsonl").is_file():
        pytest.skip("no ../shared/data beside this checkout")
    monkeypatch.chdir(tmp_path)
    assert twemoji_dir() == shipped
