"""Raw Hugging Face loading of a model folder or a packaged asset: the one place that calls
``from_pretrained`` on transformers model classes (``depthmux.lm.loading`` reuses
:func:`load_hf_model` for causal LMs, as it sits above this package).

* :func:`resolve_model_path`: "minilm" / "smollm2" (packaged assets, SPEC 6) or a local folder;
* :func:`load_hf_model`: a folder -> a transformers model in float32, with SDPA attention where
  the architecture has it and eager attention where it does not (MPNet, DeBERTa-v2, ...);
* :func:`load_hf_tokenizer`: its tokenizer (:func:`has_tokenizer`: whether the folder holds one).

Every load runs :func:`depthmux.utils.checks.check_model_folder` first, so a broken folder (a bad or
missing ``config.json``, a truncated or foreign weight file) is one line naming the file, whatever
command loads it. A folder without tokenizer files is refused rather than given a substitute: no
other tokenizer is known to match its embeddings. Failures are one :class:`DepthmuxError` line.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from depthmux.assets import minilm_path, smollm2_path
from depthmux.errors import DepthmuxError
from depthmux.utils.checks import check_model_folder

DEFAULT_MODEL = "minilm"  # resolves to the packaged MiniLM, see resolve_model_path
#: names of packaged models (SPEC 6) -> the function giving their folder
PACKAGED_MODELS = {"minilm": minilm_path, "smollm2": smollm2_path}
#: files that hold a tokenizer's vocabulary: a folder needs one of them for its tokenizer to load
#: (transformers builds an empty tokenizer from a config alone, which turns every word into [UNK])
TOKENIZER_VOCAB_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "spm.model",
    "sentencepiece.bpe.model",
)


def is_packaged(model: str | os.PathLike | None) -> bool:
    return model is None or str(model) in PACKAGED_MODELS


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """``None``/"minilm" -> the packaged MiniLM, "smollm2" -> the packaged SmolLM2-135M (converted
    once from GGUF and cached); otherwise an existing local folder holding config.json."""
    if is_packaged(model):
        return PACKAGED_MODELS[str(model or DEFAULT_MODEL)]()
    path = Path(model)
    if not path.is_dir():
        raise DepthmuxError(
            f"model path not found: {path} (give a local folder with config.json, or one of "
            f"{', '.join(repr(m) for m in PACKAGED_MODELS)} for a packaged model)"
        )
    if not (path / "config.json").is_file():
        raise DepthmuxError(f"model path {path} has no config.json: not a Hugging Face model folder")
    return path


def model_name(model: str | os.PathLike | None) -> str:
    """The string that reloads ``model``: a packaged name as is, a folder as its absolute path."""
    return str(model or DEFAULT_MODEL) if is_packaged(model) else str(Path(model).resolve())


def load_hf_model(path: str | os.PathLike, auto_class=None, dtype: torch.dtype = torch.float32, what: str = "model"):
    """``auto_class.from_pretrained(path)`` (default ``AutoModel``) with SDPA attention, or eager
    attention for architectures that have no SDPA implementation in transformers; a failure is one
    line, "cannot load {what} from {path}: ..."."""
    from safetensors import SafetensorError
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    check_model_folder(path)
    auto_class = auto_class or AutoModel
    hf_logging.disable_progress_bar()  # a sub-second bar per load is noise in our own progress output
    try:
        try:
            return auto_class.from_pretrained(str(path), dtype=dtype, attn_implementation="sdpa")
        except ValueError as e:
            if "sdpa" not in str(e).lower() and "scaled_dot_product" not in str(e).lower():
                raise
            return auto_class.from_pretrained(str(path), dtype=dtype, attn_implementation="eager")
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DepthmuxError(f"cannot load {what} from {path}: {first}") from None


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds one of :data:`TOKENIZER_VOCAB_FILES`."""
    return any((Path(path) / name).is_file() for name in TOKENIZER_VOCAB_FILES)


def load_hf_tokenizer(path: str | os.PathLike):
    """The tokenizer saved in ``path``; one line if there is none (no substitute is guessed)."""
    from transformers import AutoTokenizer

    if not has_tokenizer(path):
        raise DepthmuxError(
            f"{path} has no tokenizer (none of {', '.join(TOKENIZER_VOCAB_FILES)}): copy the tokenizer "
            "files of the model it comes from into it"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DepthmuxError(f"cannot load the tokenizer of {path}: {first}") from None
