"""Every command's --help reads as plain text (no RST markup from the docstrings it is built from); eeg-vlm --help
lists the command table."""
import pytest

from eeg_vlm.cli import COMMANDS
from eeg_vlm.cli import main as eeg_vlm_main


@pytest.mark.parametrize("argv", [[name, "--help"] for name in COMMANDS] + [["vision", "train", "--help"], ["--help"]])
def test_help_is_plain_text(argv, capsys):
    with pytest.raises(SystemExit) as code:
        eeg_vlm_main(argv)
    out = capsys.readouterr().out
    assert code.value.code == 0 and out.strip()
    assert "``" not in out


def test_a_commands_flags_come_from_its_options_dataclass():
    """Each default is typed once: the flags, their defaults and their types are the dataclass's fields."""
    import argparse
    from dataclasses import dataclass, fields

    from eeg_core.options import add_options, option, options_from_args
    from vision_modules.train import VisionTrainConfig, add_arguments

    @dataclass(frozen=True)
    class Opts:
        name: str = option(help="required: no default")
        epochs: int = option(5, "passes")
        rate: float = option(0.5, "a rate")
        strict: bool = option(False, "a switch")
        progress: bool = option(True, "no bars", flag="--no-progress")
        sizes: tuple | None = option(None, "sizes", type=int, nargs="+")
        modules: tuple = option((), "repeatable", flag="--module", action="append")
        internal: int = 3  # not a flag

    p = argparse.ArgumentParser()
    add_options(p, Opts)
    opts = options_from_args(Opts, p.parse_args(["--name", "x", "--epochs", "7", "--strict", "--no-progress",
                                                 "--sizes", "2", "3", "--module", "a", "--module", "b"]))
    assert opts == Opts(name="x", epochs=7, rate=0.5, strict=True, progress=False, sizes=[2, 3], modules=("a", "b"))
    assert options_from_args(Opts, p.parse_args(["--name", "y"])) == Opts(name="y")
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "x", "--internal", "4"])
    # vision train: every option of VisionTrainConfig is a flag whose default is the dataclass's
    p = argparse.ArgumentParser()
    add_arguments(p)
    parsed = p.parse_args(["--records", "r.json", "--image-folder", "img", "--out", "o"])
    assert options_from_args(VisionTrainConfig, parsed) == VisionTrainConfig()
    assert {f.name for f in fields(VisionTrainConfig)} <= set(vars(parsed))
@pytest.mark.parametrize("module, options, argv", [
    ("sleep_eeg.evaluation.score", "ScoreOptions", ["--question-file", "q.jsonl", "--answers-file", "a.jsonl"]),
    ("sleep_eeg.baselines.classic", "BaselineTrainOptions", ["train", "--records", "r", "--edf-dir", "e", "--out", "o"]),
    ("sleep_eeg.baselines.classic", "BaselinePredictOptions",
     ["predict", "--model", "m", "--question-file", "q", "--edf-dir", "e", "--answers-file", "a"]),
    ("sleep_eeg.synthetic.synth", "SynthOptions", ["--out", "o"]),
    ("eeg_vlm.stage", "StageOptions", ["night.edf", "--vision", "v", "--out", "o"]),
    ("eeg_vlm.demo", "DemoOptions", []),
    ("sleep_eeg.images.prepare", "PrepareOptions", ["--edf-dir", "e"]),
])
def test_a_commands_parser_defaults_are_its_options_defaults(module, options, argv):
    """score, baseline train / predict, synth, stage, demo: with no option given, the parsed flags are the options
    dataclass's defaults, which are the API's (options=None), and every option field is a flag."""
    import importlib
    from dataclasses import fields

    from eeg_core.options import options_from_args

    mod = importlib.import_module(module)
    cls = getattr(mod, options)
    parsed = mod.build_parser().parse_args(argv)
    assert options_from_args(cls, parsed) == cls()
    assert {f.name for f in fields(cls)} <= set(vars(parsed))


def test_prepares_render_flags_default_to_the_render_settings():
    """Each render flag of prepare is a RenderConfig field made with option(): with none given, prepare draws
    with RenderConfig's defaults (the channels come from --channels)."""
    from dataclasses import fields

    from eeg_core.options import options_from_args
    from sleep_eeg.images.prepare import build_parser
    from sleep_eeg.images.render import RenderConfig

    parsed = build_parser().parse_args(["--edf-dir", "e"])
    assert options_from_args(RenderConfig, parsed, channels=RenderConfig().channels) == RenderConfig()
    flags = {f.name for f in fields(RenderConfig) if "help" in f.metadata}
    assert {"fs", "px_per_s", "height", "uv", "band", "context_s", "spectrogram", "night_norm"} == flags
    assert flags <= set(vars(parsed))


def test_help_lists_every_command_of_the_table(capsys):
    with pytest.raises(SystemExit):
        eeg_vlm_main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for name, (_, about) in COMMANDS.items():
        assert any(line.split() == ["eeg-vlm", name, *about.split()] for line in lines), name
    assert "predict" in COMMANDS["vision"][1]  # eeg-vlm vision train | extract | predict
