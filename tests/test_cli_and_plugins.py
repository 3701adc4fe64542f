"""The CLI's accounting and errors, and methods registered from outside the repo."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import METHODS
from harness.cli import main
from harness.registry import Registry
from tests.conftest import harness_here, tiny_llama

# spec/methods.md "Reference counts": Meta-Llama-3-8B, r=16, targets q,k,v,up,down, m=4
REFERENCE = {
    "lora": (28_311_552, 0.353),
    "lora_fa": (12_582_912, 0.157),
    "sharelora": (13_074_432, 0.163),
    "moslora": (28_352_512, 0.353),
    "hydralora": (69_992_448, 0.872),
    "effilora": (50_833_408, 0.633),
}
LLAMA3_BASE = 8_030_261_248


def test_every_built_in_method_has_its_reference_count():
    """A method added to methods/ must bring its spec reference count here (plugins from other tests aside)."""
    built_in = {m for m in METHODS.names() if METHODS.get(m).__module__.startswith("methods.")}
    assert set(REFERENCE) == built_in


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=300)


def test_params_prints_the_spec_reference_counts_at_llama3_8b(capsys):
    assert (
        main(
            [
                "params",
                "--model",
                "meta-llama/Meta-Llama-3-8B",
                "--methods",
                ",".join(REFERENCE),
                "--json",
                "--rank",
                "16",
                "--heads",
                "4",
                "--targets",
                "q_proj,k_proj,v_proj,up_proj,down_proj",
            ]
        )
        == 0
    )
    rows = {row["method"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows.keys() == REFERENCE.keys()
    for method, (trainable, percent) in REFERENCE.items():
        assert rows[method]["trainable"] == trainable
        assert round(rows[method]["percent"], 3) == percent
        assert rows[method]["base"] == LLAMA3_BASE
        assert rows[method]["total"] >= LLAMA3_BASE + trainable


def test_params_table_names_the_settings_its_counts_depend_on(capsys):
    """From a review: the table printed counts without r, alpha, heads or targets (only --json carried them), so
    a pasted table did not say what it counted; the line under the model names them."""
    assert main(["params", "--model", "meta-llama/Meta-Llama-3-8B", "--methods", "lora", "--rank", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (
        "settings: r=8, alpha=32.0, heads=4, targets=q_proj,k_proj,v_proj,up_proj,down_proj (heads: the multi-head "
        "methods')"
    )
    assert out[3].split()[:2] == ["lora", "14,155,776"]  # r=8: half r=16's 28,311,552


def test_params_settings_line_names_every_option_given(capsys):
    """From a review: ``--option train_shared_a=false`` and ``--option router_input=hidden`` changed effilora's
    counts, yet the settings line (r, alpha, heads, targets) read the same; every --option is on it, as the method
    took it (a plugin's own options too)."""
    model = ["params", "--model", "meta-llama/Meta-Llama-3-8B", "--methods", "effilora"]
    lines = {}
    for given in ([], ["--option", "train_shared_a=false"], ["--option", "router_input=hidden", "--rank", "16"]):
        assert main([*model, *given]) == 0
        out = capsys.readouterr().out.splitlines()
        lines[out[1]] = int(out[3].split()[1].replace(",", ""))
    settings = "settings: r=16, alpha=32.0, heads=4, targets=q_proj,k_proj,v_proj,up_proj,down_proj"
    assert lines == {
        f"{settings} (heads: the multi-head methods')": 50_833_408,
        f"{settings}, train_shared_a=False (heads: the multi-head methods')": 50_341_888,
        f"{settings}, router_input=hidden (heads: the multi-head methods')": 54_755_328,
    }


def test_params_names_each_methods_settings_where_a_plugins_defaults_differ(tmp_path, capfd, plugin_sandbox):
    """From a re-review: the settings line was the first method's, so a plugin of r=4 by default headed a table whose
    hydralora row counted r=16; methods of other settings get a line each, naming them."""
    plugin = tmp_path / "r4.py"
    text = PLUGIN.format(name="r4_lora").replace("    pass", "    r: int = 4\n    alpha: float = 8.0")
    plugin.write_text(text)
    done = harness_here(
        capfd, "--plugin", str(plugin), "params", "--model", "meta-llama/Meta-Llama-3-8B", "--methods", "r4_lora,lora"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("settings (r4_lora): r=4, alpha=8.0, heads=4, targets=")
    assert lines[2].startswith("settings (lora): r=16, alpha=32.0, heads=4, targets=")


@pytest.mark.parametrize(
    ("model", "base"), [("llava-hf/llava-1.5-7b-hf", 7_063_427_072), ("runwayml/stable-diffusion-v1-5", 859_520_964)]
)
def test_params_on_the_other_paper_models(capsys, model, base):
    targets = "to_q,to_k,to_v,to_out.0" if "diffusion" in model else "q_proj,k_proj,v_proj,o_proj"
    assert main(["params", "--model", model, "--methods", "all", "--targets", targets, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == sorted(METHODS.names())
    assert all(r["base"] == base and r["trainable"] > 0 for r in rows)
    if "diffusion" in model:  # a UNet without --targets: its attention's, as the diffusion suite adapts (no q_proj)
        assert main(["params", "--model", model, "--methods", "all", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == rows


def test_params_from_a_local_config(tmp_path, capsys):
    tiny_llama().config.to_json_file(tmp_path / "config.json")
    assert (
        main(["params", "--model", str(tmp_path), "--methods", "lora", "--targets", "q_proj", "--rank", "2", "--json"])
        == 0
    )
    [row] = json.loads(capsys.readouterr().out)
    assert row["trainable"] == 4 * 2 * (32 + 32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["params", "--methods", "lora,lroa", "--model", "meta-llama/Meta-Llama-3-8B"],
            f"unknown method 'lroa' (did you mean 'lora'?); available: {', '.join(METHODS.names())}",
        ),
        (
            ["params", "--methods", "lora", "--model", "meta-llama/Meta-Llama-3-8B", "--targets", "q_prj"],
            "target 'q_prj' matches no linear layer; the model's linear layers: down_proj, gate_proj, k_proj, lm_head",
        ),
        (
            ["params", "--methods", "moslora", "--model", "meta-llama/Meta-Llama-3-8B", "--option", "mixer=zeros"],
            "unknown option 'mixer' for method 'moslora'",
        ),
        (
            ["params", "--methods", "effilora", "--model", "meta-llama/Meta-Llama-3-8B", "--option", "router_input=x"],
            "router_input='x' is not valid; choose one of: subspace, hidden",
        ),
        (["params", "--model", "no/such/folder/"], "no config.json there"),
        (["--plugin", "missing_plugin.py", "list", "methods"], "plugin file 'missing_plugin.py' not found"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, message, capfd):
    """In this process (``harness_here``); the test below runs the first case as a command."""
    result = harness_here(capfd, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_input_in_a_new_process_is_one_line_without_traceback():
    result = run_cli("params", "--methods", "lora,lroa", "--model", "meta-llama/Meta-Llama-3-8B")
    assert result.returncode == 2 and "unknown method 'lroa' (did you mean 'lora'?)" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


PLUGIN = """
from dataclasses import dataclass
import torch.nn.functional as F
from harness import AdapterConfig, METHODS
from methods.lora import LoraLinear

@dataclass(frozen=True)
class HalfLoraConfig(AdapterConfig):
    pass

@METHODS.register("{name}")
class HalfLoraLinear(LoraLinear):
    '''LoRA with B only on the first half of the rank (a plugin for tests).'''
    config_cls = HalfLoraConfig
"""


def test_a_plugin_file_adds_a_method_to_the_cli(tmp_path, capfd, plugin_sandbox):
    """As a command, then in this process (``plugin_sandbox`` undoes its loading)."""
    plugin = tmp_path / "half_lora.py"
    plugin.write_text(PLUGIN.format(name="half_lora"))
    listed = run_cli("--plugin", str(plugin), "list", "methods")
    assert listed.returncode == 0 and "half_lora" in listed.stdout
    counted = harness_here(
        capfd,
        *("--plugin", str(plugin), "params", "--model", "meta-llama/Meta-Llama-3-8B", "--methods", "half_lora"),
        "--json",
    )
    assert json.loads(counted.stdout)[0]["trainable"] == REFERENCE["lora"][0]
    # given twice, or after the command: loaded once, and the command still parses
    again = harness_here(
        capfd, "--plugin", str(plugin), "params", "--plugin", str(plugin), "--methods", "half_lora", "--json"
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)[0]["method"] == "half_lora"


def test_the_readmes_method_example_runs_as_written(tmp_path, capfd, plugin_sandbox):
    """The README's "Adding a method" file, verbatim: listed, counted as LoRA is, its option taken."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [code] = [b for b in readme.split("```python\n")[1:] if b.startswith("# my_lora.py\n")]
    plugin = tmp_path / "my_lora.py"
    plugin.write_text(code.split("```", 1)[0])
    capfd.readouterr()
    assert main([
        "--plugin", str(plugin), "params", "--model", "meta-llama/Meta-Llama-3-8B", "--methods", "my_lora",
        "--option", "gain=2", "--json",
    ]) == 0, capfd.readouterr().err  # fmt: skip
    assert json.loads(capfd.readouterr().out)[0]["trainable"] == REFERENCE["lora"][0]
    source = plugin.read_text()
    assert 'ignored_options = ("heads",)' in source  # else --heads would give its runs a second run id


def test_an_installed_package_registers_through_the_entry_point_group(tmp_path):
    (tmp_path / "ep_lora.py").write_text(PLUGIN.format(name="ep_lora"))
    dist = tmp_path / "ep_lora-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-lora\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[harness.methods]\nep_lora = ep_lora\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "params",
            "--model",
            "meta-llama/Meta-Llama-3-8B",
            "--methods",
            "ep_lora",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["trainable"] == REFERENCE["lora"][0]


def test_registry_rejects_duplicates_bad_names_and_what_is_not_a_method_or_task():
    from harness.adapter import AdapterLinear
    from harness.task import Task

    registry: Registry = Registry("task", "tasks", "harness.none", "harness.task:Task")
    hooks = {name: lambda *a, **k: None for name in ("load", "recipe", "splits", "evaluate")}
    complete = {"presets": {"p": object()}, "default_preset": "p", **hooks}
    registry.register("x")(type("X", (Task,), complete))
    with pytest.raises(ValueError, match="already registered"):
        registry.register("x")(type("Y", (Task,), complete))
    # from a review: a task without its hooks, or without presets, registered and stopped the run with a traceback
    with pytest.raises(ValueError, match=r"task 'z': .*Z does not define evaluate, load, recipe, splits; define them"):
        registry.register("z")(type("Z", (Task,), {"presets": {"p": object()}}))
    with pytest.raises(ValueError, match=r"task 'z': .*Z defines no presets"):
        registry.register("z")(type("Z", (Task,), hooks))
    with pytest.raises(ValueError, match="lower-case Python identifier"):
        registry.register("My-Method")
    with pytest.raises(ValueError, match=r"task 'f': .*lambda> is not a subclass of Task; register one"):
        registry.register("f")(lambda: None)
    methods: Registry = Registry("method", "methods", "harness.none", "harness.adapter:AdapterLinear")
    with pytest.raises(ValueError, match=r"method 'plain': its config_cls \(None\) is not a dataclass"):
        methods.register("plain")(type("Plain", (AdapterLinear,), {"config_cls": None}))
    from harness.config import AdapterConfig

    undecorated = type("Undecorated", (AdapterConfig,), {"__annotations__": {"gain": float}, "gain": 1.0})
    with pytest.raises(ValueError, match=r"its config_cls .*Undecorated needs @dataclass\(frozen=True\)"):
        methods.register("plain")(type("Plain", (AdapterLinear,), {"config_cls": undecorated}))
    from typing import ClassVar

    tagged = type("Tagged", (AdapterConfig,), {"__annotations__": {"tag": ClassVar[str]}, "tag": "x"})
    hooks_only = {"config_cls": tagged, "delta": lambda self, x: x}
    methods.register("tagged")(type("TaggedLinear", (AdapterLinear,), hooks_only))  # a ClassVar is no field
    with pytest.raises(ValueError, match=r"method 'plain': .*Plain does not define delta\(self, x\); define it"):
        methods.register("plain")(type("Plain", (AdapterLinear,), {"config_cls": AdapterConfig}))


def test_a_plugin_tensor_not_named_lora_is_refused_and_the_model_left_as_it_was():
    """From a review: a plugin's ``self.A`` was counted as base, never stepped by the optimizer, never saved."""
    from harness import attach
    from harness.adapter import AdapterLinear
    from tests.conftest import DeltaOnlyLinear

    class Unnamed(DeltaOnlyLinear):
        def __init__(self, base, config, site, shared):
            super().__init__(base, config, site, shared)
            self.P = torch.nn.Parameter(
                torch.randn(config.r, config.r), requires_grad=False
            )  # frozen: its name is free
            if site.type == "v_proj":  # after q_proj is wrapped: the refusal unwraps it again
                self.A = self.new_param(config.r, site.d_in, init="kaiming")

    model = tiny_llama()
    model.lm_head.requires_grad_(True)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(
        ValueError, match=r"trainable tensor 'A' \(in model.layers.0.self_attn.v_proj\) is not named lora_"
    ):
        attach(model, Unnamed, targets="q_proj,v_proj", r=2)
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert attach(model, Unnamed, targets="q_proj", r=2).layers  # only frozen tensors besides lora_*: attached


def test_adapters_attach_to_the_linears_of_a_sequential(method):
    """From a review: names made of digits alone ("0", "1") raised StopIteration, a traceback instead of a line."""
    from harness import attach

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    adapter = attach(model, method, targets="0,2", r=2)
    assert sorted(adapter.layers) == ["0", "2"] and adapter.num_trainable_params > 0
    model(torch.randn(3, 8)).sum().backward()


def test_a_built_in_package_that_fails_to_import_fails_again_on_the_next_call(tmp_path, monkeypatch):
    """Not an empty registry (whose next error would be "unknown method 'lora'") after the first call's error."""
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("raise RuntimeError('boom')")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry = Registry("task", "brokenpkg", "harness.none", "harness.task:Task")
    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"):
            registry.names()


def test_a_local_tasks_module_that_hides_the_built_ins_is_named(tmp_path):
    """``python -m harness`` (and torchrun -m) puts the working folder first: a tasks.py there would hide every
    built-in task and leave an empty list; it is named instead."""
    (tmp_path / "tasks.py").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "harness", "list", "tasks"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "a 'tasks' module at" in result.stderr and "hides lora-harness's built-in tasks" in result.stderr


def test_list_methods_shows_every_registered_one(capfd):
    result = harness_here(capfd, "list", "methods")
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == sorted(METHODS.names())


def test_help_has_examples(capfd):
    result = harness_here(capfd, "--help")
    assert "harness params --model meta-llama/Meta-Llama-3-8B" in result.stdout


def test_all_expands_inside_a_list_of_names():
    from harness.cli import CliError, split_names

    names = METHODS.names()
    assert split_names("all", names, "method") == names
    assert split_names("base,all", names, "method") == ["base", *names]  # the README's diffusion sweep
    assert split_names("hydralora, all ,lora", names, "method") == [
        "hydralora",
        *[n for n in names if n != "hydralora"],
    ]
    with pytest.raises(CliError, match="no method given; available: "):
        split_names(" , ", names, "method")


def test_a_plugins_code_is_recorded_imports_its_neighbours_and_a_changed_one_is_not_taken_as_done(
    tiny_model, data_dir, tmp_path, capfd, plugin_sandbox
):
    """Editing a plugin left its finished runs looking done (same run id); a plugin could not import the module
    beside it."""
    (tmp_path / "half_helpers.py").write_text("NAME = 'half_lora'\n")
    plugin = tmp_path / "half_lora.py"
    plugin.write_text("from half_helpers import NAME\n" + PLUGIN.format(name="{NAME}").replace('"{NAME}"', "NAME"))
    args = ["--plugin", str(plugin), "run", "--methods", "half_lora", "--task", "commonsense", "--preset", "smoke",
            "--model", str(tiny_model), "--random-weights", "--data-dir", str(data_dir),
            "--runs-dir", str(tmp_path / "runs"), "--no-leaderboard", "--quiet"]  # fmt: skip
    # the first two runs here, in this process (plugin_sandbox undoes the loading); the edited: new processes
    assert main(args) == 0, capfd.readouterr().err[-2000:]
    [path] = (tmp_path / "runs").glob("*/record.json")
    record = json.loads(path.read_text())
    sha = hashlib.sha256(b"half_lora.py\0" + plugin.read_bytes() + b"half_helpers.py\0" + b"NAME = 'half_lora'\n")
    assert record["env"]["plugins"] == [{"file": "half_lora.py", "sha256": sha.hexdigest()}]  # it and its neighbour
    assert "done already" in harness_here(capfd, *args).stdout  # the same code: done
    for edited in (tmp_path / "half_helpers.py", plugin):  # the module beside it, then the plugin itself
        edited.write_text(edited.read_text() + "\n# changed\n")
        changed = run_cli(*args)
        assert changed.returncode != 0 and "Traceback" not in changed.stderr
        assert re.search(
            r"finished on other code \(the plugin file half_lora\.py differs from the one it ran with\); pass --force "
            r"to run it again on this code",
            changed.stderr,
        ), changed.stderr[-2000:]


def test_a_plugins_code_does_not_depend_on_which_plugin_was_loaded_first(tmp_path, monkeypatch, plugin_sandbox):
    """From a review: a module two plugins import was hashed only with the first loaded (sys.modules' difference),
    so editing it left the second's runs done, and the order of --plugin flags changed the second's hash."""
    registry = plugin_sandbox
    monkeypatch.syspath_prepend(str(tmp_path))  # as load_plugin appends it; here before, so either order
    (tmp_path / "shared_nb.py").write_text("K = 1\n")
    for name in ("nb_a", "nb_b"):
        (tmp_path / f"{name}.py").write_text("import shared_nb  # noqa\n" + PLUGIN.format(name=f"{name}_lora"))
    registry.load_plugin(tmp_path / "nb_a.py")
    registry.load_plugin(tmp_path / "nb_b.py")
    for name in ("nb_a", "nb_b"):
        plugin = tmp_path / f"{name}.py"
        expected = hashlib.sha256(f"{name}.py\0".encode() + plugin.read_bytes() + b"shared_nb.py\0K = 1\n")
        assert registry._PLUGINS_LOADED[plugin.resolve()] == expected.hexdigest()
        assert registry.plugin_files(METHODS.get(f"{name}_lora"))[0]["sha256"] == expected.hexdigest()
    assert registry.plugin_files(METHODS.get("lora")) == []  # a built-in a plugin imports stays a built-in


def test_a_plugins_hash_leaves_out_packages_installed_under_its_folder(tmp_path, monkeypatch, plugin_sandbox):
    """From a review: a virtual environment inside the plugin's folder (a checkout's .venv, or ~) had its loaded
    packages hashed with the plugin: slow, and an upgrade made its finished runs other code."""
    registry = plugin_sandbox
    site = tmp_path / ".venv" / "lib" / "site-packages"
    (site / "venv_pkg").mkdir(parents=True)
    (site / "venv_pkg" / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(site))
    plugin = tmp_path / "venv_plug.py"
    plugin.write_text("import venv_pkg  # noqa\n" + PLUGIN.format(name="venv_plug_lora"))
    registry.load_plugin(plugin)
    expected = hashlib.sha256(b"venv_plug.py\0" + plugin.read_bytes()).hexdigest()
    assert registry._PLUGINS_LOADED[plugin.resolve()] == expected


def test_a_plugins_hash_covers_the_helpers_it_imports_inside_a_function(tmp_path, plugin_sandbox):
    """From a review: a helper beside the plugin imported inside ``__init__`` (not yet imported when the plugin
    loads) was left out of its sha256, so editing it after a run left the run done; with the import at the top
    it was other code. The hash reads the import statements, in functions too, and the helpers' own (a package's
    relative import as well), without importing them."""
    import sys

    registry = plugin_sandbox
    (tmp_path / "lazy_nb.py").write_text("GAIN = 2.0\n")
    (tmp_path / "lazy_pkg").mkdir()
    (tmp_path / "lazy_pkg" / "__init__.py").write_text("def k():\n    from .deep import K\n    return K\n")
    (tmp_path / "lazy_pkg" / "deep.py").write_text("K = 3\n")
    plugin = tmp_path / "lazy_plug.py"
    plugin.write_text(
        PLUGIN.format(name="lazy_plug_lora")
        + "\n    def gain(self):\n        from lazy_nb import GAIN\n        import lazy_pkg\n\n"
        + "        return GAIN * lazy_pkg.k()\n"
    )
    registry.load_plugin(plugin)
    assert not {"lazy_nb", "lazy_pkg", "lazy_pkg.deep"} & set(sys.modules)  # read, not imported
    expected = hashlib.sha256()
    for name in ("lazy_plug.py", "lazy_nb.py", "lazy_pkg/__init__.py", "lazy_pkg/deep.py"):
        expected.update(f"{name}\0".encode() + (tmp_path / name).read_bytes())
    assert registry._PLUGINS_LOADED[plugin.resolve()] == expected.hexdigest()
    assert registry.plugin_files(METHODS.get("lazy_plug_lora"))[0]["sha256"] == expected.hexdigest()


def test_a_plugins_hash_covers_a_helper_it_imports_with_importlib(tmp_path, plugin_sandbox):
    """From a review: a helper beside the plugin loaded by ``importlib.import_module("name")`` or ``__import__``
    inside a function was left out of the sha256 until loaded. A literal name is read as an import statement is; a
    name computed at run time is not (nothing to read)."""
    import sys

    registry = plugin_sandbox
    (tmp_path / "imp_a.py").write_text("A = 1\n")
    (tmp_path / "imp_b.py").write_text("B = 2\n")
    (tmp_path / "imp_c.py").write_text("C = 3\n")
    plugin = tmp_path / "imp_plug.py"
    plugin.write_text(
        "import importlib\n"
        + PLUGIN.format(name="imp_plug_lora")
        + "\n    def gain(self):\n"
        + "        a = importlib.import_module('imp_a')\n"
        + "        b = __import__('imp_b')\n"
        + "        c = importlib.import_module('imp_' + 'c')\n"
        + "        return a.A + b.B + c.C\n"
    )
    registry.load_plugin(plugin)
    assert not {"imp_a", "imp_b", "imp_c"} & set(sys.modules)  # read, not imported
    expected = hashlib.sha256()
    for name in ("imp_plug.py", "imp_a.py", "imp_b.py"):
        expected.update(f"{name}\0".encode() + (tmp_path / name).read_bytes())
    assert registry._PLUGINS_LOADED[plugin.resolve()] == expected.hexdigest()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("overhead", "overhead.csv is the cost table"),
        ("bench", "bench.csv is the output of harness bench"),
        ("commonsense_seeds", "commonsense_seeds.csv is the seeds table of task 'commonsense'"),
        ("mine_comparisons", "mine_comparisons.csv is the comparisons table of task 'mine'"),
    ],
)
def test_a_task_named_as_another_leaderboard_table_is_refused(name, why):
    """From a review: a plugin task named ``overhead`` registered, and its accuracy CSV was silently replaced by the
    cost table of the same name (as ``x_seeds`` would be task x's seeds table)."""
    from harness.registry import TASKS

    with pytest.raises(ValueError, match=rf"task name {name!r} is reserved \({re.escape(why)}\); name it otherwise"):
        TASKS.register(name)
    TASKS.register("seeds_of_mine")  # a name that only contains one is fine (nothing registered: no class given)


def test_a_plugin_method_named_in_harness_test_plugins_gets_the_tests_over_every_method(tmp_path):
    """The README's way to test a method from outside the repo: the suite's tests over the registered methods run on
    a plugin file named in HARNESS_TEST_PLUGINS; one whose B starts nonzero fails the step-zero test; a file that is
    not there stops pytest in one line."""
    repo = Path(__file__).resolve().parents[1]
    good = tmp_path / "env_lora.py"
    good.write_text(PLUGIN.format(name="env_lora"))
    bad = tmp_path / "env_bad_lora.py"
    bad.write_text(
        "import torch\nfrom harness import METHODS\nfrom methods.lora import LoraLinear\n\n"
        '@METHODS.register("env_bad_lora")\nclass BadLinear(LoraLinear):\n'
        "    def __init__(self, base, config, site, shared):\n        super().__init__(base, config, site, shared)\n"
        "        with torch.no_grad():\n            self.lora_B.fill_(0.5)  # not zero: step 0 is not the base\n"
    )

    def pytest_on(*files: Path | str) -> subprocess.CompletedProcess:
        env = {**os.environ, "HARNESS_TEST_PLUGINS": os.pathsep.join(map(str, files))}
        test = "tests/test_methods.py::test_step_zero_equals_base"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test, "-k", "env_"]
        return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)

    done = pytest_on(good, bad)
    assert "1 failed, 1 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED tests/test_methods.py::test_step_zero_equals_base[env_bad_lora]" in done.stdout
    missing = pytest_on(tmp_path / "no_such.py")
    assert missing.returncode != 0 and "HARNESS_TEST_PLUGINS: plugin file" in missing.stderr, missing.stderr[-2000:]


def test_two_plugin_files_of_one_name_are_two_plugins(tmp_path, plugin_sandbox):
    """From a review: both were imported as harness_plugin_twin, the second replacing the first: a's method was
    recorded with b's sha256."""
    registry = plugin_sandbox
    for folder in ("p1", "p2"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "twin.py").write_text(PLUGIN.format(name=f"twin_{folder}") + f"# {folder}\n")
        registry.load_plugin(tmp_path / folder / "twin.py")
    for folder in ("p1", "p2"):
        file = tmp_path / folder / "twin.py"
        [entry] = registry.plugin_files(METHODS.get(f"twin_{folder}"))
        assert entry == {"file": "twin.py", "sha256": registry._PLUGINS_LOADED[file.resolve()]}
        assert entry["sha256"] == hashlib.sha256(b"twin.py\0" + file.read_bytes()).hexdigest()


def test_an_abbreviated_plugin_flag_loads_the_plugin(tmp_path, capsys, plugin_sandbox):
    """From a review: argparse took --plug as --plugin, which was then ignored (only the full spelling was read
    before parsing): the plugin's method was unknown, with a message saying to pass a plugin."""
    plugin = tmp_path / "abbrev_lora.py"
    plugin.write_text(PLUGIN.format(name="abbrev_lora"))
    assert main(["--plug", str(plugin), "list", "methods"]) == 0
    assert "abbrev_lora" in capsys.readouterr().out


def test_a_plugin_path_with_a_tilde_is_expanded(tmp_path, monkeypatch, capsys, plugin_sandbox):
    """From a review: ``--plugin=~/my_lora.py`` (the shell expands no ``~`` after ``=``) was not found, where every
    other path flag expands ``~``."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "tilde_lora.py").write_text(PLUGIN.format(name="tilde_lora"))
    assert main(["--plugin=~/tilde_lora.py", "list", "methods"]) == 0
    assert "tilde_lora" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["run", "params", "bench", "leaderboard", "list", "rescore"])
def test_every_commands_help_names_plugin(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--plugin FILE.py" in capsys.readouterr().out


def test_an_installed_plugin_packages_version_is_recorded_and_another_one_is_not_taken_as_done(tmp_path, monkeypatch):
    """A method from an installed package (an entry point) was recorded by nothing: a finished run of an older
    version of it looked done. Records keep the distribution and its version; a run of another is other code."""
    import importlib
    import types

    from harness import TASKS, registry, runner

    (tmp_path / "ep_rec_lora.py").write_text(
        "from methods.lora import LoraLinear\n\n\nclass EpLoRA(LoraLinear):\n    pass\n"
    )
    dist = tmp_path / "ep_rec_lora-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-rec-lora\nVersion: 0.1\n")
    (dist / "top_level.txt").write_text("ep_rec_lora\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._top_level_distributions.cache_clear()  # read once a process: this test installs one
    module = importlib.import_module("ep_rec_lora")
    monkeypatch.setitem(registry.METHODS._entries, "ep_rec_lora", module.EpLoRA)  # as its entry point would
    assert registry.plugin_files(module.EpLoRA, TASKS.get("commonsense")) == [
        {"package": "ep-rec-lora", "version": "0.1"}
    ]
    spec = types.SimpleNamespace(task="commonsense", method="ep_rec_lora")
    finished = {"env": {"plugins": registry.plugin_files(module.EpLoRA)}}
    assert runner._other_plugin(spec, finished) is None  # the same version: done
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-rec-lora\nVersion: 0.2\n")
    assert runner._other_plugin(spec, finished) == (
        "the plugin package ep-rec-lora is version 0.2; the run was made with version 0.1"
    )
    # from a review: a method whose defining file was renamed (or moved into a package) looked done
    renamed = {"env": {"plugins": [{"file": "ep_rec_lora_v1.py", "sha256": "0" * 64}]}}
    assert runner._other_plugin(spec, renamed) == (
        "it was made with the plugin file ep_rec_lora_v1.py, defined now by the plugin package ep-rec-lora"
    )
    assert runner._other_plugin(spec, {"env": {}}) is None  # a record without plugins: nothing known


def test_the_checkouts_own_tests_are_not_taken_for_a_package_that_ships_a_tests_folder(monkeypatch):
    """Some distributions install a top-level ``tests`` package: a method defined in this checkout's tests was
    recorded as that distribution's, at its version."""
    from harness import registry

    monkeypatch.setattr(registry, "_top_level_distributions", lambda: {"tests": ["numpy"], "numpy": ["numpy"]})
    assert registry._distribution("tests.conftest") is None
    assert registry._distribution("numpy.linalg")["package"] == "numpy"  # a package's own module still is


def test_the_command_line_starts_without_torch_and_the_package_names_still_import():
    """``harness/__init__`` imported torch (through ``harness.adapter``) before ``main``'s try began: a Ctrl-C in
    the first second and a half printed a torch import traceback instead of the command's own exit 130, and every
    command paid the import. Its names now load on first use."""
    import subprocess
    import sys

    code = (
        "import sys, harness.cli; assert 'torch' not in sys.modules, 'torch imported by harness.cli'; "
        "from harness import attach, AdapterConfig, METHODS; import harness; "
        "assert harness.Site.__module__ == 'harness.adapter' and 'torch' in sys.modules; "
        "assert 'attach' in dir(harness); import harness as h2; "
        "assert h2.config.ReducerConfig and h2.fastpath.STACK_RAW is not None and h2.reducer.Reducer; "
        "assert not hasattr(h2, '__main__') and not hasattr(h2, 'x.y'); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError, match="module 'harness' has no attribute 'atach'"):
        import harness

        harness.atach  # noqa: B018


def test_a_method_whose_r_is_not_its_updates_rank_opts_out_of_the_rank_bound():
    """attach refuses an r above a target's smaller side (no rank to add); a plugin whose r counts something else
    (a VeRA-style shared basis) sets ``rank_bounded = False`` and attaches."""
    from harness import attach
    from tests.conftest import DeltaOnlyLinear, tiny_llama

    with pytest.raises(ValueError, match=r"rank r=40 is above .*'s smaller side \(16: 32 in, 16 out\)"):
        attach(tiny_llama(), DeltaOnlyLinear, targets="q_proj,k_proj", r=40)

    class Wide(DeltaOnlyLinear):
        rank_bounded = False

    adapter = attach(tiny_llama(), Wide, targets="q_proj,k_proj", r=40)
    assert adapter.layers["model.layers.0.self_attn.k_proj"].lora_A.shape == (40, 32)


def test_a_single_value_flag_given_twice_with_two_values_is_refused(capsys):
    """From a review: `--methods lora --methods effilora ... --rank 8 --rank 4` ran effilora alone at r=4 (argparse
    keeps the last value), dropping lora without a word. The same value twice is one; repeatable flags repeat."""
    from harness.cli import build_parser

    args = build_parser().parse_args(
        ["params", "--methods", "lora", "--methods", "lora", "--rank", "8", "--rank", "08", "--option", "dropout=0",
         "--option", "alpha=8"]
    )  # fmt: skip
    assert (args.methods, args.rank, args.option) == ("lora", 8, ["dropout=0", "alpha=8"])
    assert sorted(vars(args)) == sorted(vars(build_parser().parse_args(["params"])))  # no bookkeeping left in args
    assert build_parser().parse_args(["bench", "--also", "dropout=0", "--also", "dropout=0.1"]).also == [
        "dropout=0",
        "dropout=0.1",
    ]
    argv = ["params", "--methods", "lora", "--methods", "effilora", "--rank", "8", "--rank", "4"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "harness: error: --methods is given twice ('lora', then 'effilora'); give it once (a list is one flag: "
        "--methods lora,effilora)\n"
    )


def test_a_plugin_that_raises_after_registering_leaves_no_registration(tmp_path, plugin_sandbox):
    """From a review: a plugin that registered a method and then raised left the registration behind; loading the
    fixed file said "method 'x' is already registered (by <its own failed copy>)"."""
    registry = plugin_sandbox
    plugin = tmp_path / "raising_lora.py"
    plugin.write_text(PLUGIN.format(name="raising_lora") + "\nraise RuntimeError('broken after registering')\n")
    for _ in range(2):  # the second time too: the same error, not "already registered"
        with pytest.raises(ValueError, match=r"failed to import \(RuntimeError: broken after registering\)"):
            registry.load_plugin(plugin)
        assert "raising_lora" not in METHODS
    plugin.write_text(PLUGIN.format(name="raising_lora") + "# fixed\n")
    registry.load_plugin(plugin)
    assert METHODS.get("raising_lora").__module__.startswith("harness_plugin_raising_lora")


@pytest.mark.parametrize("code", [0, 3])
def test_a_plugin_that_exits_on_import_is_a_plugin_that_failed(tmp_path, plugin_sandbox, code):
    """From a fuzz review: a plugin whose module calls sys.exit (a stray parse_args) ended the command there:
    `harness --plugin p.py list methods` exited 0 and printed nothing, a silent success."""
    registry = plugin_sandbox
    plugin = tmp_path / "exiting_lora.py"
    plugin.write_text(PLUGIN.format(name="exiting_lora") + f"\nimport sys\nsys.exit({code})\n")
    with pytest.raises(ValueError, match=rf"failed to import \(SystemExit: {code}\)"):
        registry.load_plugin(plugin)
    assert "exiting_lora" not in METHODS


def test_a_plugin_that_raises_after_its_helper_registered_gets_the_helper_run_again_when_fixed(
    tmp_path, plugin_sandbox
):
    """From a review: the helper module a failed plugin imported from its folder (which registered a method) stayed
    imported while its registration was undone, so the fixed plugin's import of it did not run it again: the
    method was gone."""
    registry = plugin_sandbox
    (tmp_path / "mends_helper_methods.py").write_text(PLUGIN.format(name="helper_lora"))
    plugin = tmp_path / "uses_helper.py"
    plugin.write_text("import mends_helper_methods\nraise RuntimeError('broken after its helper')\n")
    with pytest.raises(ValueError, match=r"failed to import \(RuntimeError: broken after its helper\)"):
        registry.load_plugin(plugin)
    assert "helper_lora" not in METHODS
    plugin.write_text("import mends_helper_methods  # fixed\n")
    registry.load_plugin(plugin)
    assert METHODS.get("helper_lora").__module__ == "mends_helper_methods"


@pytest.mark.parametrize(("value", "on"), [("0", False), ("false", False), ("No", False), ("", False), ("1", True)])
def test_harness_debug_0_false_or_no_is_off(monkeypatch, capsys, value, on):
    """From a review: HARNESS_DEBUG=0 turned the tracebacks on (any value did)."""
    monkeypatch.setenv("HARNESS_DEBUG", value)
    argv = ["params", "--methods", "lroa"]
    if on:
        with pytest.raises(ValueError, match="unknown method 'lroa'"):
            main(argv)
    else:
        assert main(argv) == 2
        assert capsys.readouterr().err.startswith("harness: error: unknown method 'lroa'")


def test_a_drop_ratio_that_keeps_every_layer_warns_that_the_reducer_is_off(tmp_path, monkeypatch, capsys):
    """From a review: K = round(L * (1 - drop_ratio)) takes a half to the even number (kept: the committed records
    ran it), so on 2 layers the default 0.25 keeps K = 2 = L and the Reducer is off, without a word."""
    from harness import config
    from harness.config import ReducerConfig

    monkeypatch.setattr(config, "_WARNED_K", set())
    assert [ReducerConfig().resolve_k(n) for n in (30, 10, 7, 3)] == [22, 8, 5, 2]  # 22.5 -> 22, 7.5 -> 8
    assert [ReducerConfig(drop_ratio=0).resolve_k(2), ReducerConfig(k=2).resolve_k(2)] == [2, 2]  # asked for
    assert capsys.readouterr().err == ""
    tiny_llama(layers=2).config.to_json_file(tmp_path / "two.json")
    for _ in range(2):  # said once a process: a run attaches its adapter several times
        assert main(["params", "--model", str(tmp_path / "two.json"), "--methods", "effilora", "--json"]) == 0
    assert capsys.readouterr().err == (
        "warning: drop_ratio=0.25 keeps K = round(2 x 0.75) = 2 of the 2 adapted layers, all of them: the Reducer is "
        "off (every layer trains every step); give k=1 or a larger drop_ratio to turn it on\n"
    )


@pytest.mark.parametrize("first", ["imported", "importer"])
def test_a_plugin_that_imports_another_given_to_plugin_loads_it_once(tmp_path, monkeypatch, plugin_sandbox, first):
    """From a review: with both files given to --plugin, the imported one ran twice under two module names and
    its method was refused as registered twice; in either order it is now one module."""
    registry = plugin_sandbox
    stem = f"sib_{first}"
    (tmp_path / f"{stem}.py").write_text(PLUGIN.format(name=f"{stem}_lora"))
    importer = (
        f"from {stem} import HalfLoraLinear, HalfLoraConfig\nfrom harness import METHODS\n\n"
        f"@METHODS.register('{stem}_child')\nclass Child(HalfLoraLinear):\n    config_cls = HalfLoraConfig\n"
    )
    (tmp_path / f"{stem}_child.py").write_text(importer)
    files = [tmp_path / f"{stem}.py", tmp_path / f"{stem}_child.py"]
    for file in files if first == "imported" else files[::-1]:
        registry.load_plugin(file)
    assert issubclass(METHODS.get(f"{stem}_child"), METHODS.get(f"{stem}_lora"))  # the same class, not a copy
    assert all(file.resolve() in registry._PLUGINS_LOADED for file in files)


def test_a_built_in_file_given_to_plugin_is_refused_and_a_sibling_owns_itself_in_either_order(tmp_path, plugin_sandbox):
    """From a review of the shared-module change: ``--plugin methods/lora.py`` was taken as loaded (the built-in
    recorded as a plugin), and which file a sibling's method was recorded under followed the flags' order."""
    from pathlib import Path

    registry = plugin_sandbox
    builtin = Path(registry.__file__).resolve().parents[1] / "methods" / "lora.py"
    with pytest.raises(ValueError, match=r"already registered"):
        registry.load_plugin(builtin)
    assert registry.plugin_files(METHODS.get("lora")) == []
    (tmp_path / "own_sib.py").write_text(PLUGIN.format(name="own_sib_lora"))
    child = "from own_sib import HalfLoraLinear  # noqa: F401\n"
    (tmp_path / "own_child.py").write_text(child + PLUGIN.format(name="own_child_lora"))
    registry.load_plugin(tmp_path / "own_child.py")
    registry.load_plugin(tmp_path / "own_sib.py")
    [entry] = registry.plugin_files(METHODS.get("own_sib_lora"))
    assert entry["file"] == "own_sib.py"


def test_a_plugin_naming_a_sibling_plugin_in_a_function_leaves_it_its_own(tmp_path, plugin_sandbox):
    """From a re-review: once import statements inside functions were read, a --plugin file that another plugin
    only names in a function was recorded as that plugin's, following the flags' order (a then b: b's method under
    a's file, so b's runs turned other code with the order, and with every edit of a)."""
    registry = plugin_sandbox
    (tmp_path / "lz_b.py").write_text(PLUGIN.format(name="lz_b_lora"))
    (tmp_path / "lz_a.py").write_text(PLUGIN.format(name="lz_a_lora") + "\n    def extra(self):\n        import lz_b\n")
    registry.load_plugin(tmp_path / "lz_a.py")
    registry.load_plugin(tmp_path / "lz_b.py")
    [entry] = registry.plugin_files(METHODS.get("lz_b_lora"))
    assert entry == {"file": "lz_b.py", "sha256": registry._PLUGINS_LOADED[(tmp_path / "lz_b.py").resolve()]}


def test_a_helper_one_plugin_names_in_a_function_is_the_plugins_that_loads_it(tmp_path, plugin_sandbox):
    """From a re-review: a helper module that plugin a only names in a function (never loaded by it) was recorded as
    a's when a loaded first, though plugin b loaded it and registered its class from it: b's runs named a's file,
    missed b's edits and turned other code with a's."""
    registry = plugin_sandbox
    helper = PLUGIN.format(name="unused").replace('@METHODS.register("unused")\n', "")
    (tmp_path / "rv_shared.py").write_text(helper)
    (tmp_path / "rv_b.py").write_text(
        "from harness import METHODS\nfrom rv_shared import HalfLoraLinear\nMETHODS.register('rv_b_lora')(HalfLoraLinear)\n"
    )
    (tmp_path / "rv_a.py").write_text(
        PLUGIN.format(name="rv_a_lora") + "\n    def extra(self):\n        import rv_shared\n"
    )
    registry.load_plugin(tmp_path / "rv_a.py")
    registry.load_plugin(tmp_path / "rv_b.py")
    [entry] = registry.plugin_files(METHODS.get("rv_b_lora"))
    assert entry == {"file": "rv_b.py", "sha256": registry._PLUGINS_LOADED[(tmp_path / "rv_b.py").resolve()]}


def test_a_plugin_naming_a_module_of_a_namespace_folder_in_a_function_loads(tmp_path, plugin_sandbox):
    """From a re-review: a module under a folder without ``__init__.py`` (a namespace package), named in a function
    and not imported yet, made the lookup raise ``KeyError`` inside importlib: the plugin did not load."""
    registry = plugin_sandbox
    (tmp_path / "nshelp" / "data").mkdir(parents=True)
    (tmp_path / "nshelp" / "data" / "consts.py").write_text("K = 1\n")
    plugin = tmp_path / "ns_plug.py"
    plugin.write_text(
        PLUGIN.format(name="ns_plug_lora") + "\n    def extra(self):\n        from nshelp.data.consts import K\n"
    )
    registry.load_plugin(plugin)
    assert registry.plugin_files(METHODS.get("ns_plug_lora"))[0]["file"] == "ns_plug.py"


def test_a_runs_plugins_of_one_file_name_are_compared_each(tmp_path):
    """From a re-review: a task's plugin.py and a method's plugin.py (two folders) folded into one entry, the second
    replacing the first: the run compared with itself was other code, and an edit of the first was not seen."""
    from harness import runner_identity

    def plugins(first: str, second: str) -> list[dict[str, str]]:
        return [{"file": "plugin.py", "sha256": first * 64}, {"file": "plugin.py", "sha256": second * 64}]

    versions = runner_identity._plugin_versions
    assert versions(plugins("a", "b")) == versions(plugins("b", "a"))  # the same two files: the same code
    assert versions(plugins("a", "b")) != versions(plugins("c", "b"))  # the first edited: seen


def _fake_entry_points(monkeypatch, registry, group: str, module: str) -> None:
    """``module`` installed as the one plugin of entry-point group ``group`` (none in the others)."""
    from importlib.metadata import EntryPoint

    plugin = EntryPoint(name=module, value=module, group=group)
    monkeypatch.setattr(registry, "entry_points", lambda group=None: [plugin] if group == plugin.group else [])


def test_an_entry_point_plugin_that_raises_after_registering_leaves_no_registration(
    tmp_path, monkeypatch, capfd, plugin_sandbox
):
    """From a review: a package of the `harness.methods` entry point that registered a method and then raised was
    reported "could not load" yet stayed registered (and ran), and `harness list methods` failed with a KeyError
    on its module, gone from sys.modules."""
    registry = plugin_sandbox
    (tmp_path / "ep_raising.py").write_text(PLUGIN.format(name="ep_raising") + "\nraise RuntimeError('no extra')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_entry_points(monkeypatch, registry, "harness.methods", "ep_raising")
    monkeypatch.setattr(METHODS, "_loaded", False)  # loaded again, with the entry point above
    listed = harness_here(capfd, "list", "methods")
    assert listed.returncode == 0, listed.stderr
    assert "could not load method plugin 'ep_raising' (ep_raising): no extra" in listed.stderr
    assert "ep_raising" not in METHODS and "lora" in METHODS
    assert [line.split()[0] for line in listed.stdout.splitlines()] == METHODS.names()


def test_an_entry_point_plugin_that_exits_on_import_is_warned_about_and_the_command_goes_on(
    tmp_path, monkeypatch, capfd, plugin_sandbox
):
    """From a fuzz review: an entry-point plugin calling sys.exit(0) on import ended every command as a silent
    success; it is a plugin that could not load, as one that raises."""
    registry = plugin_sandbox
    (tmp_path / "ep_exiting.py").write_text(PLUGIN.format(name="ep_exiting") + "\nimport sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_entry_points(monkeypatch, registry, "harness.methods", "ep_exiting")
    monkeypatch.setattr(METHODS, "_loaded", False)
    listed = harness_here(capfd, "list", "methods")
    assert (
        listed.returncode == 0
        and "could not load method plugin 'ep_exiting' (ep_exiting): SystemExit: 0" in listed.stderr
    )
    assert "ep_exiting" not in METHODS and "lora" in listed.stdout


def test_an_entry_point_plugin_that_fails_keeps_the_built_ins_it_imported(tmp_path, monkeypatch, plugin_sandbox):
    """A task plugin that imports a built-in method before the methods are loaded, then raises: undoing its
    registrations keeps the built-ins (imported once, they would not register again)."""
    from harness import TASKS

    registry = plugin_sandbox
    source = "from harness import METHODS\nfrom methods.lora import LoraLinear\n"
    source += "METHODS.register('lora')(LoraLinear)  # as importing `methods` the first time does\nraise OSError('x')\n"
    (tmp_path / "ep_task_raising.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_entry_points(monkeypatch, registry, "harness.tasks", "ep_task_raising")
    monkeypatch.setattr(TASKS, "_loaded", False)
    monkeypatch.setattr(METHODS, "_entries", {})  # the methods not loaded yet
    monkeypatch.setattr(METHODS, "_loaded", False)
    TASKS.names()
    assert METHODS._entries == {"lora": sys.modules["methods.lora"].LoraLinear}


def test_list_names_a_method_whose_module_is_gone(monkeypatch, capfd, plugin_sandbox):
    """From a review: `harness list methods` looked up every method's module in sys.modules and failed with a
    KeyError on one no longer there."""

    class Orphan(sys.modules["methods.lora"].LoraLinear):
        pass

    Orphan.__module__ = "a_module_no_longer_imported"
    monkeypatch.setitem(METHODS._entries, "orphan", Orphan)
    listed = harness_here(capfd, "list", "methods")
    assert listed.returncode == 0, listed.stderr
    assert "orphan" in [line.split()[0] for line in listed.stdout.splitlines()]


def _fake_entry_point_groups(monkeypatch, registry, groups: dict[str, list[str]]) -> None:
    """The modules of ``groups`` installed as the entry points of each group, in that order."""
    from importlib.metadata import EntryPoint

    plugins = {group: [EntryPoint(name=m, value=m, group=group) for m in modules] for group, modules in groups.items()}
    monkeypatch.setattr(registry, "entry_points", lambda group=None: plugins.get(group, []))


def test_a_failed_entry_point_plugin_keeps_another_plugin_it_imported(tmp_path, monkeypatch, capfd, plugin_sandbox):
    """From a review: a plugin that imported another plugin's module (which registered) and then raised took the
    other's method with it, for good: its module stayed imported, so its own entry point did not register again."""
    registry = plugin_sandbox
    (tmp_path / "ep_base.py").write_text(PLUGIN.format(name="ep_base"))
    (tmp_path / "ep_plus.py").write_text(
        "from ep_base import HalfLoraLinear\n" + PLUGIN.format(name="ep_plus") + "import a_missing_dependency\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_entry_point_groups(monkeypatch, registry, {"harness.methods": ["ep_plus", "ep_base"]})  # in this order
    monkeypatch.setattr(METHODS, "_loaded", False)
    capfd.readouterr()
    assert "ep_base" in METHODS.names() and "ep_plus" not in METHODS and "lora" in METHODS
    assert "could not load method plugin 'ep_plus' (ep_plus): No module named 'a_missing_dependency'" in (
        capfd.readouterr().err
    )


@pytest.mark.parametrize("package", [False, True], ids=["other_plugin", "same_package"])
def test_a_failed_task_plugin_keeps_the_method_plugins_its_lookup_loaded(
    tmp_path, monkeypatch, package, plugin_sandbox
):
    """From a review: a task plugin that asked METHODS at import (which loaded the methods' entry points) and then
    raised took those plugins' methods with it, for good, the methods counted as loaded. A method plugin in the failed
    one's own package is imported afresh at the next lookup (its modules go with the failed plugin's)."""
    from harness import TASKS

    registry = plugin_sandbox
    where = tmp_path / "ep_pkg" if package else tmp_path
    where.mkdir(exist_ok=True)
    (where / "__init__.py").write_text("")
    (where / "ep_method.py").write_text(PLUGIN.format(name="ep_method"))
    (where / "ep_task.py").write_text(
        "from harness import METHODS\nMETHODS.get('lora')  # the first lookup\nraise ImportError('no extra')\n"
    )
    prefix = "ep_pkg." if package else ""
    monkeypatch.syspath_prepend(str(tmp_path))
    groups = {"harness.methods": [f"{prefix}ep_method"], "harness.tasks": [f"{prefix}ep_task"]}
    _fake_entry_point_groups(monkeypatch, registry, groups)
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))
    monkeypatch.setattr(TASKS, "_loaded", False)
    monkeypatch.setattr(METHODS, "_loaded", False)  # the built-ins imported already: their entries kept
    TASKS.names()  # as build_specs does first
    assert f"{prefix}ep_task" not in sys.modules
    assert "ep_method" in METHODS.names() and "lora" in METHODS
    assert sys.modules[METHODS.get("ep_method").__module__].__file__ == str(where / "ep_method.py")


def test_a_failed_entry_point_package_leaves_nothing_its_own_modules_registered(tmp_path, monkeypatch, plugin_sandbox):
    """From a review (undo only what the failed plugin's own modules registered): a package plugin whose submodule
    registered, then whose ``__init__`` raised, keeps nothing, though Python takes out only the modules that raised
    (its submodule stays imported unless the harness takes it out too)."""
    registry = plugin_sandbox
    (tmp_path / "ep_half").mkdir()
    (tmp_path / "ep_half" / "__init__.py").write_text("from ep_half import done\nraise OSError('no extra')\n")
    (tmp_path / "ep_half" / "done.py").write_text(PLUGIN.format(name="ep_half_done"))
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_entry_point_groups(monkeypatch, registry, {"harness.methods": ["ep_half"]})
    monkeypatch.setattr(METHODS, "_loaded", False)
    assert "ep_half_done" not in METHODS.names() and "lora" in METHODS
    assert "ep_half.done" not in sys.modules  # imported afresh (registering) where the fixed package is loaded


def test_offline_a_plugin_task_that_builds_its_own_model_is_not_asked_for_its_hub_weights(tmp_path, monkeypatch):
    """From a review: with HF_HUB_OFFLINE set, a plugin task that builds its own model (its own ``build_meta`` and
    ``load``: the vectors task's ``mlp``, a plugin's ``tiny``) was refused before any run, its name taken for a hub id
    whose weights the hub's cache lacks ("connect to the internet"); it reads no hub. The built-in tasks still do."""
    from huggingface_hub import constants

    from harness.registry import TASKS
    from harness.runner import build_specs, preflight
    from tests.test_task_contract import VectorTask

    TASKS.names()  # the built-ins first: the copy restored afterwards holds them
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))
    TASKS.register("vectors")(VectorTask)
    monkeypatch.chdir(tmp_path)  # no folder "mlp" here: the name is no path
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preflight(build_specs("vectors", ["base", "lora"], [0], "smoke"))
    assert all(TASKS.get(task).reads_hub("org/model") for task in ("commonsense", "multimodal", "diffusion"))
    hub_read = type("HubRead", (VectorTask,), {"reads_hub": classmethod(lambda cls, model: True)})
    TASKS.register("hub_read")(hub_read)  # a task that says its load reads the hub is checked as the built-ins are
    with pytest.raises(ValueError, match=r"model 'mlp': HF_HUB_OFFLINE set, and the hub's cache .* holds no weights"):
        preflight(build_specs("hub_read", ["lora"], [0], "smoke"))


def test_a_task_whose_default_preset_or_preset_protocol_it_lacks_is_refused_at_registration():
    """From a review: a task without ``default_preset`` (Task's "embedded") or whose preset's protocol is not in its
    ``protocols`` registered, then runs failed on flags never given: "unknown preset 'embedded'; available: smoke"
    without --preset, "unknown protocol 'choice' for task 'x'; choose one of: " with none listed."""
    from harness.task import Task
    from tests.test_task_contract import VectorTask

    registry: Registry = Registry("task", "tasks", "harness.none", "harness.task:Task")
    hooks = {name: vars(VectorTask)[name] for name in ("load", "recipe", "splits", "evaluate")}
    smoke = {"smoke": VectorTask.presets["smoke"]}  # protocol "mse"
    with pytest.raises(
        ValueError,
        match=r"^task 'x': its default_preset 'embedded' \(Task's: the task sets none\) is not among its presets "
        r"\('smoke'\); set default_preset to one of them$",
    ):
        registry.register("x")(type("X", (Task,), {"presets": smoke, "protocols": ("mse",), **hooks}))
    with pytest.raises(
        ValueError,
        match=r"^task 'x': its preset 'smoke' has protocol 'mse', not in protocols=\(\); add it to protocols$",
    ):
        registry.register("x")(type("X", (Task,), {"presets": smoke, "default_preset": "smoke", **hooks}))
    registry.register("x")(type("X", (Task,), {"presets": smoke, "default_preset": "smoke", "protocols": ("mse",),
                                               **hooks}))  # fmt: skip
    assert "x" in registry._entries


def test_a_plugin_inheriting_a_built_in_load_reads_the_hub_and_protocols_as_a_string_are_refused():
    """From a re-review: a subclass of a built-in task that wraps build_meta but inherits its load (which reads the
    hub) was taken as building its own model, so offline it was not refused before its runs; and protocols =
    ("mse") (a string) was refused as not holding 'mse' among ('m', 's', 'e')."""
    from harness import TASKS
    from harness.registry import _check_presets

    base = TASKS.get("commonsense")

    class Wrapped(base):
        @classmethod
        def build_meta(cls, model, trust_remote_code=False):
            return super().build_meta(model, trust_remote_code)

    assert Wrapped.reads_hub("org/model")

    class Letters:
        presets = {"smoke": object()}
        default_preset = "smoke"
        protocols = "mse"

    with pytest.raises(ValueError, match=r"protocols is the string 'mse'; give a tuple, e\.g\. \('mse',\)"):
        _check_presets("letters", Letters)


@pytest.mark.parametrize("option", ["k", "n_suppressed"])
def test_a_reducer_option_given_as_none_turns_no_reducer_on(option):
    """From a review: ``--option k=none`` (unset) switched a Reducer (drop_ratio 0.25) on for a method without one,
    under a run id of its own; only ``reducer_seed`` turned none on. On a method with a Reducer it is still taken."""
    from harness.runner import build_specs

    plain, unset = (
        build_specs("commonsense", ["lora"], [0], "embedded", method_options=o)[0] for o in ({}, {option: "none"})
    )
    assert unset.run_id == plain.run_id and unset.method_options["reducer"] is None
    [effilora] = build_specs("commonsense", ["effilora"], [0], "embedded", method_options={option: "none"})
    assert effilora.method_options["reducer"][option] is None
    [given] = build_specs(
        "commonsense", ["lora"], [0], "embedded", method_options={option: "none", "drop_ratio": "0.5"}
    )
    assert given.method_options["reducer"]["drop_ratio"] == 0.5  # beside a value that sets one: on, as before


def test_a_name_with_a_capital_letter_is_refused_though_it_is_an_identifier():
    """Names are lower-case identifiers (``--methods`` and run ids are typed lower-case). The tests refused only
    'My-Lora', which is no identifier at all, so a mutation test found the lower-case half unpinned: dropping
    ``name != name.lower()`` passed every test and registered 'MyLora'."""
    methods: Registry = Registry("method", "methods", "harness.none", "harness.adapter:AdapterLinear")
    for name in ("MyLora", "myLora", "LORA2"):
        with pytest.raises(ValueError, match=r"must be a lower-case Python identifier \(e\.g\. 'my_lora'\)"):
            methods.register(name)
    methods.register("my_lora2")  # a lower-case identifier with a digit is fine


def test_registering_the_same_class_again_under_its_name_is_a_no_op():
    """``register`` refuses a name taken by *another* class, not the one already there: registering it again (a
    notebook cell run twice, a decorator applied to an already registered class) is a no-op. A mutation test found
    only the refusal pinned: refusing every taken name (``existing is not None``) passed every test."""
    from tests.conftest import DeltaOnlyLinear

    methods: Registry = Registry("method", "methods", "harness.none", "harness.adapter:AdapterLinear")

    class Mine(DeltaOnlyLinear):
        pass

    assert methods.register("mine")(Mine) is Mine
    assert methods.register("mine")(Mine) is Mine and Mine.name == "mine"
    with pytest.raises(ValueError, match="already registered"):
        methods.register("mine")(type("Other", (DeltaOnlyLinear,), {}))


def test_a_class_that_is_not_a_subclass_of_the_base_is_refused_as_such():
    """A registered class subclasses ``AdapterLinear`` (a method) or ``Task`` (a task). The tests refused only a lambda
    (no class at all), so a mutation test found the subclass half unpinned: ``isinstance(obj, type)`` alone passed
    every test and let a plain class that looks like a task register (it fails at the first run instead)."""
    tasks: Registry = Registry("task", "tasks", "harness.none", "harness.task:Task")
    hooks = {name: lambda *a, **k: None for name in ("load", "recipe", "splits", "evaluate")}
    look_alike = type(
        "LookAlike", (), {"presets": {"p": object()}, "default_preset": "p", "protocols": ("mse",), **hooks}
    )
    with pytest.raises(ValueError, match=r"task 'look': .*LookAlike is not a subclass of Task; register one"):
        tasks.register("look")(look_alike)
    assert "look" not in tasks._entries
    methods: Registry = Registry("method", "methods", "harness.none", "harness.adapter:AdapterLinear")
    with pytest.raises(ValueError, match=r"method 'plain': .*Plain is not a subclass of AdapterLinear"):
        methods.register("plain")(type("Plain", (), {"delta": lambda self, x: x}))


def test_a_module_whose_top_level_package_several_distributions_share_names_no_package(monkeypatch):
    """``plugin_files`` names the installed distribution of a plugin class's module only where its top-level package
    belongs to exactly one (a namespace package such as ``google`` is shared: naming one would record the wrong
    package and version). A mutation test found it unpinned: taking the first of several (``if not names``) passed
    every test."""
    from harness import registry

    monkeypatch.setattr(
        registry, "_top_level_distributions", lambda: {"sharedns": ["torch", "numpy"], "ownns": ["numpy"]}
    )
    assert registry._distribution("sharedns.plugin") is None
    assert registry._distribution("ownns.plugin")["package"] == "numpy"


def test_load_plugin_in_a_fresh_process_refuses_a_built_in_name_not_the_built_in(tmp_path):
    """``load_plugin`` loads the built-ins first, so a plugin reusing one of their names is the one refused, even in a
    fresh Python process where nothing has asked the registries yet (the CLI lists them before it loads a plugin,
    which hides the order). A mutation test found it unpinned: skipping that load passed every test, and the plugin
    took 'lora' while the built-in LoRA then failed to register. Runs a subprocess (~3 s: it imports torch)."""
    import subprocess
    import sys

    plugin = tmp_path / "mine.py"
    plugin.write_text(
        "from harness import METHODS, AdapterLinear\n\n\n@METHODS.register('lora')\n"
        "class Mine(AdapterLinear):\n    def delta(self, x):\n        return x\n"
    )
    code = (
        "import harness, sys\ntry:\n    harness.load_plugin(sys.argv[1])\nexcept ValueError as e:\n    print(e)\n"
        "print(harness.METHODS.get('lora').__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(plugin)], capture_output=True, text=True, timeout=60)
    assert "'lora' is already registered (by methods.lora.LoraLinear)" in out.stdout, out.stdout + out.stderr
    assert out.stdout.strip().endswith("methods.lora"), out.stdout + out.stderr
