"""Tiny on-disk models for the serving and ``mux predict`` tests: a random-initialised BERT folder with
the MiniLM tokenizer, RevMUX (N = 2) and teacher checkpoints on it, and a tiny LLaMA folder for the
engine (its tokenizer is the packaged SmolLM2's, so chat templates and text decoding work)."""

from __future__ import annotations

from pathlib import Path

from tiny_families import save_family


def tiny_classifiers(root: Path, tokenizer, ns=(2,)) -> dict[str, Path]:
    """``{"teacher": dir, "n2": dir, ...}``: checkpoints (labels "neg", "pos") on one tiny BERT folder."""
    import torch

    from depthmux.backbones import load_backbone
    from depthmux.multiplexing import LinearProbeHead, MultiplexedClassifier, MuxConfig

    folder = save_family("bert", root / "tiny-bert", tokenizer)
    backbone = load_backbone(folder)
    torch.manual_seed(0)
    head = LinearProbeHead(backbone.hidden_size, 2)
    with torch.no_grad():  # a zero-initialised probe would predict one label for everything
        for p in head.parameters():
            p.normal_(0.0, 1.0)
    out = {}
    for n in ns:
        config = MuxConfig(n=n, backbone=str(folder), readout=backbone.readout_mode, label_names=["neg", "pos"])
        model = MultiplexedClassifier(config, backbone, head)
        with torch.no_grad():  # untrained adapters, but not the near-identity of their initialisation
            for p in model.trainable_state_dict().values():
                p.add_(torch.randn_like(p) * 0.2)
        model.save_pretrained(root / f"n{n}")
        out[f"n{n}"] = root / f"n{n}"
    model.teacher().save_pretrained(root / "teacher")
    out["teacher"] = root / "teacher"
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``depthmux serve ARGS`` in a subprocess on a free loopback port; :meth:`stop` ends it (by its pid)."""

    def __init__(self, args: list[str], log_path: Path, timeout_s: float = 180.0) -> None:
        import os
        import subprocess
        import sys

        from depthmux.serve import wait_until_healthy

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        cmd = [sys.executable, "-m", "depthmux", "serve", "--port", str(self.port), "--threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        why = wait_until_healthy(self.url, self.proc, timeout_s)
        if why is not None:
            self.log.flush()
            self.stop()
            raise RuntimeError(f"server {why}: {Path(log_path).read_text()[-2000:]}")

    def metric(self, name: str, **labels) -> float:
        """The value of one sample of ``/metrics`` (0.0 when absent)."""
        import httpx

        text = httpx.get(self.url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, value = line.rsplit(" ", 1)
            metric, _, rest = key.partition("{")
            if metric != name:
                continue
            have = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p) if rest else {}
            if all(have.get(k) == f'"{v}"' for k, v in labels.items()):
                return float(value)
        return 0.0

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def tiny_llama_folder(root: Path) -> Path:
    """A random-initialised 2-layer LLaMA (d = 32, context 512) with the packaged SmolLM2 tokenizer (its
    vocabulary and chat template), saved as a loadable folder."""
    from transformers import AutoTokenizer

    from conftest import build_tiny_llama
    from depthmux.assets import smollm2_path

    tok = AutoTokenizer.from_pretrained(smollm2_path())
    model = build_tiny_llama(
        vocab_size=len(tok),
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        seed=0,
    )
    folder = root / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_early_exit_folder(root: Path, exit_layer: int = 3, layers: int = 4) -> Path:
    """A run folder as ``depthmux ee train`` leaves it (``<root>/ee-run/model``): a random-initialised
    LLaMA (context 512) with a shallow exit after ``exit_layer`` layers (``EarlyExitForCausalLM``) and the
    packaged SmolLM2 tokenizer. Its LM head is scaled so that confidences spread and the shallow token
    agrees with the deep one only sometimes (self-speculative drafts are both accepted and rejected)."""
    import torch
    from transformers import AutoTokenizer

    from conftest import build_tiny_llama
    from depthmux.assets import smollm2_path
    from depthmux.early_exit import from_llama

    tok = AutoTokenizer.from_pretrained(smollm2_path())
    llama = build_tiny_llama(
        vocab_size=len(tok),
        max_position_embeddings=512,
        num_hidden_layers=layers,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        seed=0,
    )
    model = from_llama(llama, exit_layer=exit_layer)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    folder = root / "ee-run" / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder.parent
