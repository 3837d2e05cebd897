"""Configuration of recursive / relaxed-recursive / Mixture-of-Recursions decoders (SPEC 3, SPEC 4).

A :class:`RecursiveConfig` describes a LLaMA-style decoder (RMSNorm, RoPE, GQA, SwiGLU) whose
``num_hidden_layers`` effective layer positions are served by fewer unique layers:

* ``sharing="none"``: L unique layers (vanilla); ``num_recursions`` must be 1.
* ``"cycle"``: K = L / N_r unique layers applied as 1..K, 1..K, ... (SPEC 3).
* ``"sequence"``: each of the K layers repeated N_r times in place: 1,1,2,2,... (SPEC 3).
* ``"middle_cycle"`` / ``"middle_sequence"``: the first and the last layer are unique, the middle
  L - 2 positions are shared as in cycle / sequence (SPEC 4).

Optional per-loop LoRA relaxation (``relaxation_rank`` > 0, SPEC 3) and Mixture-of-Recursions
routing (``mor_router`` in {None, "expert", "token"}, SPEC 4) on the recursion block.
Every invalid combination raises a one-line :class:`~depthmux.errors.DepthmuxError`.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

from depthmux.errors import DepthmuxError

SHARING_STRATEGIES = ("none", "cycle", "sequence", "middle_cycle", "middle_sequence")
MOR_ROUTERS = (None, "expert", "token")
MOR_KV_STRATEGIES = ("recursion_wise", "share_first")
MOR_UPDATES = ("published", "gated_delta")


def default_capacities(num_recursions: int) -> list[float]:
    """Expert-choice capacity per recursion r = 1..N_r: ``(N_r - r + 1) / N_r`` (SPEC 4)."""
    return [(num_recursions - r + 1) / num_recursions for r in range(1, num_recursions + 1)]


class RecursiveConfig(PretrainedConfig):
    """Configuration for :class:`~depthmux.recursion.modeling.RecursiveForCausalLM`.

    Args (beyond the usual LLaMA ones: ``vocab_size``, ``hidden_size``, ``intermediate_size``,
    ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``rms_norm_eps``,
    ``rope_theta``, ``max_position_embeddings``, ``tie_word_embeddings``, ``initializer_range``):
        num_hidden_layers: L_eff, the effective depth (layer positions a token passes through
            when it uses every recursion).
        num_recursions: N_r >= 1, loops of the shared block.
        sharing: one of :data:`SHARING_STRATEGIES`.
        relaxation_rank: r of the per-loop LoRA on every linear of the shared layers (0 = off).
            The delta is ``B_i A_i`` with scaling 1 (SPEC 3).
        mor_router: None, ``"expert"`` (expert-choice, one router per recursion) or ``"token"``
            (token-choice, one router over N_r depths). Needs ``sharing`` "middle_cycle" or "cycle".
        mor_capacity: expert-choice capacity per recursion, each in (0, 1]; default
            ``(N_r - r + 1) / N_r``.
        mor_alpha: router output scale alpha (default 0.1 expert, 1.0 token).
        mor_kv: ``"recursion_wise"`` or ``"share_first"`` KV caching (SPEC 4).
        mor_bce_coef, mor_balance_coef, mor_z_loss_coef: auxiliary loss weights (defaults 0.001;
            0.1; 1e-5 for token-choice and 0.0 for expert-choice). The router BCE is summed over
            recursions (as in the public MoR code). At the tiny CPU scale of docs/lm_results.md the
            SPEC default 0.001 leaves the causal rule at 93-95% agreement with top-k; 0.1 reaches
            >= 95% at a held-out NLL cost (measured there).
        mor_causal_inference: in eval mode, expert-choice routes with the causal rule
            ``sigmoid(logit) > 0.5`` instead of top-k (default True).
        mor_causal_thresholds: expert-choice only, per-recursion logit thresholds of the causal rule
            (continue iff ``logit > threshold_r``; None = all 0, i.e. ``sigmoid(logit) > 0.5``). Set by
            :func:`depthmux.recursion.calibrate_causal_thresholds` so the depth distribution at decoding
            time matches the capacities (issue 19); training (top-k) ignores them.
        mor_aux_router: expert-choice only, the MoR paper's alternative to the auxiliary loss:
            a second linear router per recursion, trained only by the BCE (on detached hidden
            states, so it never changes the LM or the main router), whose logit replaces the main
            router's in the causal decoding rule. Default False (SPEC 4: auxiliary loss).
        mor_update: how a recursion's output re-enters the residual stream (one of
            :data:`MOR_UPDATES`; ``f(H) = block(H)`` is the shared block's full output):
            ``"published"`` (default, the paper and its public code, SPEC 4): expert-choice
            ``H + g * f(H)``; token-choice ``H^1 + w * f^{(d)}(H^1)``. ``"gated_delta"`` (this
            project's earlier form): expert-choice ``H + g * (f(H) - H)``; token-choice un-gated
            ``f(H)`` before a token's last recursion and ``H + w * (f(H) - H)`` at it. A config file
            written before this field existed is read as ``"gated_delta"`` (:meth:`from_dict`).
            A gate-only control (no routing, only the gate) is ``mor_capacity=[1.0] * N_r``.
    """

    model_type = "depthmux_recursive"

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 256,
        intermediate_size: int = 704,
        num_hidden_layers: int = 8,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        num_recursions: int = 1,
        sharing: str = "none",
        relaxation_rank: int = 0,
        mor_router: str | None = None,
        mor_capacity: list[float] | None = None,
        mor_alpha: float | None = None,
        mor_kv: str = "recursion_wise",
        mor_bce_coef: float = 0.001,
        mor_balance_coef: float = 0.1,
        mor_z_loss_coef: float | None = None,
        mor_causal_inference: bool = True,
        mor_aux_router: bool = False,
        mor_update: str = "published",
        mor_causal_thresholds: list[float] | None = None,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        if head_dim is None and num_attention_heads and hidden_size % num_attention_heads == 0:
            head_dim = hidden_size // num_attention_heads
        self.head_dim = head_dim
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.num_recursions = num_recursions
        self.sharing = sharing
        self.relaxation_rank = relaxation_rank
        self.mor_router = mor_router
        if mor_capacity is None and mor_router == "expert" and isinstance(num_recursions, int) and num_recursions >= 1:
            mor_capacity = default_capacities(num_recursions)
        self.mor_capacity = list(mor_capacity) if mor_capacity is not None else None
        if mor_alpha is None:
            mor_alpha = 1.0 if mor_router == "token" else 0.1
        self.mor_alpha = mor_alpha
        self.mor_kv = mor_kv
        self.mor_bce_coef = mor_bce_coef
        self.mor_balance_coef = mor_balance_coef
        if mor_z_loss_coef is None:
            mor_z_loss_coef = 1e-5 if mor_router == "token" else 0.0
        self.mor_z_loss_coef = mor_z_loss_coef
        self.mor_causal_inference = mor_causal_inference
        self.mor_aux_router = mor_aux_router
        self.mor_update = mor_update
        self.mor_causal_thresholds = list(mor_causal_thresholds) if mor_causal_thresholds is not None else None
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_recursion()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As ``PretrainedConfig.from_dict``; a MoR config saved before ``mor_update`` existed was trained
        with the ``"gated_delta"`` rule, so it keeps that rule instead of the new default."""
        if config_dict.get("mor_router") is not None and "mor_update" not in config_dict:
            config_dict = {**config_dict, "mor_update": "gated_delta"}
        return super().from_dict(config_dict, **kwargs)

    # ------------------------------------------------------------------ validation
    def validate_recursion(self) -> None:
        """Raise a one-line :class:`DepthmuxError` for any inconsistent setting."""
        L, n = self.num_hidden_layers, self.num_recursions
        if not isinstance(L, int) or L < 1:
            raise DepthmuxError(f"num_hidden_layers must be a positive integer, got {L!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise DepthmuxError(f"num_recursions must be an integer >= 1, got {n!r}")
        if self.sharing not in SHARING_STRATEGIES:
            raise DepthmuxError(
                f"unknown sharing strategy {self.sharing!r}; choose one of {', '.join(SHARING_STRATEGIES)}"
            )
        if self.sharing == "none":
            if n != 1:
                raise DepthmuxError(f"sharing='none' (vanilla) needs num_recursions=1, got {n}")
        elif self.sharing in ("cycle", "sequence"):
            if L % n != 0:
                raise DepthmuxError(
                    f"sharing={self.sharing!r}: num_recursions={n} does not divide num_hidden_layers={L}"
                )
        else:
            if 2 + n > L or (L - 2) % n != 0:
                raise DepthmuxError(
                    f"sharing={self.sharing!r}: num_recursions={n} does not divide the {L - 2} middle layers "
                    f"of num_hidden_layers={L} (need L - 2 >= N_r and a multiple of it)"
                )
        if self.hidden_size % self.num_attention_heads != 0 and self.head_dim is None:
            raise DepthmuxError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise DepthmuxError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if not isinstance(self.relaxation_rank, int) or self.relaxation_rank < 0:
            raise DepthmuxError(f"relaxation_rank must be an integer >= 0, got {self.relaxation_rank!r}")
        if self.relaxation_rank > 0 and self.sharing == "none":
            raise DepthmuxError("relaxation_rank > 0 needs a shared block (sharing != 'none')")
        if self.mor_router not in MOR_ROUTERS:
            raise DepthmuxError(f"unknown mor_router {self.mor_router!r}; choose None, 'expert' or 'token'")
        if self.mor_kv not in MOR_KV_STRATEGIES:
            raise DepthmuxError(f"unknown mor_kv {self.mor_kv!r}; choose 'recursion_wise' or 'share_first'")
        if self.mor_kv == "share_first" and self.sharing not in ("middle_cycle", "cycle"):
            raise DepthmuxError(f"mor_kv='share_first' needs sharing 'middle_cycle' or 'cycle', got {self.sharing!r}")
        if self.mor_router is not None and self.sharing not in ("middle_cycle", "cycle"):
            raise DepthmuxError(
                f"mor_router={self.mor_router!r} needs sharing 'middle_cycle' or 'cycle', got {self.sharing!r}"
            )
        if self.mor_update not in MOR_UPDATES:
            raise DepthmuxError(f"unknown mor_update {self.mor_update!r}; choose one of {', '.join(MOR_UPDATES)}")
        if self.mor_aux_router and self.mor_router != "expert":
            raise DepthmuxError("mor_aux_router needs mor_router='expert'")
        if self.mor_capacity is not None:
            caps = self.mor_capacity
            if len(caps) != n:
                raise DepthmuxError(f"mor_capacity has {len(caps)} entries, expected num_recursions={n}")
            for c in caps:
                number = isinstance(c, (int, float)) and not isinstance(c, bool)
                if not number or math.isnan(c) or not 0.0 < float(c) <= 1.0:
                    raise DepthmuxError(f"mor_capacity entries must be in (0, 1], got {c!r}")

        if self.mor_causal_thresholds is not None:
            if self.mor_router != "expert":
                raise DepthmuxError("mor_causal_thresholds needs mor_router='expert'")
            if len(self.mor_causal_thresholds) != n:
                raise DepthmuxError(
                    f"mor_causal_thresholds has {len(self.mor_causal_thresholds)} entries, expected num_recursions={n}"
                )
            for t in self.mor_causal_thresholds:
                if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
                    raise DepthmuxError(f"mor_causal_thresholds entries must be finite numbers, got {t!r}")

    def causal_threshold(self, r: int) -> float:
        """The causal rule's logit threshold at recursion ``r`` (0-based; 0.0 unless calibrated)."""
        return float(self.mor_causal_thresholds[r]) if self.mor_causal_thresholds is not None else 0.0

    # ------------------------------------------------------------------ layout helpers
    @property
    def num_prefix_layers(self) -> int:
        """Unique layers before the shared block (1 for middle_*, else 0)."""
        return 1 if self.sharing.startswith("middle_") else 0

    @property
    def num_suffix_layers(self) -> int:
        """Unique layers after the shared block (1 for middle_*, else 0)."""
        return 1 if self.sharing.startswith("middle_") else 0

    @property
    def block_size(self) -> int:
        """K, unique layers in the shared block (L for 'none')."""
        if self.sharing == "none":
            return self.num_hidden_layers
        return (self.num_hidden_layers - self.num_prefix_layers - self.num_suffix_layers) // self.num_recursions

    @property
    def num_unique_layers(self) -> int:
        """Number of distinct decoder-layer modules."""
        return self.num_prefix_layers + self.block_size + self.num_suffix_layers

    def layer_schedule(self) -> list[tuple[int, int]]:
        """For every effective position p = 0..L-1: ``(unique_layer_index, loop_index)``.

        ``loop_index`` is the recursion (0-based) within the shared block, or -1 for a unique
        (unshared) layer. E.g. L=6, N_r=2: cycle -> (0,0),(1,0),(2,0),(0,1),(1,1),(2,1);
        sequence -> (0,0),(0,1),(1,0),(1,1),(2,0),(2,1).
        """
        L, n, K = self.num_hidden_layers, self.num_recursions, self.block_size
        if self.sharing == "none":
            return [(p, -1) for p in range(L)]
        pre = self.num_prefix_layers
        out = [(0, -1)] if pre else []
        for m in range(L - pre - self.num_suffix_layers):
            if self.sharing.endswith("cycle"):
                out.append((pre + m % K, m // K))
            else:
                out.append((pre + m // n, m % n))
        if self.num_suffix_layers:
            out.append((pre + K, -1))
        return out

    def capacities(self) -> list[float]:
        """Expert-choice capacities per recursion (configured or the SPEC 4 default)."""
        return list(self.mor_capacity) if self.mor_capacity is not None else default_capacities(self.num_recursions)
