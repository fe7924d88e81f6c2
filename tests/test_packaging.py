"""Packaging: a missing extra is one line naming it (exit 2), and Pillow stays on the major version the views'
exactness was verified with."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import requires

import PIL


def test_pillow_is_the_pinned_major_version():
    """Pillow 12.3 and 13.0 resize ~13 % of crops differently: if an extra pulled another major version in, the
    views (and every feature) would change silently."""
    pins = [r for r in requires("dynrefer") if r.lower().startswith("pillow") and "extra ==" not in r]
    assert len(pins) == 1, pins
    bounds = dict((op, int(v)) for op, v in re.findall(r"(>=|<)(\d+)", pins[0]))
    low, high = bounds[">="], bounds["<"]
    assert high == low + 1, pins[0]
    assert int(PIL.__version__.split(".")[0]) == low, f"installed Pillow {PIL.__version__}, pinned {pins[0]}"


def test_every_extra_module_is_in_an_extra():
    from dynrefer.errors import EXTRAS

    extras: dict[str, list[str]] = {}
    for r in requires("dynrefer"):
        if "extra ==" in r:
            extras.setdefault(re.search(r"extra == .(\w+).", r).group(1), []).append(r.lower())
    assert set(EXTRAS.values()) <= set(extras)
    assert any(d.startswith("lightning") for d in extras["train"])
    assert any(d.startswith("pycocoevalcap") for d in extras["eval"])


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    """``dynrefer fit`` without Lightning (hidden from the import system): one line, exit 2."""
    code = ("import sys\n"
            "class NoLightning:  # as if Lightning were not installed\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'lightning':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, NoLightning())\n"
            "from dynrefer.cli import main\n"
            "sys.exit(main(['fit', '--config', 'missing.yaml']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "dynrefer: error: this needs the 'train' extra (module 'lightning' is not installed): "
        "pip install 'dynrefer[train]'"]


def test_only_a_missing_module_of_an_extra_is_reported_as_one():
    from dynrefer.errors import missing_extra

    assert missing_extra(ModuleNotFoundError("No module named 'fastapi'", name="fastapi")) is None  # installed here
    assert missing_extra(ModuleNotFoundError("x", name="lightning.pytorch.nothing")) is None  # a submodule: a bug
    assert missing_extra(ImportError("cannot import name 'X' from 'lightning'", name="lightning")) is None
    assert missing_extra(ModuleNotFoundError("x", name="numpy")) is None  # not an extra's


def test_a_broken_command_plugin_is_left_out_with_a_warning(monkeypatch, capsys):
    import dynrefer.commands as commands
    from dynrefer.cli import build_parser

    class Broken:
        name, value = "broken", "broken_plugin:register"

        def load(self):
            raise RuntimeError("plugin broken")

    class Fit(Broken):
        name = "fit"

    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [Broken(), Fit()])
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert "broken" not in choices and "describe" in choices and "fit" in choices
    err = capsys.readouterr().err
    assert "the 'broken' command of broken_plugin:register could not be loaded (RuntimeError: plugin broken)" in err
    assert commands.LIGHTNING_COMMANDS == ("fit", "validate")
