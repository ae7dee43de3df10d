"""Every command's --help reads as plain text (no RST markup from the docstrings it is built from)."""
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
