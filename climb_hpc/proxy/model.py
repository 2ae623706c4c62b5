"""The proxy LM: an HF ``LlamaForCausalLM`` built from config (no weights downloaded), and its FLOPs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from climb_hpc.estimate import train_flops_per_token  # noqa: F401 (its home is the estimates' module)


def llama_config(model_cfg: Mapping[str, Any], vocab_size: int, eos_id: int, max_len: int) -> Any:
    """A ``LlamaConfig`` from ``proxy.model``; the vocabulary and EOS come from the run's tokenizer."""
    from transformers import LlamaConfig

    m = dict(model_cfg)
    return LlamaConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(m["hidden_size"]),
        intermediate_size=int(m["intermediate_size"]),
        num_hidden_layers=int(m["num_hidden_layers"]),
        num_attention_heads=int(m["num_attention_heads"]),
        num_key_value_heads=int(m.get("num_key_value_heads") or m["num_attention_heads"]),
        head_dim=int(m.get("head_dim") or m["hidden_size"] // m["num_attention_heads"]),
        max_position_embeddings=int(max_len),
        rms_norm_eps=float(m.get("rms_norm_eps", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(m.get("rope_theta", 10000.0))},
        initializer_range=float(m.get("initializer_range", 0.02)),
        tie_word_embeddings=bool(m.get("tie_word_embeddings", True)),
        bos_token_id=int(eos_id), eos_token_id=int(eos_id), pad_token_id=int(eos_id),
        use_cache=False,
    )


def build_model(model_cfg: Mapping[str, Any], vocab_size: int, eos_id: int, max_len: int, seed: int) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` (fp32, SDPA attention); same seed -> same weights."""
    from transformers import LlamaForCausalLM

    config = llama_config(model_cfg, vocab_size, eos_id, max_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Parameters in all, and without the input embedding (the figure FLOP counts use)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    return {"total": total, "non_embedding": total - emb}
