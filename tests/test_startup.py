"""Start-up of the ``gpu-curate`` command line: what importing it costs, and that the
subcommands it loads on demand behave as if they were registered up front."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gpu_curate.cli import main


def printed(code: str) -> list[str]:
    """The words ``code`` prints in a fresh interpreter (this one may have imported
    anything already)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_importing_the_cli_does_not_import_pandas():
    assert printed("import sys, gpu_curate.cli; print('pandas' in sys.modules)") == ["False"]


def test_help_lists_every_command_in_order():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    lines = result.output.split("Commands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in lines if line.strip()]
    expected = ["balance", "curate", "demo", "match", "metadata", "plan", "report"]
    assert names == expected
    assert "Work with MetaCLIP metadata" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["metadata", "build", "--help"], "--min-pmi"),
        (["plan", "--help"], "Usage:"),
        (["report", "--help"], "Usage:"),
    ],
)
def test_lazy_commands_run(args, needle):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert needle in result.output


@pytest.mark.skipif(
    tuple(int(x) for x in importlib.metadata.version("click").split(".")[:2]) < (8, 4),
    reason="click < 8.4 suggests no command",
)
def test_mistyped_command_suggests_a_lazy_one():
    result = CliRunner().invoke(main, ["plann"])
    assert result.exit_code == 2
    assert "Did you mean 'plan'?" in result.output


def test_ctrl_c_in_a_finalizer_prints_nothing(capsys, monkeypatch):
    # (Ctrl-C as a run ended could land in Dask's Future.__del__: Python printed
    # "Exception ignored in ..." and a piece of traceback after the run's last line.)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    assert CliRunner().invoke(main, ["plan", "--help"]).exit_code == 0

    class Finalized:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    for exc in (KeyboardInterrupt(), ValueError("a finalizer's own bug")):
        Finalized(exc)  # (collected at once, its __del__ raising)
    err = capsys.readouterr().err
    assert "KeyboardInterrupt" not in err
    assert "ValueError: a finalizer's own bug" in err


_INTERRUPTED_IMPORT = """
import sys

class CtrlC:  # a Ctrl-C arriving while {module} is being imported
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt

sys.meta_path.insert(0, CtrlC())
sys.argv = ["gpu-curate", "--version"]
from gpu_curate.__main__ import run
run()
"""


@pytest.mark.parametrize("module", ["numpy", "pyarrow", "click"])
def test_ctrl_c_during_the_start_up_imports_is_one_line(module):
    code = _INTERRUPTED_IMPORT.format(module=module)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "gpu-curate: interrupted\n"
    assert done.stdout == ""


def test_the_launcher_runs_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "gpu_curate", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gpu-curate, version ")


def test_the_package_names_load_on_first_use():
    code = (
        "import sys, gpu_curate; heavy = {'numpy', 'pyarrow', 'dask'} & set(sys.modules); "
        "from gpu_curate import Metadata, match_texts, __version__; "
        "print(sorted(heavy), 'Metadata' in dir(gpu_curate), match_texts(['a dog'], ['dog']))"
    )
    assert printed(code) == ["[]", "True", "[[0]]"]


def test_the_package_gives_its_submodules_as_attributes():
    # (`import gpu_curate; gpu_curate.errors.CurateError` worked while the package imported
    # its submodules itself.)
    code = (
        "import gpu_curate; print(gpu_curate.errors.CurateError.__name__, "
        "gpu_curate.metadata.Metadata.__name__, hasattr(gpu_curate, 'nothing_here'))"
    )
    assert printed(code) == ["CurateError", "Metadata", "False"]
