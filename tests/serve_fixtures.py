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
