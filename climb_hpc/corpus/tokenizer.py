"""The tokenizer of the ``tokenize`` stage: a byte-level BPE trained with ``tokenizers``, or a given HF one.

Either way it is saved with ``save_pretrained`` (so ``AutoTokenizer`` / ``PreTrainedTokenizerFast``
load it) and used through its ``tokenizer.json`` with the raw ``tokenizers`` library (fast, and no
special tokens added: the stage appends the EOS id itself). Byte-level BPE with no normalizer and no
prefix space round-trips exactly: ``decode(encode(text)) == text``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

EOS = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int, length: int | None = None) -> Any:
    """A byte-level BPE (GPT-2 style pre-tokenization, all 256 bytes in the alphabet) with ``EOS`` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency), special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def save_trained(tok: Any, out: Union[str, os.PathLike]) -> None:
    """Save a trained ``tokenizers.Tokenizer`` as an HF fast tokenizer folder."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None,
                                 pad_token=EOS, clean_up_tokenization_spaces=False)
    hf.save_pretrained(str(out))


def save_pretrained_copy(path: str, out: Union[str, os.PathLike]) -> dict[str, Any]:
    """Copy a local HF tokenizer into ``out``; adds ``EOS`` as a special token when it has no eos token."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"tokenize.tokenizer={path}: a fast tokenizer (tokenizer.json) is required")
    added = False
    if hf.eos_token_id is None:
        hf.add_special_tokens({"eos_token": EOS})
        added = True
    hf.save_pretrained(str(out))
    return {"eos_added": added}


def load_fast(directory: Union[str, os.PathLike]) -> Any:
    """The raw ``tokenizers.Tokenizer`` of a saved folder."""
    from tokenizers import Tokenizer

    f = Path(directory) / "tokenizer.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f} is missing: the tokenize stage has not trained or copied its tokenizer")
    return Tokenizer.from_file(str(f))


def describe(directory: Union[str, os.PathLike]) -> dict[str, Any]:
    """vocab size (added tokens included), the EOS id, the token dtype and the vocabulary's fingerprint of a
    saved tokenizer."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    vocab = len(hf)
    return {"vocab_size": vocab, "eos_token": hf.eos_token, "eos_id": int(hf.eos_token_id),
            "dtype": token_dtype(vocab), "fingerprint": identity(directory)["fingerprint"]}


def identity(directory: Union[str, os.PathLike]) -> dict[str, Any]:
    """``{"vocab_size", "fingerprint"}`` of the tokenizer in a folder (its ``tokenizer.json``): the fingerprint
    is a sha256 of every (id, token) pair, added tokens included, so two tokenizers that map any text to other
    ids differ in it. A folder without ``tokenizer.json`` raises FileNotFoundError."""
    import hashlib

    from tokenizers import Tokenizer

    f = Path(directory) / "tokenizer.json"
    if not f.is_file():
        raise FileNotFoundError(f"{directory} holds no tokenizer.json (an HF fast tokenizer)")
    vocab = Tokenizer.from_file(str(f)).get_vocab(with_added_tokens=True)
    digest = hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in sorted(vocab.items(), key=lambda kv: kv[1])).encode())
    return {"vocab_size": len(vocab), "fingerprint": "sha256:" + digest.hexdigest()[:16]}


def identity_text(ident: dict[str, Any]) -> str:
    return f"vocabulary {ident['vocab_size']:,}, {ident['fingerprint']}"


def token_dtype(vocab_size: int) -> str:
    """Megatron's rule (its ``optimal_dtype``, which its readers expect): uint16 below 65500 ids, else int32."""
    from climb_hpc.corpus.store import token_dtype as megatron_dtype

    return str(megatron_dtype(vocab_size))
