"""``eeg-vlm baseline``: the classic sleep-staging baselines every score of the project stands beside.

    eeg-vlm baseline train --records sleep_data/eeg_ft.json --edf-dir EDF_DIR --kind bandpower|features \\
        [--channels "EEG Fpz-Cz,..."] [--extractor auto|yasa|scipy] --out DIR
    eeg-vlm baseline predict --model DIR --question-file sleep_data/eeg_eval.jsonl --edf-dir EDF_DIR \\
        --answers-file ANSWERS.jsonl [--allow-overlap]

They read the signal of each record from its night's PSG (the record's ``psg`` field, relative to
``--edf-dir``; ``eeg-vlm prepare`` writes it) at its ``epoch`` (the 30-s epoch's index from the recording's
start), so they are trained on the same records (subjects) as the vision module and answer the same
held-out questions, in the answers format, so ``eeg-vlm score`` scores them like any model.

- ``bandpower``: the project's reference baseline. A standardised logistic regression (scikit-learn) on
  the five log relative band powers of each epoch (``sleep_eeg.signal.bands.log_relative_band_power``), five per
  channel; default channel ``EEG Fpz-Cz``. Real Sleep-EDF, 16 held-out subjects: 0.678 accuracy on
  Fpz-Cz, 0.741 with Fpz-Cz + Pz-Oz + EOG horizontal.
- ``features``: the sleep field's everyday feature set, YASA's ``SleepStaging`` features (spectral and
  time-domain, each also smoothed over the neighbouring epochs of the night) with scikit-learn's
  ``HistGradientBoostingClassifier`` (balanced class weights: N1 is rare) trained on our training split,
  not YASA's pre-trained classifier. YASA installs cleanly with the project's pins and is the default
  (``--extractor auto``) when present (``pip install -e '.[baselines]'``); without it the same feature set
  is computed on scipy (``--extractor scipy``, see ``sleep_eeg.baselines.features``), so the command works either way.
  At most one EEG, one EOG and one EMG channel (named so), as in YASA.

The model folder holds ``config.json`` (kind, channels, feature names, classes, the training records'
sha256 and subjects, the model file's sha256) and the fitted model as plain numbers, never a pickle: the
logistic regression's scaler, coefficients and intercepts in ``model.json``; the gradient-boosted trees'
nodes in ``model.npz`` (loaded with ``allow_pickle=False``), evaluated here with the rule scikit-learn
uses and checked against scikit-learn's own probabilities when the model is saved. A model file whose
sha256 differs from ``config.json`` is refused. The folder is written whole (a temporary folder, then a
rename). Bad input is one line naming the file and the record, and nothing is written.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, NamedTuple, Sequence

import numpy as np

from eeg_core.answer import stage_line
from eeg_core.atomic import atomic_folder, file_sha256, write_json, write_jsonl
from eeg_core.errors import FormatError
from eeg_core.options import add_options, option, options_from_args
from eeg_core.outputs import check_output
from eeg_core.formats import question_answer, question_keys, read_records, record_id
from eeg_core.stages import EPOCH_S, STAGES, check_stage
from sleep_eeg.baselines import features as F
from sleep_eeg.baselines.classifiers import BOOSTED, LOGISTIC, Classifier
from sleep_eeg.recording.channels import DEFAULT_CHANNEL, channel_role, resolve_channels, with_roles
from sleep_eeg.signal.bands import BANDS, log_relative_band_power
from sleep_eeg.signal.filters import resample

EXTRACTORS = ("auto", "yasa", "scipy")
FORMAT = "eeg-vlm baseline"
FORMAT_VERSION = 2  # 2: config.json is covered by config_sha256
CONFIG_NAME = "config.json"
MIN_FS = 60.0  # the top band edge (30 Hz) must lie below Nyquist


# ---------------------------------------------------------------------------------------------
# Inputs: records, channels, signals
# ---------------------------------------------------------------------------------------------
def parse_channels(text: str | None, kind: str) -> list[str]:
    """The comma-separated channel list (default ``EEG Fpz-Cz``), checked for the kind's rules."""
    channels = [c.strip() for c in (text or DEFAULT_CHANNEL).split(",") if c.strip()]
    if not channels:
        raise FormatError("--channels: no channel named")
    if len(set(channels)) != len(channels):
        raise FormatError(f"--channels: a channel is named twice ({', '.join(channels)})")
    if KINDS[kind].one_per_role:
        roles = [channel_role(c) for c in channels]
        twice = [r for r, n in Counter(roles).items() if n > 1]
        if twice:
            raise FormatError(
                f"--channels: the {kind} baseline takes at most one EEG, one EOG and one EMG channel (as YASA); "
                f"got {Counter(roles)[twice[0]]} {twice[0].upper()} channels ({', '.join(channels)})"
            )
        if "eeg" not in roles:
            raise FormatError(f"--channels: the {kind} baseline needs an EEG channel; got {', '.join(channels)}")
    return channels


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or kind not in KINDS:
        raise FormatError(f"--kind must be one of {'|'.join(KINDS)}, got {kind!r}")
    return kind


def resolve_extractor(kind: str, extractor: str) -> str | None:
    """``yasa`` or ``scipy`` for a kind whose features come from either (``auto``: YASA when installed), else None."""
    if extractor not in EXTRACTORS:
        raise FormatError(f"--extractor must be one of {'|'.join(EXTRACTORS)}, got {extractor!r}")
    if not KINDS[kind].extractors:
        return None
    if extractor == "auto":
        return "yasa" if F.yasa_version() else "scipy"
    if extractor == "yasa" and not F.yasa_version():
        raise FormatError("--extractor yasa: YASA is not installed; pip install -e '.[baselines]' (or use --extractor scipy)")
    return extractor


def group_by_night(records: Sequence[dict], path: Path, need_label: bool) -> dict[str, list[tuple[int, int]]]:
    """``psg -> [(position, epoch), ...]`` in file order; every record is checked first."""
    nights: dict[str, list[tuple[int, int]]] = {}
    for i, rec in enumerate(records):
        rid = record_id(rec)
        where = f"{path}: record {rid!r} (#{i})"
        if rid is None:
            raise FormatError(f"{path}: record #{i} has no id / question_id")
        psg = rec.get("psg")
        if not isinstance(psg, str) or not psg:
            raise FormatError(f"{where} has no 'psg' field (its PSG file name); rerun eeg-vlm prepare to add it")
        pure = PurePosixPath(psg.replace("\\", "/"))
        if pure.is_absolute() or PureWindowsPath(psg).drive or ".." in pure.parts:
            raise FormatError(f"{where}: 'psg' {psg!r} leaves --edf-dir (absolute or '..'); PSG names are relative "
                              "to --edf-dir")
        epoch = rec.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise FormatError(f"{where}: 'epoch' {epoch!r} is not a non-negative integer")
        if need_label:
            check_stage(rec.get("label"), where)
        nights.setdefault(psg, []).append((i, epoch))
    return nights


def _check_rate(psg: Path, channel: str, fs: float, where: str) -> None:
    if fs <= MIN_FS:
        raise FormatError(
            f"{psg}: channel {channel!r} ({where}) is sampled at {fs:g} Hz; the baselines need more than {MIN_FS:g} Hz "
            f"(bands up to 30 Hz)"
        )


def night_features(
    psg: Path, items: Sequence[tuple[int, int]], records: Sequence[dict], records_path: Path,
    kind: str, channels: Sequence[str], extractor: str | None, role_names: dict | None = None,
) -> tuple[np.ndarray, list[str]]:
    """``[len(items), n_features]`` features of one night's requested epochs, and the feature names.

    Parameters
    ----------
    psg : pathlib.Path
        The night's PSG file.
    items : sequence of (int, int)
        ``(record position, epoch index)`` of the records that use this night.
    records, records_path
        The records (for error messages naming the record) and their file.
    kind, channels, extractor
        What to compute (see the module docstring).
    role_names : dict, optional
        The recording's channel for each role (``{"eeg": "C4-M1"}``); else each channel is the file's channel of
        its derivation (``sleep_eeg.recording.channels.resolve_channels``).
    """
    from sleep_eeg.recording.edf import read_recording, signal_uv

    first = record_id(records[items[0][0]])
    if not psg.is_file():
        raise FormatError(f"{psg}: PSG file not found (named by record {first!r} of {records_path})")
    edf = read_recording(psg)
    found = resolve_channels(list(edf.labels), channels, role_names, str(psg),
                             f" (needed by record {first!r} of {records_path})")
    signals = {c: signal_uv(edf, found[c]) for c in channels}
    for c, (x, fs) in signals.items():
        _check_rate(psg, c, fs, f"needed by record {first!r} of {records_path}")
        n_epochs = len(x) // int(round(EPOCH_S * fs))
        for pos, epoch in items:
            if epoch >= n_epochs:
                raise FormatError(
                    f"{psg}: record {record_id(records[pos])!r} of {records_path}: epoch {epoch} is outside the "
                    f"recording ({n_epochs} complete 30-s epochs in {c!r})"
                )
    return KINDS[kind].features(signals, [e for _, e in items], extractor)


def bandpower_features(signals: dict[str, tuple[np.ndarray, float]], epochs: Sequence[int],
                       extractor: str | None = None) -> tuple[np.ndarray, list[str]]:
    """The five log relative band powers of each epoch, per channel (the ``bandpower`` kind)."""
    blocks = [log_relative_band_power(x, fs, epochs) for x, fs in signals.values()]
    return np.concatenate(blocks, axis=1), [f"{c}: log rel {b}" for c in signals for b in BANDS]


def yasa_style_features(signals: dict[str, tuple[np.ndarray, float]], epochs: Sequence[int],
                        extractor: str | None) -> tuple[np.ndarray, list[str]]:
    """YASA's ``SleepStaging`` feature set of each epoch, by channel role, from YASA or from scipy (the
    ``features`` kind)."""
    by_role = {channel_role(c): resample(x, fs, F.FEATURES_FS)[0] for c, (x, fs) in signals.items()}
    n = min(len(x) for x in by_role.values())
    by_role = {r: x[:n] for r, x in by_role.items()}
    compute = F.yasa_night_features if extractor == "yasa" else F.scipy_night_features
    table, names = compute(by_role, F.FEATURES_FS)
    table = np.where(np.isfinite(table), table, np.nan)
    return table[list(epochs)], names


def dataset(
    records: Sequence[dict], records_path: Path, edf_dir: Path, kind: str, channels: Sequence[str],
    extractor: str | None, need_label: bool, role_names: dict | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Feature matrix of all records (row i for record i), reading each night once. ``edf_dir``: the folder the
    records' psg names are in, or the pairing CSV that names them (``sleep_eeg.recording.nights.read_pairs``)."""
    from tqdm.auto import tqdm

    from sleep_eeg.recording.nights import recording_lookup

    recording = recording_lookup(edf_dir)
    nights = group_by_night(records, records_path, need_label)
    x: np.ndarray | None = None
    names: list[str] = []
    for psg, items in tqdm(nights.items(), desc=f"{kind} features", unit="night", leave=False, disable=None):
        block, block_names = night_features(recording(psg), items, records, records_path, kind,
                                            channels, extractor, role_names)
        if x is None:
            x, names = np.full((len(records), block.shape[1]), np.nan), block_names
        elif block_names != names:
            raise FormatError(f"{edf_dir / psg}: its features differ from the other nights' ({len(block_names)} vs {len(names)})")
        x[[pos for pos, _ in items]] = block
    return x, names


class Kind(NamedTuple):
    """A baseline: the features of one night's epochs (``features(signals, epochs, extractor)`` -> table and
    names), its classifier, and its rules for ``--channels`` and ``--extractor``."""

    features: Callable[[dict, Sequence[int], str | None], tuple[np.ndarray, list[str]]]
    classifier: Classifier
    one_per_role: bool = False  # at most one EEG, one EOG and one EMG channel, an EEG one among them (as YASA)
    extractors: bool = False  # its features are computed by YASA or on scipy (--extractor)


# The baselines, by --kind; the first is the default.
KINDS: dict[str, Kind] = {
    "bandpower": Kind(bandpower_features, LOGISTIC),
    "features": Kind(yasa_style_features, BOOSTED, one_per_role=True, extractors=True),
}


# ---------------------------------------------------------------------------------------------
# The model folder
# ---------------------------------------------------------------------------------------------
def _is_model_dir(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG_NAME).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out_dir(out: Path) -> None:
    """``--out`` may be new, empty, or an earlier baseline model (replaced whole); anything else is refused."""
    check_output(out, "--out", folder=True)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_model_dir(out))):
        raise FormatError(f"{out}: exists and is not a baseline model folder; refusing to overwrite it")


def save_model(out: Path, config: dict, numbers: dict | dict[str, np.ndarray]) -> None:
    """Write the model folder whole: into a temporary folder beside it, then swapped in (``atomic_folder``)."""
    with atomic_folder(out) as tmp:
        classifier = KINDS[config["kind"]].classifier
        model_file = tmp / classifier.model_file
        classifier.write(model_file, numbers)
        config = {**config, "model_file": model_file.name, "model_sha256": file_sha256(model_file)}
        write_json(tmp / CONFIG_NAME, {**config, "config_sha256": config_sha256(config)})


def config_sha256(config: dict) -> str:
    """The sha256 of a model's config (canonical JSON, without ``config_sha256`` itself): editing any field
    (``classes``, ``feature_names``, ``channels`` ...) changes it."""
    body = {k: v for k, v in config.items() if k != "config_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_model(model_dir: str | Path) -> tuple[dict, dict]:
    """``(config, numbers)`` of a model folder, checked: our format, a known kind, the model file's sha256."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise FormatError(f"{model_dir}: no {CONFIG_NAME}; not a baseline model folder (eeg-vlm baseline train --out)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise FormatError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise FormatError(f"{cfg_path}: not a baseline model's config (no \"format\": \"{FORMAT}\")")
    if config.get("format_version") != FORMAT_VERSION:
        raise FormatError(f"{cfg_path}: format_version {config.get('format_version')!r}; this code reads {FORMAT_VERSION} "
                          "(train the baseline again)")
    kind = config.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise FormatError(f"{cfg_path}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    classifier = KINDS[kind].classifier
    model_file = model_dir / classifier.model_file
    if config.get("model_file") != classifier.model_file or not model_file.is_file():
        raise FormatError(f"{model_dir}: a {kind} model needs {classifier.model_file}; the folder holds a model of "
                          "another kind or none")
    if config.get("config_sha256") != config_sha256(config):
        raise FormatError(f"{cfg_path}: its content differs from its config_sha256; the config was edited after "
                          "training (classes, features, channels would no longer match the model)")
    if file_sha256(model_file) != config.get("model_sha256"):
        raise FormatError(f"{model_file}: sha256 differs from {cfg_path}; the model file was changed or replaced")
    return config, classifier.read(model_file)


def check_flat_nights(records: Sequence[dict], records_path: Path, x: np.ndarray) -> None:
    """A night whose features do not change from epoch to epoch (a flat or disconnected channel) teaches the
    classifier nothing but its labels: a warning with the counts per such night; refused when every night is."""
    nights: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        nights.setdefault(str(r.get("psg")), []).append(i)
    flat = []
    for psg, rows in nights.items():
        with warnings.catch_warnings():  # an all-NaN column (a feature missing all night) is not a change
            warnings.simplefilter("ignore", RuntimeWarning)
            spread = np.nan_to_num(np.nanmax(x[rows], axis=0) - np.nanmin(x[rows], axis=0))
        if len(rows) > 1 and np.all(spread == 0):
            flat.append((psg, len(rows)))
    if flat and len(flat) == len(nights):
        raise FormatError(f"{records_path}: the features are the same in every epoch of every night ({len(records)} "
                          "records): a flat channel? nothing to learn")
    for psg, n in flat:
        print(f"warning: {records_path}: night {psg}: the features are the same in all {n} of its epochs (a flat "
              "channel?); the baseline learns nothing from them", file=sys.stderr)


def model_proba(config: dict, numbers: dict, x: np.ndarray) -> np.ndarray:
    """``[n, len(config['classes'])]`` class probabilities."""
    return KINDS[config["kind"]].classifier.proba(numbers, x)


# ---------------------------------------------------------------------------------------------
# train / predict
# ---------------------------------------------------------------------------------------------
def role_option(role: str, example: str):
    """A ``--<role>-name`` field: the recordings' channel for a role (None: the channel of its derivation)."""
    return option(None, f"the recordings' {role.upper()} channel (e.g. {example})")


class RoleNames:
    """``role_names`` of an options dataclass with the fields ``eeg_name``, ``eog_name`` and ``emg_name``."""

    @property
    def role_names(self) -> dict[str, str | None]:
        return {"eeg": self.eeg_name, "eog": self.eog_name, "emg": self.emg_name}


@dataclass(frozen=True)
class BaselineTrainOptions(RoleNames):
    """``eeg-vlm baseline train``'s options besides the records, the EDF folder and the model folder. ``eeg_name``,
    ``eog_name``, ``emg_name``: the recordings' channel for each role (``"C4-M1"``), replacing that role's channel of
    ``channels``."""

    kind: str = option(next(iter(KINDS)), f"{'|'.join(KINDS)} (default {next(iter(KINDS))})")
    channels: str | Sequence[str] = option(DEFAULT_CHANNEL, "comma-separated channel names")
    extractor: str = option("auto", "features kind: yasa | scipy | auto (YASA when installed, else scipy)")
    eeg_name: str | None = role_option("eeg", "C4-M1")
    eog_name: str | None = role_option("eog", "E1-M2")
    emg_name: str | None = role_option("emg", "Chin1-Chin2")


@dataclass(frozen=True)
class BaselinePredictOptions(RoleNames):
    """``eeg-vlm baseline predict``'s options besides the model, the questions, the EDF folder and the answers.
    ``eeg_name``, ``eog_name``, ``emg_name``: the recordings' channel for each of the model's roles, else the one of
    its derivation."""

    allow_overlap: bool = option(False, "answer questions of subjects the model was trained on (default: refused)")
    eeg_name: str | None = role_option("eeg", "C4-M1")
    eog_name: str | None = role_option("eog", "E1-M2")
    emg_name: str | None = role_option("emg", "Chin1-Chin2")


def train(records_path: str | Path, edf_dir: str | Path, out: str | Path, options: BaselineTrainOptions | None = None,
          **overrides) -> dict:
    """Fit a baseline on the training records and write its model folder; returns its config. ``options``:
    :class:`BaselineTrainOptions` (kind, channels, extractor, channel names), with ``overrides`` by keyword
    applied."""
    import sklearn

    opts = replace(options or BaselineTrainOptions(), **overrides)
    kind = check_kind(opts.kind)
    text = opts.channels if isinstance(opts.channels, str) else ",".join(opts.channels)
    named = [c.strip() for c in text.split(",") if c.strip()]
    channels = parse_channels(",".join(with_roles(named, opts.role_names)), kind)
    extractor = resolve_extractor(kind, opts.extractor)
    records_path, edf_dir, out = Path(records_path), Path(edf_dir), Path(out)
    check_out_dir(out)
    if not edf_dir.is_dir() and not (edf_dir.is_file() and edf_dir.suffix.lower() == ".csv"):
        raise FormatError(f"{edf_dir}: EDF folder not found")
    records = read_records(records_path)
    x, names = dataset(records, records_path, edf_dir, kind, channels, extractor, need_label=True)
    y = [r["label"] for r in records]
    check_flat_nights(records, records_path, x)
    if len(set(y)) < 2:
        raise FormatError(f"{records_path}: the training records hold one stage only ({y[0]}); a classifier needs two or more")
    classifier = KINDS[kind].classifier
    numbers, est = classifier.fit(x, y)
    mine = classifier.proba(numbers, x)
    if not np.allclose(mine, est.predict_proba(x), atol=1e-6):  # the exported numbers must be the model
        raise RuntimeError(f"the exported {kind} model disagrees with scikit-learn {sklearn.__version__}; please report")
    classes = [str(c) for c in est.classes_]
    pred = np.asarray(classes)[mine.argmax(axis=1)]
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "classifier": classifier.description,
        "extractor": extractor,
        "extractor_version": F.yasa_version() if extractor == "yasa" else None,
        "channels": list(channels),
        "feature_names": names,
        "classes": classes,
        "training": {
            "records": str(records_path),
            "records_sha256": file_sha256(records_path),
            "n_records": len(records),
            "subjects": sorted({str(r["subject"]) for r in records if r.get("subject") is not None}),
            "n_records_without_subject": sum(r.get("subject") is None for r in records),
            "label_counts": {s: y.count(s) for s in STAGES if s in y},
            "accuracy": float(np.mean(pred == np.asarray(y))),
        },
        "sklearn_version": sklearn.__version__,
    }
    save_model(out, config, numbers)
    return config


def predict(model_dir: str | Path, question_file: str | Path, edf_dir: str | Path, answers_file: str | Path,
            options: BaselinePredictOptions | None = None, **overrides) -> int:
    """Answer every question with the baseline; write the answers file whole. Returns the count. ``options``:
    :class:`BaselinePredictOptions` (``allow_overlap``, the channel names), with ``overrides`` by keyword applied."""
    opts = replace(options or BaselinePredictOptions(), **overrides)
    allow_overlap = opts.allow_overlap
    config, numbers = load_model(model_dir)
    question_file, edf_dir, model_dir = Path(question_file), Path(edf_dir), Path(model_dir)
    if config["extractor"] == "yasa":
        installed = F.yasa_version()
        if not installed:
            raise FormatError(f"{model_dir}: trained on YASA features, and YASA is not installed; pip install -e '.[baselines]'")
        if installed != config.get("extractor_version"):
            print(f"note: {model_dir} was trained with YASA {config.get('extractor_version')}, this is YASA {installed}",
                  file=sys.stderr)
    if not edf_dir.is_dir() and not (edf_dir.is_file() and edf_dir.suffix.lower() == ".csv"):
        raise FormatError(f"{edf_dir}: EDF folder not found")
    questions = read_records(question_file)
    check_output(answers_file, "--answers-file", folder=False)
    question_keys([{"question_id": record_id(q)} if isinstance(q, dict) else q for q in questions], question_file,
                  "question")  # a repeated id is refused (records' "id" counts as one)
    trained_on = set(config["training"]["subjects"])
    unknown = sum(q.get("subject") is None for q in questions)
    untold = config["training"].get("n_records_without_subject", 0)
    if (unknown or untold) and not allow_overlap:
        whose = (f"{unknown} of {len(questions)} questions carry no subject" if unknown else
                 f"{untold} of the model's {config['training']['n_records']} training records carried no subject")
        raise FormatError(f"{question_file}: {whose}, so whether they are of the subjects the model {model_dir} was "
                          "trained on cannot be checked; pass --allow-overlap to answer them anyway")
    overlap = sorted({str(q["subject"]) for q in questions if q.get("subject") is not None} & trained_on)
    if overlap and not allow_overlap:
        n = sum(str(q.get("subject")) in overlap for q in questions)
        raise FormatError(
            f"{question_file}: {n} questions are of subjects the model {model_dir} was trained on "
            f"({', '.join(overlap[:5])}{', ...' if len(overlap) > 5 else ''}); pass --allow-overlap to answer them anyway"
        )
    x, names = dataset(questions, question_file, edf_dir, config["kind"], config["channels"], config["extractor"],
                       need_label=False, role_names=opts.role_names)
    if names != config["feature_names"]:
        raise FormatError(f"{model_dir}: the model was trained on other features ({len(config['feature_names'])} "
                          f"named in {CONFIG_NAME}, {len(names)} computed now)")
    proba = model_proba(config, numbers, x)
    classes = config["classes"]
    model_id = model_dir.resolve().name
    answers = []
    for q, p in zip(questions, proba):
        stage = classes[int(p.argmax())]
        probs = {s: round(float(p[classes.index(s)]), 6) if s in classes else 0.0 for s in STAGES}
        answers.append(question_answer(q, stage_line(stage), model_id,
                                       {"baseline": config["kind"], "probabilities": probs}))
    write_jsonl(answers_file, answers)
    return len(answers)


def build_parser() -> argparse.ArgumentParser:
    """``eeg-vlm baseline train | predict``: the files and folders, and each subcommand's options dataclass."""
    p = argparse.ArgumentParser(prog="eeg-vlm baseline", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="fit a baseline on the training records")
    t.add_argument("--records", required=True, help="train records (eeg_ft.json) with psg / epoch / label")
    t.add_argument("--edf-dir", required=True,
                   help="the folder the records' psg names are relative to (or the pairing CSV prepare read)")
    t.add_argument("--out", required=True, help="model folder to write")
    add_options(t, BaselineTrainOptions)
    q = sub.add_parser("predict", help="answer eval questions with a trained baseline")
    q.add_argument("--model", required=True, help="model folder from baseline train")
    q.add_argument("--question-file", required=True, help="eval questions (eeg_eval.jsonl)")
    q.add_argument("--edf-dir", required=True)
    q.add_argument("--answers-file", required=True)
    add_options(q, BaselinePredictOptions)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "train":
        cfg = train(args.records, args.edf_dir, args.out, options_from_args(BaselineTrainOptions, args))
        tr = cfg["training"]
        what = cfg["kind"] + (f" ({cfg['extractor']} features)" if cfg["extractor"] else "")
        print(f"{what} baseline on {tr['n_records']} records of {len(tr['subjects'])} subjects, "
              f"{len(cfg['feature_names'])} features from {', '.join(cfg['channels'])}; "
              f"training accuracy {tr['accuracy']:.3f} -> {args.out}")
    else:
        n = predict(args.model, args.question_file, args.edf_dir, args.answers_file,
                    options_from_args(BaselinePredictOptions, args))
        print(f"wrote {n} answers -> {args.answers_file}")
    return 0


if __name__ == "__main__":
    from eeg_core.cli import run

    run(main)
