"""Fine-tuning the teacher on the task (SPEC 1.2, the paper's setting): the backbone and a linear
head train together at N = 1, then the backbone is frozen again and the RevMUX adapters learn to
multiplex for *that* model.

:func:`finetune_teacher` runs AdamW for a few epochs over the raw train texts (a small learning rate
for the backbone, a larger one for the freshly initialised head), keeps the weights of the epoch
that scored best on the validation split (never the reported split, SPEC 1.4), loads them and
freezes everything again. :func:`save_finetuned_backbone` writes the backbone as a Hugging Face
folder (atomically) that :func:`depthmux.backbones.load_backbone` reloads, so every checkpoint
trained on it names it like any local model.

Dropout stays off (a :class:`FrozenBackbone` never enters train mode): the fine-tuned teacher is
the deterministic function the adapters are later trained against.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from depthmux.backbones import EncodedBatch, FrozenBackbone
from depthmux.data import ClassificationDataset
from depthmux.errors import DepthmuxError, require
from depthmux.multiplexing.heads import LinearProbeHead
from depthmux.utils.checkpoint import atomic_directory
from depthmux.utils.checks import check_float, check_int, check_seed


@dataclass
class FinetuneConfig:
    """``--teacher finetune``: AdamW on the backbone (``lr``) and the head (``head_lr``)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-5  # SPEC 1.3's BERT learning rate
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0

    def validate(self) -> FinetuneConfig:
        check_int("--finetune-epochs", self.epochs, 1)
        check_int("fine-tuning batch size", self.batch_size, 1)
        check_float("--finetune-lr", self.lr, 0.0, low_open=True)
        check_float("fine-tuning head lr", self.head_lr, 0.0, low_open=True)
        check_float("fine-tuning weight decay", self.weight_decay, 0.0)
        check_seed("--seed", self.seed)
        return self


def _batch(enc: EncodedBatch, idx: torch.Tensor) -> EncodedBatch:
    """The selected rows, cut to their longest input."""
    sub = enc.select(idx.to(enc.input_ids.device))
    S = int(sub.attention_mask.sum(-1).max())
    tt = None if sub.token_type_ids is None else sub.token_type_ids[:, :S]
    return EncodedBatch(sub.input_ids[:, :S], sub.attention_mask[:, :S], tt)


def _readout(backbone: FrozenBackbone, batch: EncodedBatch) -> torch.Tensor:
    """The teacher read-out with gradients (``FrozenBackbone.encode`` runs under no_grad): [B, S] -> [B, d]."""
    hidden = backbone.run_layers(backbone.embed(batch), batch.attention_mask, 0, backbone.num_layers)
    return backbone.readout(hidden, batch.attention_mask)


@torch.no_grad()
def _accuracy(
    backbone: FrozenBackbone, head: LinearProbeHead, enc: EncodedBatch, labels: torch.Tensor, batch_size: int
) -> float:
    correct = 0
    for idx in torch.arange(len(labels), device=labels.device).split(batch_size):
        correct += (head(_readout(backbone, _batch(enc, idx))).argmax(-1) == labels[idx]).sum().item()
    return correct / len(labels)


def finetune_teacher(
    backbone: FrozenBackbone,
    train: ClassificationDataset,
    validation: ClassificationDataset,
    cfg: FinetuneConfig,
    max_length: int | None = None,
    progress: bool = True,
) -> tuple[LinearProbeHead, dict]:
    """Fine-tune ``backbone`` (in place) and a linear head on ``train``; keep the best epoch on ``validation``.

    Returns:
        the frozen head (d -> num_labels) and ``{"history": [{epoch, loss, train_acc, val_acc}],
        "best_epoch", "val_accuracy"}``. The backbone is left frozen, holding the best epoch's weights.
    """
    cfg.validate()
    require(len(validation) >= 1, "fine-tuning the teacher needs a validation split with at least one example")
    torch.manual_seed(cfg.seed)
    head = LinearProbeHead(backbone.hidden_size, train.num_labels).to(backbone.device)
    enc, val_enc = backbone.tokenize(train.texts, max_length), backbone.tokenize(validation.texts, max_length)
    y, val_y = (torch.tensor(d.labels, device=backbone.device) for d in (train, validation))
    params = [p for p in backbone.parameters() if p.is_floating_point()]
    for p in [*params, *head.parameters()]:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [{"params": params, "lr": cfg.lr}, {"params": list(head.parameters()), "lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay,
    )
    history: list[dict] = []
    best = (-1.0, 0, None)  # (val accuracy, epoch, weights)
    try:
        for epoch in range(cfg.epochs):
            g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            loss_sum = correct = 0.0
            batches = torch.randperm(len(y), generator=g).split(cfg.batch_size)
            for idx in tqdm(
                batches, disable=not progress, leave=False, desc=f"fine-tune teacher {epoch + 1}/{cfg.epochs}"
            ):
                idx = idx.to(y.device)
                logits = head(_readout(backbone, _batch(enc, idx)))
                loss = F.cross_entropy(logits, y[idx])
                if not torch.isfinite(loss):
                    raise DepthmuxError(f"fine-tuning loss is {loss.item()} at epoch {epoch + 1}: lower --finetune-lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(-1) == y[idx]).sum().item()
            val = _accuracy(backbone, head, val_enc, val_y, cfg.batch_size)
            history.append(
                {"epoch": epoch + 1, "loss": loss_sum / len(y), "train_acc": correct / len(y), "val_acc": val}
            )
            if progress:
                tqdm.write(
                    f"  teacher fine-tuning epoch {epoch + 1}: loss {loss_sum / len(y):.3f} val acc {val:.3f}",
                    file=sys.stderr,
                )
            if val > best[0]:
                weights = {
                    "backbone": {k: v.detach().clone() for k, v in backbone.state_dict().items()},
                    "head": {k: v.detach().clone() for k, v in head.state_dict().items()},
                }
                best = (val, epoch + 1, weights)
    finally:
        backbone.freeze()
        head.freeze()
    val, best_epoch, weights = best
    backbone.load_state_dict(weights["backbone"])
    head.load_state_dict(weights["head"])
    return head, {"history": history, "best_epoch": best_epoch, "val_accuracy": val}


def save_finetuned_backbone(backbone: FrozenBackbone, directory: str | os.PathLike) -> None:
    """Write the backbone's Hugging Face model and tokenizer to ``directory`` (atomically), loadable by
    :func:`depthmux.backbones.load_backbone` as a local model folder."""
    model, tokenizer = getattr(backbone, "model", None), getattr(backbone, "tokenizer", None)
    require(
        hasattr(model, "save_pretrained") and hasattr(tokenizer, "save_pretrained"),
        f"a {type(backbone).__name__} cannot be saved as a Hugging Face folder: use --teacher probe",
    )
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
