"""The one check of bad input every test shares: the command exits with status 2, its stderr ends with exactly
one ``error: ...`` line (holding the expected fragments: the file, the record), and nothing under the watched
folders was written, removed or touched.

``refused(main, argv, capsys, ...)`` runs a command's ``main`` in-process as ``eeg_core.cli.run`` runs it;
``check_refusal(code, stderr, ...)`` checks a finished run (a subprocess); ``snapshot`` is what "nothing
written" compares.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import pytest

from eeg_core.cli import run


def snapshot(*folders: Path) -> dict:
    """Every file and folder under ``folders`` (which may not exist) with its size and modification time."""
    out = {}
    for folder in map(Path, folders):
        if not folder.exists() and not folder.is_symlink():
            out[str(folder)] = None
            continue
        for p in [folder, *folder.rglob("*")]:
            st = p.lstat()
            out[str(p)] = (p.is_dir(), st.st_size if not p.is_dir() else 0, st.st_mtime_ns)
    return out


def check_refusal(code: int | None, err: str, fragments: Iterable[str] = (), before: dict | None = None,
                  watch: Sequence[Path] = (), alone: bool = False) -> str:
    """Exit status 2 and one ``error:`` line, last on stderr (with ``alone``, the only line), holding every
    fragment; with ``before`` (a ``snapshot(*watch)`` taken before the run), nothing under ``watch`` changed.
    Returns the error line."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err[-3000:]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err[-3000:]
    if alone:
        assert err.count("\n") == 1, err[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    if before is not None:
        assert snapshot(*watch) == before, "the refused command wrote, removed or touched a file"
    return errors[0]


def refused(main: Callable, argv: Sequence, capsys, fragments: Iterable[str] = (), watch: Sequence[Path] = (),
            alone: bool = False, quiet: bool = False) -> str:
    """Run ``main(argv)`` (arguments made text) as the console commands do and check it refuses (see
    ``check_refusal``); ``watch``: folders in which nothing may change; with ``quiet``, nothing on stdout either.
    Returns the error line."""
    before = snapshot(*watch)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    if quiet:
        assert out == "", out[-3000:]
    return check_refusal(exit_.value.code, err, fragments, before, watch, alone)
