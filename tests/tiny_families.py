"""Tiny random-initialised models of every backbone family (d = 48, 4 heads), shared by the
backbone and multiplexing tests. All use the packaged MiniLM's WordPiece tokenizer (pad id 0)."""

from __future__ import annotations

import torch

SIZE = dict(hidden_size=48, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)


def hf_model(family: str, vocab_size: int, layers: int = 3, seed: int = 0):
    """A random-initialised transformers model of ``family`` (what ``load_backbone`` would load)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, num_hidden_layers=layers, **SIZE)
    if family == "bert":
        return tf.BertModel(tf.BertConfig(**common), add_pooling_layer=False)
    if family == "roberta":
        return tf.RobertaModel(tf.RobertaConfig(pad_token_id=0, **common), add_pooling_layer=False)
    if family == "electra":
        return tf.ElectraModel(tf.ElectraConfig(embedding_size=24, pad_token_id=0, **common))
    if family == "mpnet":
        model = tf.MPNetModel(tf.MPNetConfig(pad_token_id=0, **common), add_pooling_layer=False)
        with torch.no_grad():  # a bias large enough that leaving it out shows
            model.encoder.relative_attention_bias.weight.normal_(0.0, 1.0)
        return model
    if family == "deberta-v2":
        cfg = tf.DebertaV2Config(
            pad_token_id=0,
            type_vocab_size=2,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=16,
            max_relative_positions=-1,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            conv_kernel_size=3,
            position_biased_input=False,
            **common,
        )
        model = tf.DebertaV2Model(cfg)
        with torch.no_grad():
            model.encoder.rel_embeddings.weight.normal_(0.0, 1.0)
        return model
    if family == "modernbert":
        cfg = tf.ModernBertConfig(
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
            cls_token_id=101,
            sep_token_id=102,
            global_attn_every_n_layers=2,
            local_attention=4,
            **common,
        )
        return tf.ModernBertModel(cfg)
    if family == "llama":
        cfg = tf.LlamaConfig(num_key_value_heads=2, pad_token_id=0, bos_token_id=101, eos_token_id=102, **common)
        return tf.LlamaForCausalLM(cfg)
    if family == "qwen2":
        cfg = tf.Qwen2Config(
            num_key_value_heads=2,
            pad_token_id=0,
            use_sliding_window=True,
            sliding_window=3,
            max_window_layers=1,
            layer_types=["full_attention", "sliding_attention", "sliding_attention"][:layers],
            **common,
        )
        return tf.Qwen2ForCausalLM(cfg)
    if family == "t5":
        cfg = tf.T5Config(
            vocab_size=vocab_size,
            d_model=48,
            d_kv=12,
            d_ff=64,
            num_layers=layers,
            num_decoder_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=102,
        )
        return tf.T5ForConditionalGeneration(cfg)
    raise ValueError(family)


ENCODER_FAMILIES = ["bert", "roberta", "electra", "mpnet", "deberta-v2", "modernbert"]
DECODER_FAMILIES = ["llama", "qwen2"]
ALL_FAMILIES = [*ENCODER_FAMILIES, *DECODER_FAMILIES, "t5"]


def tiny_backbone_of(family: str, tokenizer, layers: int = 3, seed: int = 0, prompt: str | None = None):
    """A :class:`~depthmux.backbones.FrozenBackbone` around :func:`hf_model` (no files)."""
    from depthmux.backbones import BACKBONE_FAMILIES

    model = hf_model(family, tokenizer.vocab_size, layers, seed).eval()
    cls = BACKBONE_FAMILIES[family].backbone_class
    return cls(model, tokenizer, cls.readout_modes[0], name=f"tiny-{family}", prompt=prompt)


def save_family(family: str, folder, tokenizer, layers: int = 3):
    """Write a tiny ``family`` model and the tokenizer into ``folder`` (a loadable HF folder)."""
    hf_model(family, tokenizer.vocab_size, layers).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
