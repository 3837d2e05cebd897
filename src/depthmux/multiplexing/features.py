"""The prefill feature cache, a RevMUX component (SPEC 1.1 step 1, 1.3).

The backbone never changes, so each example's prefill states ``h_k = Encoder_{0:l}(X_k)`` and
the teacher read-out are computed once (in length-sorted batches, under no_grad) and reused by
every epoch, every N and every mixer.

:meth:`FeatureCache.batch` right-pads the selected examples with zeros to their longest one:
exactly what ``MultiplexedClassifier.forward_from_prefill`` makes of a real tokenised batch
(it zeroes padded positions and cuts to the longest input), so the cached and the real path
are one computation (SPEC 1.1, last paragraph).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from depthmux.backbones import FrozenBackbone
from depthmux.data import ClassificationDataset


@dataclass
class FeatureCache:
    """Per-example prefill states for several l (``prefill[l][i]``: unpadded [S_i, d]), the
    teacher read-outs [M, d] and the labels [M]. States and read-outs live on the backbone's device,
    the labels on the CPU (where the scores are counted)."""

    prefill: dict[int, list[torch.Tensor]]
    teacher: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, layer: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad the selected examples' layer-``layer`` states: -> hidden [B, S, d], mask [B, S]."""
        seqs = [self.prefill[layer][i] for i in index.tolist()]
        S = max(s.shape[0] for s in seqs)
        hidden = seqs[0].new_zeros(len(seqs), S, seqs[0].shape[1])
        mask = torch.zeros(len(seqs), S, dtype=torch.long, device=hidden.device)
        for j, s in enumerate(seqs):
            hidden[j, : s.shape[0]] = s
            mask[j, : s.shape[0]] = 1
        return hidden, mask


@torch.no_grad()
def build_feature_cache(
    backbone: FrozenBackbone,
    data: ClassificationDataset,
    layers: list[int],
    batch_size: int = 128,
    max_length: int | None = None,
    desc: str = "caching",
) -> FeatureCache:
    """Run the frozen backbone once over ``data`` and keep the states at each layer in ``layers``."""
    for l in layers:
        backbone.check_prefill(l)
    enc = backbone.tokenize(data.texts, max_length=max_length)  # validates every text once
    lengths = enc.attention_mask.sum(-1).cpu()
    order = torch.argsort(lengths, descending=True)
    prefill: dict[int, list[torch.Tensor | None]] = {l: [None] * len(data) for l in layers}
    teacher = torch.zeros(len(data), backbone.hidden_size, device=backbone.device)
    wanted = sorted(set(layers))
    for start in tqdm(range(0, len(data), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[start : start + batch_size]
        S = int(lengths[idx].max())
        sub = enc.select(idx.to(enc.input_ids.device))
        sub.input_ids, sub.attention_mask = sub.input_ids[:, :S], sub.attention_mask[:, :S]
        if sub.token_type_ids is not None:
            sub.token_type_ids = sub.token_type_ids[:, :S]
        h = backbone.embed(sub)
        done = 0
        for l in wanted:
            h = backbone.run_layers(h, sub.attention_mask, done, l)
            done = l
            for j, i in enumerate(idx.tolist()):
                prefill[l][i] = h[j, : int(lengths[i])].clone()
        h = backbone.run_layers(h, sub.attention_mask, done, backbone.num_layers)
        teacher[idx.to(teacher.device)] = backbone.readout(h, sub.attention_mask)
    return FeatureCache(prefill, teacher, torch.tensor(data.labels))  # type: ignore[arg-type]
