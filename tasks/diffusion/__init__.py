"""Text-to-image diffusion (EffiLoRA §4.3): adapters on a Stable Diffusion UNet's attention linears.

Models: ``paper`` = SD-1.5 (``runwayml/stable-diffusion-v1-5``: a hub id or a local diffusers folder;
``--random-weights`` builds its UNet from the shipped config and the small VAE/text encoder around it);
``embedded`` = a small pipeline of the same architecture pre-trained once here on Twemoji's other
categories (cached), fine-tuned by every method on faces + food. Data: image + caption in the imagefolder
layout (``--data-dir``), by default the shipped Twemoji (CC-BY 4.0). Scores per held-out prompt: the
offline ones (``similarity``, ``kid``, ``fidelity``; tasks/diffusion/scoring.py), the seven-criteria
GPT judge with ``--judge-model``, HPS v2 with ``--hps-checkpoint``; a score that cannot run is ``absent``.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from harness import models
from harness.models import MetaModel
from harness.registry import TASKS
from harness.task import EVERY_COLUMN, Example, Loaded, Recipe, Task, TaskOptions
from harness.train import TrainConfig
from tasks.diffusion import data as ddata
from tasks.diffusion import samples
from tasks.diffusion.folders import (
    _is_pipeline_folder,
    _sha256,
    _twemoji_base,
    resolve_data,
    twemoji_base_dir,
    unnamed_categories,
)
from tasks.diffusion.folders import twemoji_dir as twemoji_dir
from tasks.diffusion.presets import PRESETS
from tasks.diffusion.scorers import (
    JUDGE_COLUMNS,
    SCORER_COLUMNS,
    _describe_scorer,
    _hps_scorer,
    _other_scorer,
    _scored_by,
    _scorer_now,
    optional_scores,
)
from tasks.diffusion.scorers import _judge as _judge

ATTRIBUTION = "Twemoji graphics (c) Twitter, Inc. and other contributors, CC-BY 4.0"
EMBEDDED_PIPELINE = "small SD pipeline (UNet2DConditionModel + AutoencoderKL + CLIP text)"  # the embedded model
PROMPT_SEED = 1000  # prompt i of the held-out list is generated with seed 1000 + i, for every method


@TASKS.register("diffusion")
class DiffusionTask(Task):
    version = "1"
    protocols = ("native",)
    presets = PRESETS
    columns = ("similarity", "fidelity", "kid", *JUDGE_COLUMNS, "judge_avg", "hps_v2")
    scorers = ("judge_model", "hps_checkpoint")
    unused_train_settings = ("train_on_inputs",)  # the loss is the denoising one: there is no text to learn
    averaged = ("similarity", "fidelity")  # Avg: the two offline scores on a 0-100 scale, higher is better
    throughput_unit = "images"  # the recipe counts images as its "tokens"
    loads_remote_code = False  # diffusers' and transformers' own classes (a pipeline has no auto_map to run)

    @classmethod
    def check_options(cls, protocol: str, options: TaskOptions) -> None:
        if options.template != "caption":
            raise ValueError(
                f"template {options.template!r}: the diffusion task conditions on the caption; "
                "pass --template caption or leave it unset"
            )
        if options.train_sources:
            raise ValueError("--train-domains does not apply to the diffusion task; leave it unset")
        if judge_model := dict(options.scoring or ()).get("judge_model"):
            from tasks.diffusion import judge

            judge.check_available(str(judge_model))
        if checkpoint := dict(options.scoring or ()).get("hps_checkpoint"):  # before training, not in its column
            from tasks.diffusion import hps

            try:
                hps.open_clip_module()
            except hps.Unavailable as exc:
                env = os.environ.get("HARNESS_HPS_CHECKPOINT")  # where the setting came from, if not the flag
                given, leave = (
                    ("HARNESS_HPS_CHECKPOINT", "unset HARNESS_HPS_CHECKPOINT")
                    if env and Path(env).name == Path(str(checkpoint)).name
                    else ("--hps-checkpoint", "leave --hps-checkpoint out")
                )
                raise ValueError(
                    f"{given}: HPS v2 cannot score here: {exc}; or {leave} and score the saved samples later where it "
                    "can (harness rescore --hps-checkpoint)"
                ) from None

    @classmethod
    def default_template(cls, protocol: str, preset_template: str) -> str:
        return "caption"

    @classmethod
    def check_model(cls, model: str, trust_remote_code: bool = False) -> None:
        """A zero-shot run's check (a trained one builds the UNet on ``meta``): a config that is a transformers one
        reads as ``from_pretrained`` would read it (its own code only with ``trust_remote_code``); a diffusers
        config (a UNet's) is read only. What the embedded pipeline needs (open-clip-torch's BPE file, a cache to write
        its base into) depends on the data: ``check_data_for``."""
        if model == models.EMBEDDED or _is_pipeline_folder(model):
            return
        models.check_transformers_config(model, trust_remote_code=trust_remote_code)

    @classmethod
    def build_meta(cls, model: str, trust_remote_code: bool = False) -> MetaModel:
        from tasks.diffusion import model as dmodel

        if model != models.EMBEDDED and not _is_pipeline_folder(model):
            return models.build_meta(model, trust_remote_code)  # a UNet config (the paper's, shipped) or a hub id's
        from diffusers import UNet2DConditionModel

        if model == models.EMBEDDED:
            config = dmodel.unet_config()
        else:
            config = UNet2DConditionModel.load_config(str(Path(model).expanduser()), subfolder="unet")
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
        return MetaModel(models.label(model), unet, unet)

    def __init__(self, options: TaskOptions) -> None:
        super().__init__(options)
        self.check_options("native", options)
        self.folder = resolve_data(options.data_dir)
        self.data = ddata.load(self.folder)  # every line and image checked: bad data fails before any model
        self.settings: dict[str, Any] = {}
        # whether the loaded model is the embedded base, pre-trained on the shipped Twemoji whatever the data: its
        # images derive from Twemoji's, whose CC-BY licence asks for the notice (``describe``, the contact sheet)
        self.on_twemoji_base = False

    def check_data_for(self, model: str, random_weights: bool) -> None:
        """Before any run, what ``load`` needs (found there, each run failed in turn, a record each): a pipeline built
        from configs (``--random-weights``) or an embedded base still to pre-train makes its CLIP tokenizer from
        open-clip-torch's BPE file (a cached base loads the tokenizer saved with it); that base pre-trains on the
        shipped Twemoji where the data brings no base rows of its own (a ``--data-dir``), into a cache it can write."""
        from tasks.diffusion import model as dmodel
        from tasks.diffusion import pretrain

        if type(self).load is not DiffusionTask.load:  # a plugin's own load: what it reads is its own
            return
        if random_weights:
            dmodel.bpe_path()
        elif model == models.EMBEDDED:
            if not self.data.base:
                twemoji_base_dir()
            if not pretrain.is_pretrained(self.data.base or _twemoji_base()):  # else read, nothing written
                pretrain.check_cache_writable()
                dmodel.bpe_path()

    def _on_shipped_twemoji(self) -> bool:
        """Whether the data is the shipped Twemoji (no --data-dir, or one that leads to it)."""
        return ddata.is_shipped_twemoji(self.folder)

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
        from tasks.diffusion import model as dmodel
        from tasks.diffusion import pretrain
        from tasks.multimodal import vision

        self.settings = dict(settings or {})
        self.on_twemoji_base = model == models.EMBEDDED and not random_weights
        if model != models.EMBEDDED and self._on_shipped_twemoji():
            print(
                f"note: {model} fine-tunes on the shipped Twemoji (64 px, upscaled; {len(self.data.test)} held-out "
                "prompts); the paper's data is pokemon-blip-captions: save it with tasks/diffusion/data.py:load_hub "
                "and pass its folder as --data-dir",
                file=sys.stderr,
            )
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        info: dict[str, Any] = {
            "dtype": str(dtype).removeprefix("torch."),  # what the pipeline computes in (bf16 on a GPU)
            "frozen": "VAE and text encoder (adapters on the UNet only)",
            # what similarity, kid and fidelity measure in (tasks/diffusion/scoring.py): its packages and weights
            "feature_encoder": vision.provenance(),
        }
        if model == models.EMBEDDED and not random_weights:
            rows = self.data.base or _twemoji_base()
            if not self.data.base:  # the user's data: its held-out rows may be among the base's pretraining rows
                ddata.warn_pretrained_on(self.data, rows)
            folder, base = pretrain.ensure_base(rows)
            pipe = dmodel.load_folder(folder, device, dtype)
            info["base"] = {
                k: base[k]
                for k in (
                    "version",
                    "rows_sha256",
                    "n_rows",
                    "settings",
                    "pretrain_s",
                    "final_losses",
                    "vae_scaling_factor",
                    "data",  # what it was pre-trained on, with its licence
                )
                if k in base
            }
            info["base"]["folder"] = folder.name  # in the cache dir; no machine paths in records
            label = f"{EMBEDDED_PIPELINE}, pre-trained here on Twemoji"
        elif random_weights:
            unet_cfg = None
            if model != models.EMBEDDED:
                cfg = models.load_config_dict(model, pipeline=True)  # a pipeline folder's: its unet/ config
                if cfg.get("_class_name") != "UNet2DConditionModel":
                    raise ValueError(
                        f"{model}: --random-weights for the diffusion task needs a UNet2DConditionModel config"
                    )
                unet_cfg = cfg
            text = dmodel.text_config()
            if unet_cfg is not None:
                text = {
                    **text,
                    "hidden_size": unet_cfg["cross_attention_dim"],
                    "projection_dim": unet_cfg["cross_attention_dim"],
                    "intermediate_size": 4 * unet_cfg["cross_attention_dim"],
                    "num_attention_heads": max(1, unet_cfg["cross_attention_dim"] // 64),
                }
            vae = dmodel.vae_config()
            if unet_cfg is not None:  # latents of the UNet's size: the VAE's factor times its sample size
                vae = {**vae, "latent_channels": unet_cfg.get("in_channels", 4)}
            pipe = dmodel.build(device, dtype, seed=seed, unet=unet_cfg, vae=vae, text=text)
            # the embedded pipeline's architecture (it was labelled as the embedded language model's GGUF)
            label = f"{EMBEDDED_PIPELINE} architecture" if model == models.EMBEDDED else model
            label += " (random weights)"
        else:
            pipe = dmodel.load_folder(model, device, dtype)
            label = models.label(model)
        return Loaded(pipe, pipe.unet, label, pipe.tokenizer, info)

    def recipe(self, loaded: Loaded, config: TrainConfig) -> Recipe:
        from tasks.diffusion.recipe import DiffusionRecipe, Objective

        keys = ("prediction_type", "snr_gamma", "noise_offset")
        objective = Objective(**{k: self.settings[k] for k in keys if k in self.settings})
        own = loaded.model.scheduler.config.get("prediction_type", "epsilon")
        if own != objective.prediction_type:  # the zero-shot base samples with its own target, the methods with ours
            raise ValueError(
                f"model {loaded.label!r} was trained for {own} (its scheduler's prediction_type), the preset's "
                f"objective is {objective.prediction_type}: the methods would learn and sample another target than "
                f"the base; use a model trained for {objective.prediction_type}, or a preset with "
                f"prediction_type={own!r} (a plugin can add one to DiffusionTask.presets)"
            )
        loaded.model.scheduler.register_to_config(prediction_type=objective.prediction_type)
        return DiffusionRecipe(loaded.model, objective)

    def meta_replica(self, loaded: Loaded) -> MetaModel:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from harness.task import same_trainability
        from tasks.diffusion.model import Pipeline

        p = loaded.model
        with torch.device("meta"):
            parts = (
                UNet2DConditionModel.from_config(p.unet.config),
                AutoencoderKL.from_config(p.vae.config),
                type(p.text_encoder)(p.text_encoder.config),
            )
        replica = Pipeline(*parts, p.tokenizer, p.scheduler)
        return MetaModel(loaded.label, same_trainability(p, replica), replica.unet)

    # -- data -------------------------------------------------------------------------------------
    def splits(self) -> tuple[list[Example], list[Example]]:
        rows = list(self.data.train)
        import random

        random.Random(self.options.seed).shuffle(rows)
        if self.options.train_cap:
            rows = rows[: self.options.train_cap]
        examples = [Example(r.text, "", r.category, {"image": r.image, "seed": i}) for i, r in enumerate(rows)]
        if len(examples) <= self.options.val_size:
            raise ValueError(
                f"only {len(examples)} training images for val_size={self.options.val_size}; lower it (--val-size) "
                "or add images"
            )
        return examples[self.options.val_size :], examples[: self.options.val_size]

    def data_fingerprint(self) -> dict[str, str]:
        return {EVERY_COLUMN: _sha256(ddata.test_metadata(self.folder))}  # every column scores the same rows

    # -- scoring ----------------------------------------------------------------------------------
    def evaluate(
        self, loaded: Loaded, protocol: str, batch_size: int, predictions_path: Path | None, progress: bool = True
    ) -> dict[str, dict[str, Any]]:
        from tasks.diffusion import sampling, scoring

        if protocol not in self.protocols:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(self.protocols)}")
        pipe = loaded.model
        test = self.data.test
        chosen = ddata.prompts(test, self.options.eval_limit, seed=0)
        seeds = [PROMPT_SEED + test.index(i) for i in chosen]
        s = self.settings
        images = sampling.generate(
            pipe,
            [i.text for i in chosen],
            seeds,
            steps=int(s.get("sample_steps", 25)),
            guidance=float(s.get("guidance", 3.0)),
            scheduler=s.get("sampler", "ddim"),
            batch_size=batch_size,
            progress=progress,
        )
        size = pipe.resolution
        real = scoring.real_images(chosen, size)
        ids = "\n".join(f"{i.image.name}\t{seed}" for i, seed in zip(chosen, seeds, strict=True))
        common = {
            "n": len(chosen),
            "protocol": protocol,
            "examples": hashlib.sha256(ids.encode()).hexdigest()[:16],
            "sha256": _sha256(ddata.test_metadata(self.folder)),
        }
        gen_f, real_f = scoring.features(images), scoring.features(real)
        sim = scoring.similarity(gen_f, real_f)
        out: dict[str, dict[str, Any]] = {
            "similarity": {
                "metric": "similarity",
                "value": sum(sim) / len(sim),
                "scores": [round(x, 3) for x in sim],
                # a mean of 100 x cosines, not right/wrong: no percent end bound on its interval (a re-review: 4
                # prompts' 46.0 read [39.8, 60.2], the all-at-0-or-100 bound)
                "scale": list(scoring.SIMILARITY_SCALE),
                "higher_is_better": True,
                **common,
            },
        }
        k = scoring.kid(gen_f, real_f)
        out["kid"] = {
            "metric": "kid",
            "value": k["value"],
            "higher_is_better": False,
            "note": "x1000, the images generated for the scored prompts vs their real held-out images",
            **common,
        }
        if not math.isfinite(k["value"]):  # one image a set: no pair within a set to measure (NaN is not JSON)
            out["kid"] = {"status": "absent", "reason": f"KID needs 2 or more images a set; {len(sim)} scored"}
        elif len(sim) >= scoring.KID_CI_FROM and math.isfinite(k["lo"]) and math.isfinite(k["hi"]):
            out["kid"]["ci"] = [k["lo"], k["hi"]]  # fewer images resample to a few values: no interval
        unknown = unnamed_categories(self.data)
        clf = scoring.category_classifier(self.data.base + self.data.train, test, size) if not unknown else None
        predicted = clf.predict(gen_f) if clf else None
        if unknown:
            reason = (
                f"held-out categories without a training row ({', '.join(map(repr, unknown[:5]))}"
                f"{f' and {len(unknown) - 5} more' if len(unknown) > 5 else ''}): the classifier fit on the training "
                "rows could never name them (every such image would score 0 whatever the method)"
            )
            print(f"warning: fidelity is absent: {reason}; give each held-out category training rows", file=sys.stderr)
            out["fidelity"] = {"status": "absent", "reason": reason}
        elif clf is None:
            reason = scoring.no_classifier(self.data.base + self.data.train, test) or "no classifier"
            if any(i.category for i in self.data.base + self.data.train + test):  # categories given, not usable
                print(f"warning: fidelity is absent: {reason}", file=sys.stderr)
            out["fidelity"] = {"status": "absent", "reason": reason}
        else:
            hits = [100.0 * (p == i.category) for p, i in zip(predicted, chosen, strict=True)]
            categories = [i.category for i in chosen]
            top = max(sorted(set(categories)), key=categories.count)  # the commonest held-out category (ties: first)
            out["fidelity"] = {
                "metric": "fidelity",
                "value": sum(hits) / len(hits),
                "scores": hits,
                "higher_is_better": True,
                "classifier": clf.info,
                # per prompt: always naming the commonest category of the scored prompts, and a uniform guess
                # over the classifier's classes (the leaderboard's majority and chance rows)
                "baselines": {
                    "majority": [100.0 * (c == top) for c in categories],
                    "chance": [100.0 / len(clf.classes)] * len(categories),
                },
                **common,
            }
        if predictions_path is not None:  # before the optional scorers: what ``harness rescore`` reads, kept whatever
            self._save_samples(predictions_path, images, real, chosen, seeds, sim, predicted)  # they do
        return out | optional_scores(self.options_scoring(), images, [i.text for i in chosen], common)

    @classmethod
    def check_scoring(cls, scoring: dict[str, str]) -> None:
        """Before ``harness rescore`` touches a run: the judge is reachable (``judge.check_available``) and HPS v2
        loads here (an HPS v2 that cannot run would leave every run's column ``absent``)."""
        if model := scoring.get("judge_model"):
            from tasks.diffusion import judge

            judge.check_available(model)
        if checkpoint := scoring.get("hps_checkpoint"):
            from tasks.diffusion import hps

            try:
                _hps_scorer(checkpoint)
            except hps.Unavailable as exc:
                raise ValueError(f"HPS v2 cannot score here: {exc}") from None

    def other_scoring(self, finished: dict[str, Any]) -> str | None:
        """The judge (model, endpoint, rubric) or HPS v2 checkpoint (by sha256) that scored the finished run's
        columns, where this run's differ: its id names a checkpoint by file name and a judge by model only."""
        for key, value in self.options_scoring().items():
            before = _scored_by(finished.get("eval") or {}, key)
            if not before:
                continue
            now = _scorer_now(key, value)
            if (other := _other_scorer(key, before, now)) is not None:
                return f"its {SCORER_COLUMNS[key][-1]} was scored by {other}, and this run's is {_describe_scorer(key, now)}"
        return None

    @classmethod
    def rescore(cls, run_dir: Path, record: dict[str, Any], scoring: dict[str, str]) -> dict[str, dict[str, Any]]:
        """The columns of the scorers in ``scoring`` from the run's saved samples (``samples.rescore``)."""
        return samples.rescore(run_dir, record, scoring)

    def options_scoring(self) -> dict[str, str]:
        return dict(self.options.scoring or ())

    def _save_samples(self, predictions_path, images, real, chosen, seeds, sim, predicted) -> None:
        samples.save(predictions_path, images, real, chosen, seeds, sim, predicted)

    def training_files(self, described: dict[str, Any] | None = None) -> dict[str, str]:
        files = (ddata.describe(self.data) if described is None else described).get("files", {})
        name = str(ddata.train_metadata(self.folder).relative_to(self.folder))  # the captions, not the images
        return {name: files[name]} if name in files else {}

    def describe(self) -> dict[str, Any]:
        out = {**ddata.describe(self.data), "data_dir": self.folder.name}
        if self.data.base or self.on_twemoji_base:  # Twemoji's images, or a base pre-trained on them, made the samples
            out["attribution"] = ATTRIBUTION
        return out

    @classmethod
    def leaderboard_files(cls, records: list[dict[str, Any]], runs_dir: Path, out_dir: Path) -> list[Path]:
        from tasks.diffusion.sheet import contact_sheets

        return contact_sheets(records, runs_dir, out_dir)


__all__ = ["DiffusionTask"]
