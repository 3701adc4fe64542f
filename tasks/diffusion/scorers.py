"""The diffusion task's optional scorers, the GPT-as-judge rubric and HPS v2 (``optional_scores``), and what a
record keeps of the scorer that filled its columns, to tell another judge or checkpoint from it."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from typing import Any

from tasks.diffusion.judge import CRITERIA

JUDGE_COLUMNS = tuple(f"judge_{c}" for c in CRITERIA)
SCORER_COLUMNS = {"judge_model": (*JUDGE_COLUMNS, "judge_avg"), "hps_checkpoint": ("hps_v2",)}  # what each fills
# the per-example scores' ranges, recorded in their entries ("scale"): the leaderboard reads an entry without one as
# percent, whose interval near 0 gets Clopper-Pearson's bound (a judge's mean 3.18 of 60 prompts read up to 5.96)
JUDGE_SCALE = (1, 10)  # each criterion an integer 1-10 (tasks/diffusion/judge.py), and their mean
HPS_SCALE = (-100, 100)  # 100 x a cosine


def optional_scores(
    scoring: dict[str, str],
    images: list,
    prompts: list[str],
    common: dict[str, Any],
    pngs: list[bytes] | None = None,
    keep_models: bool = False,
    warn: bool = True,
) -> dict[str, dict[str, Any]]:
    """The judge's and HPS v2's columns (``absent`` where ``scoring`` does not ask for one) of ``images`` generated
    from ``prompts`` (``pngs``: their PNG files' bytes, else encoded here), whose entries share ``common``;
    ``keep_models``: HPS v2 stays loaded for the next call (``harness rescore``'s runs), else it is let go;
    ``warn``: say on stderr what failed and how to judge again (a run's; ``harness rescore`` reports it itself)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        out |= _judge(scoring.get("judge_model"), images, prompts, common, pngs)
    except Exception as exc:  # the judge's own bug or an odd server: the run keeps its other scores
        from tasks.diffusion.judge import scrub

        reason = scrub(f"the judge failed: {type(exc).__name__}: {exc}")[:300]
        out |= {c: {"status": "failed", "reason": reason} for c in (*JUDGE_COLUMNS, "judge_avg")}
    if warn:
        _warn_judge(out.get("judge_avg", {}))
    return out | _hps(scoring.get("hps_checkpoint"), images, prompts, common, keep_models)


def _warn_judge(avg: dict[str, Any]) -> None:
    """Say on stderr that the judge failed (how, and the fix for its cause), or failed on some images."""
    from tasks.diffusion.judge import CUT_OFF

    rescore = "harness rescore --task diffusion --runs-dir DIR --judge-model MODEL (no training)"
    # the last answer not taken was cut by the server's token cap (Ollama's num_predict, say, through a reasoning
    # model's thinking), not unreadable: another judge model is not the fix (no last_problem in a record made before)
    problem = avg.get("last_problem")
    cut = isinstance(problem, str) and problem.startswith(CUT_OFF)
    raise_cap = (
        "raise the judge server's limit on answer tokens (its max tokens, such as Ollama's num_predict: the last "
        "answer was cut off at it), or use a --judge-model that answers shorter"
    )
    if avg.get("status") == "failed":
        reason = avg["reason"]
        fix = (  # by cause: the server's token cap, the server, its answers, or this machine
            raise_cap
            if reason == "no parsable judge answer" and cut
            else "make the judge answer in the rubric's JSON (another --judge-model)"
            if reason == "no parsable judge answer"
            else "fix what it names on this machine"
            if "api_errors" not in avg and reason.startswith("the judge failed: ")
            else "fix the judge (OPENAI_BASE_URL, OPENAI_API_KEY, --judge-model)"
        )
        print(
            f"warning: {reason}; the run's other scores are kept. To judge it again, {fix} and score its saved "
            f"samples again: {rescore}",
            file=sys.stderr,
        )
    elif avg.get("failed"):  # some images judged: the columns average fewer prompts than the run's other scores
        said = CUT_OFF if cut else avg.get("last_unparsable") or avg.get("last_api_error") or "no answer"
        print(
            f"warning: the judge gave no scores for {avg['failed']} of the {avg['n'] + avg['failed']} images "
            f"({said}); its columns average the other {avg['n']}, and are not compared with rows that scored other "
            f"images. To judge them again{f', {raise_cap} and score them again' if cut else ''}: {rescore}",
            file=sys.stderr,
        )


def _judge(
    model: str | None, images: list, prompts: list[str], common: dict[str, Any], pngs: list[bytes] | None
) -> dict[str, dict]:
    from tasks.diffusion import judge

    if not model:
        return {c: {"status": "absent", "reason": "no --judge-model given"} for c in (*JUDGE_COLUMNS, "judge_avg")}
    pngs = pngs or [_png(im) for im in images]  # encoded only for a judge
    j = judge.Judge(model)
    verdicts = [j(png, prompt) for png, prompt in zip(pngs, prompts, strict=True)]
    ok = [(i, v) for i, v in enumerate(verdicts) if v.scores is not None]
    errors = [v.error for v in verdicts if v.error and v.requests]  # not those it gave up on unasked
    # the last image whose answer was not taken, with its text (where it had any) and why: one image's both
    # (a refusal's text beside another image's cut-off cause read as a refusal cut off)
    refused = [v for v in verdicts if v.scores is None and not v.error and (v.raw or getattr(v, "problem", ""))]
    unparsable = [refused[-1].raw] if refused and refused[-1].raw else []
    problems = [getattr(refused[-1], "problem", "")] if refused else []
    meta = {
        "judge_model": model,
        "judge_endpoint": j.endpoint,  # the server (no key; no path, where a proxy may carry a token)
        "rubric_version": judge.RUBRIC_VERSION,
        **judge.temperature_field([v for _, v in ok] or verdicts),  # "default": the model refused temperature 0
        "failed": len(verdicts) - len(ok),
        "requests": sum(v.requests for v in verdicts),
        "cached": sum(v.cached for v in verdicts),
    } | ({"api_errors": len(errors), "last_api_error": errors[-1]} if errors else {})
    if unparsable:  # what the judge said instead of scores (a refusal, prose), shortened, the key taken out
        meta["last_unparsable"] = judge.scrub(unparsable[-1])[:300]
    if problems := [p for p in problems if p]:  # the cause, also of an empty answer (a reasoning model's cut thinking)
        meta["last_problem"] = problems[-1]
    if not ok:
        reason = f"the judge failed: {errors[-1]}" if errors else "no parsable judge answer"
        return {c: {"status": "failed", "reason": reason, **meta} for c in (*JUDGE_COLUMNS, "judge_avg")}
    # the models that gave the scores as the server named them (--judge-model may be an alias of a dated snapshot,
    # and the cache keys answers by the alias); "unknown": a reply that named none, or an answer cached before the
    # cache kept it
    meta["judge_answered_by"] = sorted({v.model or "unknown" for _, v in ok})
    judged = {
        **common,
        "n": len(ok),
        "examples": hashlib.sha256(f"{common['examples']}:{[i for i, _ in ok]}".encode()).hexdigest()[:16],
    }
    out = {}
    for col, crit in zip(JUDGE_COLUMNS, judge.CRITERIA, strict=True):
        vals = [float(v.scores[crit]) for _, v in ok]
        out[col] = {
            "metric": col,
            "value": sum(vals) / len(vals),
            "scores": vals,
            "scale": list(JUDGE_SCALE),
            "higher_is_better": True,
            **judged,
            **meta,
        }
    avg = [sum(v.scores.values()) / len(judge.CRITERIA) for _, v in ok]
    out["judge_avg"] = {
        "metric": "judge_avg",
        "value": sum(avg) / len(avg),
        "scores": avg,
        "scale": list(JUDGE_SCALE),
        "higher_is_better": True,
        **judged,
        **meta,
    }
    return out


def _hps(
    checkpoint: str | None, images: list, prompts: list[str], common: dict[str, Any], keep: bool = False
) -> dict[str, dict]:
    from tasks.diffusion import hps

    if not checkpoint:
        return {"hps_v2": {"status": "absent", "reason": "no --hps-checkpoint given"}}
    try:
        scorer = _hps_scorer(checkpoint) if keep else hps.HPSv2(Path(checkpoint))  # ~4 GB: kept only when asked
    except hps.Unavailable as exc:
        return {"hps_v2": {"status": "absent", "reason": str(exc)}}
    try:
        vals = scorer.score(images, prompts)
    except Exception as exc:  # out of memory, a checkpoint that loads but does not fit: the other scores are kept
        reason = f"HPS v2 failed: {type(exc).__name__}: {exc}"[:300]
        print(
            f"warning: {reason}; the run's other scores are kept. To score it again: harness rescore --task "
            "diffusion --runs-dir DIR --hps-checkpoint FILE (no training)",
            file=sys.stderr,
        )
        return {"hps_v2": {"status": "failed", "reason": reason}}
    return {
        "hps_v2": {
            "metric": "hps_v2",
            "value": sum(vals) / len(vals),
            "scores": vals,
            "scale": list(HPS_SCALE),
            "higher_is_better": True,
            "checkpoint": scorer.provenance,
            **common,
        }
    }


def _scorer_fields(key: str, entry: dict[str, Any]) -> dict[str, str] | None:
    """What scored ``entry`` (a column of scorer ``key``), as far as the entry records it: the judge's model,
    endpoint and rubric; HPS v2's checkpoint file and sha256 (a record from before a field was kept lacks it).
    None for an entry without a score."""
    if "value" not in entry:
        return None
    if key == "judge_model":
        fields = {k: entry.get(f) for k, f in (("model", "judge_model"), ("endpoint", "judge_endpoint"))}
        fields["rubric"] = entry.get("rubric_version")
    else:
        checkpoint = entry.get("checkpoint") or {}
        fields = {"file": checkpoint.get("file"), "sha256": checkpoint.get("sha256")}
    return {k: str(v) for k, v in fields.items() if v is not None}


def _describe_scorer(key: str, fields: dict[str, str]) -> str:
    if key == "judge_model":
        return f"judge {fields.get('model')} at {fields.get('endpoint', '?')} (rubric {fields.get('rubric', '?')})"
    return f"HPS v2 checkpoint {fields.get('file')} (sha256 {fields.get('sha256', '?')[:12]})"


def _scored_by(evals: dict[str, Any], key: str) -> list[dict[str, str]]:
    """The scorers that scored a record's columns of ``key``, each once (empty: none scored)."""
    found = []
    for column in SCORER_COLUMNS[key]:
        fields = _scorer_fields(key, evals.get(column) or {})
        if fields is not None and fields not in found:
            found.append(fields)
    return found


def _other_scorer(key: str, before: list[dict[str, str]], now: dict[str, str]) -> str | None:
    """The scorers of ``before`` that are not ``now`` (on the fields each records), as a line; None: the same."""
    other = [b for b in before if any(now.get(k) != v for k, v in b.items())]
    return "; ".join(sorted(_describe_scorer(key, b) for b in other)) or None


def _scorer_now(key: str, value: str) -> dict[str, str]:
    """What scorer ``key`` given ``value`` here would write into a record (``_scorer_fields``): HPS v2 by its
    checkpoint's hash, as its provenance gives it, without loading the model."""
    if key == "judge_model":
        from tasks.diffusion import judge

        entry = {"value": 0, "judge_model": value, "judge_endpoint": judge.endpoint_from_environment()}
        return _scorer_fields(key, entry | {"rubric_version": judge.RUBRIC_VERSION}) or {}
    from tasks.diffusion import hps

    return {"file": Path(value).name, "sha256": hps.checkpoint_sha256(Path(value))}


_HPS: dict[tuple[str, int, int], Any] = {}  # the last HPS v2 kept, by checkpoint (path, size, mtime)


def _hps_scorer(checkpoint: str):
    """HPS v2 from ``checkpoint``, loaded once and kept (``harness rescore`` scores many runs with it)."""
    from tasks.diffusion import hps

    path = Path(checkpoint)
    stat = path.stat() if path.is_file() else None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns) if stat else None
    if key is None or key not in _HPS:
        scorer = hps.HPSv2(path)  # Unavailable: the caller says why
        _HPS.clear()
        _HPS[key] = scorer
    return _HPS[key]


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
