"""The install commands keep torch at the CPU build: README set-up, `.ci/run` and tox.ini agree with constraints.txt."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pin() -> str:
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1, "constraints.txt must pin torch exactly once"
    return pins[0]


def test_readme_setup_installs_the_pinned_torch_then_the_harness_under_the_constraints():
    setup = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("\n", 1)[0]
    assert f"pip install {_pin()} &&" in setup
    assert 'pip install -c constraints.txt -e ".[test]"' in setup


def test_ci_resolving_installs_use_the_constraints():
    """Every install in `.ci/run` that resolves dependencies passes the constraints or installs the pinned
    torch itself; `--no-deps` installs resolve nothing, and the HPS v2 venv ($hv) pins its own torch build."""
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if re.search(r"\bpip\"? install\b", line)]
    assert lines
    for line in lines:
        if "--no-deps" in line or "$hv" in line:
            continue
        assert "-c constraints.txt" in line or line.rstrip().endswith(f"install -q {_pin()}"), line


def test_tox_installs_under_the_constraints():
    """torch comes with the package install, under the constraints; a `pip install torch` in commands_pre ran
    after it (too late to pin anything), and PIP_* passes an index of CPU wheels through."""
    tox = (ROOT / "tox.ini").read_text()
    assert re.search(r"install_command = .*-c \{toxinidir\}/constraints\.txt", tox)
    assert not re.search(r"pip install[^\n]* torch(==|\s|$)", tox)
    assert re.search(r"passenv = .*PIP_\*", tox)


def test_bare_pytest_collects_a_module_that_imports_tests_conftest():
    """From a review: tox runs `pytest`, which (unlike `python3 -m pytest`) puts no repository root on sys.path, so
    the modules that import `tests.conftest` failed to collect (No module named 'tests'): pyproject.toml's
    `pythonpath` puts it there. Run as the `pytest` script is: the current folder taken off sys.path first."""
    import subprocess
    import sys

    module = "tests/test_commonsense_scoring.py"
    assert "from tests.conftest import" in (ROOT / module).read_text()  # still a module this is about
    script = "import sys; sys.path.pop(0); import pytest; sys.exit(pytest.main(sys.argv[1:]))"
    collect = [sys.executable, "-c", script, "--collect-only", "-q", "-p", "no:cacheprovider", module]
    done = subprocess.run(collect, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and " collected" in done.stdout.splitlines()[-1], done.stdout[-2000:] + done.stderr


def test_pyproject_has_no_setuptools_deprecation():
    """From a review: `license = { text = "Apache-2.0" }` made setuptools warn that the TOML table is deprecated and
    that such builds stop being supported after 2027-02-18; the SPDX string needs setuptools>=77 to build."""
    import warnings

    import pytest

    pytest.importorskip("setuptools", minversion="77")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    deprecated = [str(w.message).splitlines()[0] for w in caught if "Deprecation" in w.category.__name__]
    assert not deprecated
    assert dist.metadata.license_expression == "Apache-2.0"
    requires = re.search(r'^requires = \["setuptools>=(\d+)"\]', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert requires and int(requires[1]) >= 77, "an SPDX `license` string needs setuptools>=77 to build"


def test_ci_bare_install_job_reads_the_tests_data():
    """From a review: the bare-install job in `.ci/run` always read `../shared/data/commonsense`, while the tests
    take HARNESS_TEST_DATA_DIR (tests/conftest.py): with the data elsewhere, the tests passed and that job failed."""
    data_dirs = re.findall(r"--data-dir (\S+)", (ROOT / ".ci" / "run").read_text())
    assert data_dirs == ['"${HARNESS_TEST_DATA_DIR:-../shared/data/commonsense}"']
