"""load_pretrained_model: a LLaVA checkpoint folder -> (tokenizer, model, image_processor, context_len).

Three layouts, told apart by their files (never by the folder name):
- full: ``config.json`` + weights (safetensors or ``pytorch_model*.bin``);
- LoRA: ``adapter_config.json`` (+ adapter weights, ``non_lora_trainables.bin|.safetensors``), needs ``model_base``;
- projector only: ``mm_projector.bin`` without language-model weights, needs ``model_base``.
The CLIP tower is read from ``mm_vision_tower`` after the language model (it is never in the weights file).
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import torch

from eeg_core.errors import FormatError
from llava.constants import NON_LORA_TRAINABLES_FILES
from llava.model.config import LlavaConfig, load_config
from llava.model.llava_llama import LlavaLlamaForCausalLM
from llava.model.vision_tower import resolve_model_dir

logger = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")


def checkpoint_kind(folder: Path) -> str:
    """'lora', 'projector' or 'full', from the files in ``folder``."""
    if (folder / "adapter_config.json").is_file():
        return "lora"
    has_weights = any(any(folder.glob(p)) for p in WEIGHT_PATTERNS)
    if not has_weights and (folder / "mm_projector.bin").is_file():
        return "projector"
    if not has_weights:
        raise FormatError(f"{folder}: no model weights (model.safetensors, pytorch_model.bin), no adapter_config.json "
                          "and no mm_projector.bin")
    return "full"


# Weight files at least this large have their sha256 remembered (see ``weights_sha256``).
CACHED_HASH_BYTES = 64 << 20


def _hash_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "eeg-vlm" / "weights_sha256.json"


def weights_sha256(path: Path, min_bytes: int = CACHED_HASH_BYTES) -> str:
    """sha256 of a weights file, remembered for large files so that a 26 GB checkpoint is read once, not on every
    evaluation run (about 30 s each).

    The remembered hash is used only while the file is the very same one: same device and inode, size,
    modification time and status-change time (``st_ctime_ns``). The kernel sets the status-change time on every
    write and rename, and no user call can set it back, so a file rewritten with other weights (even one whose
    size and modification time were restored) is hashed again. The memory is a JSON file in the user's cache
    folder (``$XDG_CACHE_HOME/eeg-vlm/``); where it cannot be written, every run hashes."""
    from eeg_core.atomic import file_sha256, write_json

    st = path.stat()
    if st.st_size < min_bytes:
        return file_sha256(path)
    stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    cache_file, key = _hash_cache_path(), str(path.resolve())
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key) if isinstance(cache, dict) else None
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = file_sha256(path)
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"stamp": stamp, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache_file, cache)
    except OSError as err:
        logger.info("could not remember the hash of %s in %s (%s)", path, cache_file, err)
    return digest


def adapter_config_sha256(path: Path) -> str:
    """sha256 of a LoRA ``adapter_config.json`` as settings, not as text: keys sorted, and ``target_modules`` (a
    set to peft, written in an order that changes from run to run) sorted, so two trainings to the same weights
    give the same fingerprint."""
    import hashlib

    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        settings = None
    if not isinstance(settings, dict):  # not settings: hashed as bytes; loading the adapter says what is wrong
        return weights_sha256(path)
    if isinstance(settings.get("target_modules"), list):
        settings["target_modules"] = sorted(settings["target_modules"])
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def model_fingerprint(model_path, model_base=None) -> str:
    """sha256 identifying a checkpoint by content, not by folder name: its ``config.json`` and the weights it
    holds (the adapter and ``non_lora_trainables`` of a LoRA checkpoint, ``mm_projector.bin`` of a projector-only
    one, every weights file of a full one), each under its file name, and for a LoRA or projector-only
    checkpoint its base's (``model_base``) ``config.json`` and weight files. Two trainings into the same folder
    name give two fingerprints. Large files are hashed once and remembered while they stay the same file
    (``weights_sha256``), so a 13B base costs one read, not one per run."""
    import hashlib

    folder = resolve_model_dir(model_path, what="model", hint="--model-path")
    kind = checkpoint_kind(folder)
    names = ["config.json"]
    if kind == "lora":
        names += ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", *NON_LORA_TRAINABLES_FILES]
    elif kind == "projector":
        names += ["mm_projector.bin"]
    else:
        names += sorted({p.name for pattern in WEIGHT_PATTERNS + ("*.index.json",) for p in folder.glob(pattern)})
    h = hashlib.sha256(f"{kind}\n".encode())
    for name in names:
        if name == "adapter_config.json" and (folder / name).is_file():
            h.update(f"{name} {adapter_config_sha256(folder / name)}\n".encode())
        elif (folder / name).is_file():
            h.update(f"{name} {weights_sha256(folder / name)}\n".encode())
    if model_base and kind != "full":
        base = resolve_model_dir(model_base, what="model base", hint="--model-base")
        if (base / "config.json").is_file():
            h.update(f"base config.json {weights_sha256(base / 'config.json')}\n".encode())
        for p in sorted({p for pattern in WEIGHT_PATTERNS for p in base.glob(pattern)}):
            h.update(f"base {p.name} {weights_sha256(p)}\n".encode())
    return h.hexdigest()


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's saved names -> ours: ``base_model.model.model.mm_projector.0.weight`` -> ``model.mm_projector.0.weight``."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("base_model.model.")
        if key.startswith("model.model."):
            key = key.removeprefix("model.")
        out[key] = value
    return out


def read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        from llava.train.checkpoints import load_plain

        return load_plain(path, mmap=False)  # weights_only; a pickle needing more is refused in one line
    except FormatError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one line naming it
        raise FormatError(f"{path}: unreadable weights ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def load_extra_weights(model, path: Path) -> set[str]:
    """Weights saved beside an adapter or alone (projector): every key must name one of the model's tensors.
    Returns the names loaded."""
    state = strip_prefixes(read_state(path))
    if path.name.startswith("mm_projector"):  # LLaVA's pretrain output: keys "model.mm_projector.*" (or bare)
        state = {("model.mm_projector." + k.split("mm_projector.", 1)[1]) if "mm_projector." in k else k: v
                 for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise FormatError(f"{path}: keys that match nothing in the model: {', '.join(result.unexpected_keys[:5])}")
    return set(state)


def _dtype(torch_dtype, device) -> torch.dtype:
    if isinstance(torch_dtype, str):
        torch_dtype = getattr(torch, torch_dtype)
    if torch_dtype is not None:
        return torch_dtype
    return torch.float16 if str(device).startswith("cuda") else torch.float32


def resolve_device(device_map, device) -> tuple[object, str]:
    """LLaVA's ``(device_map, device)`` -> what ``from_pretrained`` gets and the device the model ends on.

    - ``device="cuda"`` without a usable GPU: the model loads on the CPU in float32, with a warning (what a user
      running LLaVA's call on a laptop expects; LLaVA itself failed later with "Torch not compiled with CUDA").
    - ``device`` other than ``"cuda"`` (``"cpu"``, ``"cuda:1"``): everything on that device, whatever
      ``device_map`` says (LLaVA's rule: ``device_map={"": device}``), so no accelerate dispatch is needed.
    - ``device="cuda"`` with a GPU: ``device_map`` as given (``"auto"``: accelerate spreads the layers over the
      GPUs); ``None``: everything on ``cuda``.
    A GPU device is always loaded straight onto (``{"": device}``): the weights never pass through host memory
    (a 13B model built on the CPU first would hold about 26 GB of host memory per process).
    Returns ``(device_map, device)``; a device_map of None (the CPU) loads on the CPU.
    """
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("device %r asked for but no GPU is available: loading on the CPU in float32", device)
        device = "cpu"
    if device == "cpu":
        return None, device
    if device == "cuda" and device_map is not None:
        return device_map, device
    return {"": device}, device


def load_pretrained_model(model_path, model_base, model_name, load_8bit=False, load_4bit=False, device_map="auto",
                          device="cuda", torch_dtype=None, **kwargs):
    """LLaVA's loader: ``(tokenizer, model, image_processor, context_len)``, with LLaVA's positional order and
    defaults. ``model_name`` is accepted for compatibility; the layout (full, LoRA, projector-only) is read from
    the files. ``torch_dtype``: default float16 on a GPU, float32 on the CPU. Devices: see ``resolve_device``
    (``device="cpu"`` loads everything on the CPU; ``"cuda"`` without a GPU falls back to the CPU with a warning)."""
    device_map, device = resolve_device(device_map, device)
    folder = resolve_model_dir(model_path, what="model", hint="--model-path")
    base = resolve_model_dir(model_base, what="model base", hint="--model-base") if model_base else None
    dtype = _dtype(torch_dtype, device)
    load_kwargs = _load_kwargs(dtype, load_8bit, load_4bit, device_map, kwargs)
    model = _load_weights(folder, base, load_config(folder), load_kwargs)
    # The CLIP tower last (as LLaVA): an adapter whose target_modules are short names (q_proj, v_proj, as
    # LLaVA-1.5's LoRA checkpoints have) must not reach CLIP's layers of the same names.
    tower = model.get_vision_tower()
    if tower is not None:
        tower.load_model(base_dirs=tuple(str(d) for d in (folder, base) if d is not None))
        tower.vision_tower.to(dtype=dtype, device=model.device)
    if device_map is None and not (load_8bit or load_4bit):
        model.to(device)  # the CPU: already there
    model.eval()
    tokenizer = _load_tokenizer(folder, base, model)
    image_processor = tower.image_processor if tower is not None else None
    context_len = (getattr(model.config, "max_sequence_length", None)
                   or getattr(model.config, "tokenizer_model_max_length", None) or 2048)
    return tokenizer, model, image_processor, context_len


def _load_kwargs(dtype, load_8bit: bool, load_4bit: bool, device_map, kwargs: dict) -> dict:
    """``from_pretrained``'s keyword arguments: the dtype, 8- or 4-bit quantisation, the device map."""
    load_kwargs = dict(dtype=dtype, **kwargs)
    if load_8bit or load_4bit:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=load_8bit, load_in_4bit=load_4bit, bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4")
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    return load_kwargs


def _load_weights(folder: Path, base: Path | None, config, load_kwargs: dict):
    """The language model and projector of a full checkpoint, or of the base with a LoRA or projector-only
    checkpoint's weights on it (LoRA merged)."""
    kind = checkpoint_kind(folder)
    if kind == "full":
        if base is not None:
            logger.info("%s holds full weights: model_base %s is not used", folder, base)
        return _from_pretrained(folder, config, load_kwargs)[0]
    if base is None:
        raise FormatError(f"{folder}: a {'LoRA' if kind == 'lora' else 'projector-only'} checkpoint needs "
                          "model_base (--model-base) naming the base model it was trained on")
    # The base lacks what the run trained beside it (e.g. a separate feature projector): load it quietly,
    # then the checkpoint's own weights must cover every missing tensor. A run that added <im_patch>
    # (--mm_use_im_patch_token True) saved a config one row longer than the base's embeddings: the base is
    # read at its own size and resized after (the new row is never used in a prompt).
    trained_vocab, base_vocab = config.vocab_size, _vocab_size(base)
    if base_vocab is not None and base_vocab != trained_vocab:
        config.vocab_size = base_vocab
    model, missing = _from_pretrained(base, config, load_kwargs, quiet=True)
    if model.get_input_embeddings().weight.shape[0] < trained_vocab:
        model.resize_token_embeddings(trained_vocab)
    extra_files = list(NON_LORA_TRAINABLES_FILES) if kind == "lora" else ["mm_projector.bin"]
    for name in extra_files:
        if (folder / name).is_file():
            missing -= load_extra_weights(model, folder / name)
    if missing:
        logger.warning("%s: %d tensors are in neither the base %s nor the checkpoint (left random): %s",
                       folder, len(missing), base, ", ".join(sorted(missing)[:5]))
    if kind == "lora":
        from peft import PeftModel

        if (folder / "adapter_model.bin").is_file() and not (folder / "adapter_model.safetensors").is_file():
            read_state(folder / "adapter_model.bin")  # checked here: peft's own load fails in a traceback

        with warnings.catch_warnings():  # peft reads the deprecated is_gradient_checkpointing (transformers 5)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return model


def _load_tokenizer(folder: Path, base: Path | None, model):
    """The checkpoint's tokenizer (else the base's), left-padded for generation, with ``<im_patch>`` when the
    model was trained with it; its BOS / EOS / pad ids must be the config's."""
    from llava.tokenizer import load_tokenizer

    tokenizer_dir = folder if any((folder / n).is_file() for n in ("tokenizer.model", "tokenizer.json")) else base
    tokenizer = load_tokenizer(tokenizer_dir or folder, padding_side="left")
    if getattr(model.config, "mm_use_im_patch_token", False):
        add_image_patch_token(tokenizer, model)
    _check_special_ids(model.config, tokenizer, folder)
    return tokenizer


def add_image_patch_token(tokenizer, model) -> None:
    """LLaVA's ``mm_use_im_patch_token``: ``<im_patch>`` joins the tokenizer and the embeddings grow to hold it
    (when they are shorter than the tokenizer). LLaVA-1.5 never writes it into a prompt."""
    from llava.constants import DEFAULT_IMAGE_PATCH_TOKEN

    tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))


def _vocab_size(folder: Path) -> int | None:
    try:
        return load_config(folder).vocab_size
    except FormatError:
        return None


def _from_pretrained(weights_dir: Path, config: LlavaConfig, load_kwargs: dict,
                     quiet: bool = False) -> tuple[LlavaLlamaForCausalLM, set[str]]:
    """The language model + projector from ``weights_dir`` (the CLIP tower is not loaded yet).
    Returns the model and the names of the tensors ``weights_dir`` lacked. ``quiet`` silences transformers'
    load report (the caller checks the missing tensors itself)."""
    report_logger = logging.getLogger("transformers.modeling_utils")
    level = report_logger.level
    if quiet:
        report_logger.setLevel(logging.ERROR)
    try:
        model, info = LlavaLlamaForCausalLM.from_pretrained(str(weights_dir), config=config, output_loading_info=True,
                                                            **load_kwargs)
    finally:
        report_logger.setLevel(level)
    return model, set(info["missing_keys"])


def _check_special_ids(config, tokenizer, folder: Path) -> None:
    """BOS/EOS in the config must be the tokenizer's, or generation never stops."""
    for key in ("bos_token_id", "eos_token_id"):
        ours, theirs = getattr(config, key, None), getattr(tokenizer, key, None)
        if ours is not None and theirs is not None and ours != theirs:
            raise FormatError(f"{folder}: config {key}={ours} but the tokenizer's is {theirs}")
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
