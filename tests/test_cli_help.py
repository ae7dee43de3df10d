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


def test_help_lists_every_command_of_the_table(capsys):
    with pytest.raises(SystemExit):
        eeg_vlm_main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for name, (_, about) in COMMANDS.items():
        assert any(line.split() == ["eeg-vlm", name, *about.split()] for line in lines), name
    assert "predict" in COMMANDS["vision"][1]  # eeg-vlm vision train | extract | predict
