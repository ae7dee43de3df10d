"""The README shows the paper's two commands verbatim, and they are the ones the tests run."""
import shlex
from pathlib import Path

from eeg_vlm.commands import EVAL_COMMAND, TRAIN_COMMAND

REPO = Path(__file__).resolve().parents[1]


def readme_lines() -> list[str]:
    return (REPO / "README.md").read_text(encoding="utf-8").splitlines()


def test_readme_holds_the_training_command_verbatim():
    assert TRAIN_COMMAND in readme_lines()


def test_readme_holds_the_evaluation_command_verbatim():
    assert EVAL_COMMAND in readme_lines()


def test_finetune_script_runs_the_same_flags():
    """scripts/finetune_lora_eeg.sh is the documented command with its paths as variables."""
    script = (REPO / "scripts" / "finetune_lora_eeg.sh").read_text(encoding="utf-8")
    line = next(l for l in script.splitlines() if l.startswith("deepspeed llava/train/train_mem.py"))
    flags = [a for a in shlex.split(line) if a.startswith("--")]
    assert flags == [a for a in shlex.split(TRAIN_COMMAND) if a.startswith("--")]


def test_readme_shows_the_two_commands_first():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.index("make demo") < text.index("## Data flow")
    assert text.index("make test") < text.index("## Data flow")
    assert "make test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
