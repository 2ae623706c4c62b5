"""The proxy LM: an HF ``LlamaForCausalLM`` built from config (no weights downloaded), and its FLOPs.

With ``proxy.init=PATH`` (an HF checkpoint folder: config.json, ``*.safetensors``, the tokenizer files) every trial
starts from that checkpoint's weights instead of a random init, and its config.json sets the architecture
(``proxy.model`` is not used; the differences are logged). Its tokenizer must be the run's (the tokenizer identity
rule, ``climb_hpc/corpus/identity.py``) and its vocabulary must cover it. :func:`check_init` refuses a checkpoint
that cannot serve before anything runs (``climb_hpc.pipeline.check_config``); :func:`init_identity` is what makes
trial results valid for it (``climb_hpc/proxy/stage.py`` keeps it in the group's plan).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from climb_hpc.errors import ConfigError, InputError, one_line
from climb_hpc.estimate import train_flops_per_token  # noqa: F401 (its home is the estimates' module)

log = logging.getLogger("climb_hpc")

#: safetensors dtypes a proxy can start from (trained in fp32 master weights whatever they are stored in)
FLOAT_DTYPES = ("F32", "F16", "BF16")
#: proxy.model keys that name the architecture (what proxy.init's config.json sets instead)
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings")


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


def _from_config(config: Any, seed: int) -> Any:
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def build_model(model_cfg: Mapping[str, Any], vocab_size: int, eos_id: int, max_len: int, seed: int) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` (fp32, SDPA attention); same seed -> same weights."""
    return _from_config(llama_config(model_cfg, vocab_size, eos_id, max_len), seed)


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Parameters in all, and without the input embedding (the figure FLOP counts use)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    return {"total": total, "non_embedding": total - emb}


# ---------------------------------------------------------------- proxy.init: a pretrained proxy to continue


def init_folder(pcfg: Mapping[str, Any]) -> Optional[Path]:
    """``proxy.init`` as an absolute folder; None when trials start from a random init."""
    value = pcfg.get("init")  # a run folder saved before the key existed lacks it
    return Path(os.path.expandvars(str(value))).expanduser().resolve() if value else None


def init_config(folder: Path) -> Any:
    """The checkpoint's ``LlamaConfig`` (its config.json): the proxy's architecture when ``proxy.init`` is set."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise ConfigError(f"proxy.init={folder} has no config.json: give an HF checkpoint folder (save_pretrained: "
                          "config.json, *.safetensors and the tokenizer files)")
    try:
        conf = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"proxy.init={folder}/config.json does not load: {one_line(str(e))[:300]}") from None
    if conf.model_type != "llama":
        raise ConfigError(f"proxy.init={folder} is a {conf.model_type!r} model; proxy trials train a "
                          "LlamaForCausalLM: give a Llama checkpoint, or leave proxy.init unset")
    conf.use_cache = False
    return conf


def _expected_tensors(config: Any) -> dict[str, list[int]]:
    """Tensor name -> shape of the ``LlamaForCausalLM`` ``config`` describes (built on the meta device)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def check_weights(folder: Path, config: Any) -> None:
    """InputError, from the safetensors headers alone (nothing loaded), when the weights are not the ones
    config.json describes: a tensor missing or of another shape, or not floating point."""
    from climb_hpc.safetensors_header import tensors

    try:
        stored = tensors(folder)
    except (OSError, ValueError) as e:
        raise InputError(f"proxy.init={folder}: {e}") from None
    if not stored:
        raise InputError(f"proxy.init={folder} holds no *.safetensors weights: save the model there with "
                         "save_pretrained (safe_serialization, the default)")
    optional = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    problems = []
    for name, shape in _expected_tensors(config).items():
        t = stored.get(name)
        if t is None:
            if name not in optional:
                problems.append(f"{name} missing")
        elif t["shape"] != shape:
            problems.append(f"{name} is {t['shape']} in {t['file']}, config.json makes it {shape}")
        elif t["dtype"] not in FLOAT_DTYPES:
            problems.append(f"{name} is {t['dtype']} in {t['file']} (not {'/'.join(FLOAT_DTYPES)})")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise InputError(f"proxy.init={folder}: its weights do not match its config.json: "
                         f"{'; '.join(problems[:3])}{more}. Give a complete checkpoint saved with save_pretrained")


def vocab_cover(folder: Path) -> int:
    """The vocabulary a model needs for the tokenizer in ``folder``: its largest id + 1 (added tokens included)."""
    from tokenizers import Tokenizer

    return max(Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab(with_added_tokens=True).values()) + 1


def check_vocab(folder: Path, config: Any, needed: int) -> None:
    if int(config.vocab_size) < int(needed):
        raise ConfigError(f"proxy.init={folder} has a vocabulary of {config.vocab_size} rows, fewer than the run's "
                          f"tokenizer needs ({needed} ids): give a checkpoint trained on the run's tokenizer")


def shape_overrides(pcfg: Mapping[str, Any], config: Any) -> dict[str, tuple[Any, Any]]:
    """``proxy.model`` keys whose value proxy.init's config.json replaces: key -> (proxy.model's, the init's)."""
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
    have = {k: getattr(config, k, None) for k in SHAPE_KEYS} | {"rope_theta": rope}
    out = {}
    for k in SHAPE_KEYS:
        want = pcfg["model"].get(k) if pcfg.get("model") is not None else None
        if want is not None and have[k] is not None and type(have[k])(want) != have[k]:
            out[k] = (want, have[k])
    return out


def overrides_text(diff: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())


def check_init(cfg: Mapping[str, Any], names: list[str]) -> None:
    """Before anything runs, when the search runs with ``proxy.init``: its config.json is a Llama's, its weights
    (safetensors headers) match it, its vocabulary covers its tokenizer (which ``climb_hpc.corpus.identity``
    holds to be the run's) and ``proxy.seq_len`` fits its positions. Logs the ``proxy.model`` keys it overrides."""
    pcfg = cfg["proxy"]
    folder = init_folder(pcfg)
    if folder is None or "search" not in names:
        return
    config = init_config(folder)
    check_weights(folder, config)
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"proxy.init={folder} holds no tokenizer.json: save the run's tokenizer there "
                          "(tokenizer.save_pretrained), the one the checkpoint was trained on")
    check_vocab(folder, config, vocab_cover(folder))
    seq, limit = int(pcfg["seq_len"]), int(getattr(config, "max_position_embeddings", 0) or 0)
    if limit and seq > limit:
        raise ConfigError(f"proxy.seq_len={seq} is longer than proxy.init's max_position_embeddings={limit} "
                          f"({folder}/config.json): set proxy.seq_len to at most {limit}")
    diff = shape_overrides(pcfg, config)
    if diff:
        log.info("proxy.init=%s sets the proxy's shape; proxy.model's values are not used: %s", folder,
                 overrides_text(diff))


def init_identity(folder: Path) -> dict[str, Any]:
    """What makes a trial's result valid for its init: the folder, a hash of config.json, and each weight file's
    size, modification time and header hash (a checkpoint saved again, even with the same shapes, differs)."""
    from climb_hpc.safetensors_header import read_header

    def sha(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()[:16]

    files = []
    for f in sorted(folder.glob("*.safetensors")):
        st = f.stat()
        header = json.dumps(read_header(f), sort_keys=True).encode()
        files.append({"file": f.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "header": sha(header)})
    return {"path": str(folder), "config": sha((folder / "config.json").read_bytes()), "weights": files}


def init_shape(pcfg: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The proxy's shape for estimates (``climb_hpc.estimate.dims_of``) and where it came from: proxy.init's
    config.json when set and readable here, else ``proxy.model``."""
    folder = init_folder(pcfg)
    if folder is not None:
        try:
            return json.loads((folder / "config.json").read_text()), f"proxy.init={folder}/config.json"
        except (OSError, ValueError):
            return pcfg["model"], f"proxy.model (proxy.init={folder}/config.json not readable here)"
    return pcfg["model"], f"proxy={pcfg.get('name')} (proxy.model)"


def proxy_model(pcfg: Mapping[str, Any], vocab_size: int, eos_id: int, max_len: int, seed: int,
                weights: bool = True) -> Any:
    """A trial's model: ``proxy.init``'s weights (fp32; ``weights=False``: its architecture only, for a trial that
    resumes from its own checkpoint), else a fresh one from ``proxy.model`` and ``seed``."""
    folder = init_folder(pcfg)
    if folder is None:
        return build_model(pcfg["model"], vocab_size, eos_id, max_len, seed)
    config = init_config(folder)
    check_vocab(folder, config, vocab_size)
    if not weights:
        return _from_config(config, seed)
    check_weights(folder, config)
    return load_init(folder, config)


def load_init(folder: Path, config: Any) -> Any:
    """``LlamaForCausalLM`` with the checkpoint's weights in fp32; InputError when one is missing (it would be
    randomly initialised)."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        model, info = LlamaForCausalLM.from_pretrained(str(folder), config=config, dtype=torch.float32,
                                                       attn_implementation="sdpa", local_files_only=True,
                                                       output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing:
        raise InputError(f"proxy.init={folder}: the weights lack {', '.join(sorted(missing)[:3])}; give a complete "
                         "checkpoint saved with save_pretrained")
    return model
