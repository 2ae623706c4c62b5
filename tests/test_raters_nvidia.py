"""NVIDIA's CLIMB fastText classifiers (``quality=nvidia_climb``): the published preprocessing, labels -1..5 and
top-label score, five axes through the quality store into refine, and the memory a task asks for.

The models are tiny ones trained here in that format (``climb-hpc train-raters convention=nvidia_climb``) on
docs of the built-in corpus generator (another seed than the runs'), one label a domain and axis.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import fasttext
import numpy as np
import pytest
import zarr

from climb_hpc.cli import main as cli_main
from climb_hpc.clusters import quality, refine
from climb_hpc.clusters.raters import (
    NVIDIA_AXES,
    FastTextRater,
    HeuristicRater,
    label_value,
    load_rater,
    nvidia_preprocess,
)
from climb_hpc.corpus.builtin import DOMAINS, generate
from climb_hpc.pipeline import run_pipeline
from climb_hpc.rundir import RunDir, read_json
from climb_hpc.stage import stage_resources
from tests.conftest import make_cfg

#: a label a domain on the quality axis; the other axes the same but cultural_value (arithmetic and code swapped),
#: so the columns differ. Reference thresholds (advertisement >= 2, the rest >= 1) keep levels >= 2; the paper's
#: (quality >= 3) keeps levels >= 3.
LEVEL = {"arithmetic": 5, "code": 4, "recipes": 3, "weather": 2, "chemistry": 1, "legal": 0, "sports": -1}
CULTURAL = {**LEVEL, "arithmetic": 4, "code": 5}
PRESET = ("quality=nvidia_climb",)
RUN = ("corpus.builtin.docs_per_domain=15", "embed.rows_per_shard=32", "embed.chunk_rows=16", "embed.cpus=1",
       "pipeline.stages=[ingest,embed,quality,kmeans,assign,refine]", "clusters.kmeans.k_init=21",
       "clusters.kmeans.min_points_per_centroid=3", "clusters.kmeans.cpus=1")
N_DOCS = 105


def _labels(domain: str) -> dict[str, int]:
    return {a: (CULTURAL if a == "cultural_value" else LEVEL)[domain] for a in NVIDIA_AXES}


@pytest.fixture(scope="module")
def nvidia_models(tmp_path_factory) -> Path:
    """Five NVIDIA-format models (best_model_<axis>.bin, labels -1..5) trained through the CLI on 280 docs."""
    tmp = tmp_path_factory.mktemp("nvidia")
    docs = [{"text": generate(d, i, 7)["text"], **_labels(d)} for d in DOMAINS for i in range(40)]
    data = tmp / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in docs))
    out = tmp / "nemotron-climb-fasttext-classifiers"
    assert cli_main(["train-raters", f"input={data}", f"output={out}", "convention=nvidia_climb", "epoch=15",
                     "dim=16", "wordNgrams=1", "bucket=10000"]) == 0
    return out


# ---------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("text, expected", [
    ("Hello, World!\nNew line.", "hello , world ! <newline>new line ."),
    ("a\n\nb", "a<newline><newline>b"),                                   # newlines are not merged, nor spaced
    ("It's (really) 3/4 done...", "it ' s ( really ) 3 / 4 done . . ."),
    ("x?y:z;w-v\"q\"", "x ? y:z;w-v\"q\""),                               # only . ! ? , ' / ( ) are spaced
    ("tabs\tand\r\nCRLF  spaces\u00a0nbsp", "tabs and <newline>crlf spaces nbsp"),  # \r, tab, NBSP: whitespace
    ("Ünïcödé ÉCOLE — naïve “Quotes” ½", "ünïcödé école — naïve “quotes” ½"),
    ("İstanbul", "i\u0307stanbul"),                                       # Python's str.lower()
    ("  \n  ", "<newline>"),
    ("", ""),
])
def test_nvidia_preprocess_on_tricky_text(text, expected):
    assert nvidia_preprocess(text) == expected
    assert "\n" not in nvidia_preprocess(text)  # one fastText line, whatever the input


# ---------------------------------------------------------------- the rater


def test_train_raters_writes_nvidias_file_names_and_labels(nvidia_models):
    names = sorted(p.name for p in nvidia_models.iterdir())
    assert names == sorted([f"best_model_{a}.bin" for a in NVIDIA_AXES] + ["raters.json"])
    info = read_json(nvidia_models / "raters.json")
    assert info["convention"] == "nvidia_climb" and set(info["axes"]) == set(NVIDIA_AXES)
    m = fasttext.load_model(str(nvidia_models / "best_model_cultural_value.bin"))
    assert sorted(m.labels, key=label_value) == [f"__label__{v}" for v in range(-1, 6)]


TRICKY = ["RECIPE:\nMix 2 cups (flour) and sugar, then bake!", "Le théorème — «naïve» proof/step 3.\n\nDone?",
          "It's   a\ttab\r\nand CRLF", ""]


def test_a_doc_scores_as_fasttext_predicts_its_preprocessed_text(nvidia_models):
    """The recipe's score: model.predict([preprocess_text(text)]) -> its top label, as a number."""
    texts = [generate(d, i, 11)["text"] for d in DOMAINS for i in range(3)] + TRICKY
    rater = load_rater(nvidia_models, "nvidia_climb")
    assert isinstance(rater, FastTextRater) and rater.axes == NVIDIA_AXES
    got = rater.rate(texts)
    assert got.shape == (len(texts), 5) and got.dtype == np.float32
    for j, a in enumerate(NVIDIA_AXES):
        model = fasttext.load_model(str(nvidia_models / f"best_model_{a}.bin"))
        labels, _ = model.predict([nvidia_preprocess(t) for t in texts])
        assert got[:, j].tolist() == [float(ls[0].replace("__label__", "")) for ls in labels], a
    assert set(np.unique(got)) <= set(range(-1, 6)) and got.min() == -1  # sports docs: the -1 label
    # each domain's docs get their domain's label on the quality axis (the models learnt it)
    q = got[:21, 0].reshape(7, 3)
    assert (q == np.array([[LEVEL[d]] for d in DOMAINS])).mean() >= 0.9
    # score=expected: the mean label under predict(k=-1), over -1..5
    exp = load_rater(nvidia_models, "nvidia_climb", score="expected").rate(texts[:4])
    f = fasttext.load_model(str(nvidia_models / "best_model_quality.bin")).f
    preds = [f.predict(nvidia_preprocess(t) + "\n", -1, 0.0, "strict") for t in texts[:4]]
    want = [sum(p * label_value(lab) for p, lab in pr) / sum(p for p, _ in pr) for pr in preds]
    assert np.allclose(exp[:, 0], want, atol=1e-5) and (exp >= -1).all() and (exp <= 5).all()


def test_the_loader_names_what_is_wrong(nvidia_models, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(nvidia_models / "best_model_quality.bin", partial)
    with pytest.raises(FileNotFoundError, match=r"best_model_cultural_value.bin or cultural_value.bin.*huggingface"):
        load_rater(partial, "nvidia_climb")
    # a train-raters (0..5) model read as NVIDIA's: the labels differ, and the message says so
    for a in NVIDIA_AXES:
        shutil.copy(nvidia_models / f"best_model_{a}.bin", partial / f"best_model_{a}.bin")
    lines = "".join(f"__label__{i % 6} w{i % 6} x\n" for i in range(60))
    (tmp_path / "t.txt").write_text(lines)
    fasttext.train_supervised(input=str(tmp_path / "t.txt"), epoch=1, dim=4, bucket=100, thread=1,
                              verbose=0).save_model(str(partial / "best_model_advertisement.bin"))
    with pytest.raises(ValueError, match=r"best_model_advertisement.bin: labels .* not the nvidia_climb"):
        load_rater(partial, "nvidia_climb")
    with pytest.raises(ValueError, match="quality.convention=nvidia_climb reads fastText models"):
        load_rater("heuristic", "nvidia_climb")
    with pytest.raises(ValueError, match="the heuristic rater rates"):
        HeuristicRater(["quality", "cultural_value"])
    sub = HeuristicRater(["educational", "quality"])
    assert np.array_equal(sub.rate(TRICKY), HeuristicRater().rate(TRICKY)[:, [3, 0]])


def test_train_raters_in_nvidias_format_needs_every_label(tmp_path):
    data = tmp_path / "l.jsonl"
    data.write_text("".join(json.dumps({"text": f"doc {i}", **{a: i % 6 for a in NVIDIA_AXES}}) + "\n"
                            for i in range(30)))
    assert cli_main(["train-raters", f"input={data}", f"output={tmp_path / 'o'}", "convention=nvidia_climb"]) == 2


# ---------------------------------------------------------------- the preset, the stage, refine


def test_the_presets_give_the_recipes_and_the_papers_thresholds():
    from climb_hpc.config import compose

    cfg = compose(list(PRESET))
    assert cfg.quality.convention == "nvidia_climb" and list(cfg.quality.axes) == list(NVIDIA_AXES)
    t = {k: v for k, v in cfg.clusters.refine.thresholds.items() if v is not None}
    assert t == {"quality": 1.0, "advertisement": 2.0, "informational_value": 1.0, "cultural_value": 1.0,
                 "educational_value": 1.0}
    paper = compose(["quality=nvidia_climb_paper"])
    assert {k: v for k, v in paper.clusters.refine.thresholds.items() if v is not None} == {"quality": 3.0}
    assert paper.quality.convention == "nvidia_climb"
    default = compose([])
    assert default.quality.convention == "climb_hpc" and default.clusters.refine.thresholds.quality == 3.0


def _initial_decisions(run: Path, thresholds: dict) -> dict[int, bool]:
    """Per initial cluster: kept? recomputed from the quality store and the assignments (not refine's code)."""
    rd = RunDir(run)
    scores = zarr.open_array(str(quality.store_path(rd)), mode="r")
    axes = list(scores.attrs["axes"])
    x = scores[:]
    lab = zarr.open_array(str(run / "assign" / "assignments.zarr"), mode="r")[:]
    out = {}
    for c in np.unique(lab):
        mean = x[lab == c].astype(np.float64).mean(0)
        out[int(c)] = all(mean[axes.index(a)] >= t for a, t in thresholds.items() if t is not None)
    return out


@pytest.fixture(scope="module")
def nvidia_run(nvidia_models, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("nvidia_run") / "run"
    run_pipeline(make_cfg(run, "cluster=debug", *RUN, *PRESET, f"quality.raters={nvidia_models}"))
    return run


def test_the_stage_writes_five_named_columns(nvidia_run, nvidia_models):
    rd = RunDir(nvidia_run)
    arr = zarr.open_array(str(quality.store_path(rd)), mode="r")
    assert arr.shape == (N_DOCS, 5) and arr.shards == (32, 5)
    assert list(arr.attrs["axes"]) == list(NVIDIA_AXES) and list(arr.attrs["range"]) == [-1, 5]
    x = arr[:]
    assert set(np.unique(x)) <= set(range(-1, 6)) and (x == -1).any()
    layout, summary = read_json(quality.layout_path(rd)), read_json(quality.summary_path(rd))
    assert layout["axes"] == summary["axes"] == list(NVIDIA_AXES) and summary["range"] == [-1, 5]
    assert set(summary["mean"]) == set(NVIDIA_AXES)
    assert np.isclose(summary["mean"]["cultural_value"], x[:, 3].mean(), atol=1e-4)
    assert layout["rater"]["convention"] == "nvidia_climb" and layout["rater"]["score"] == "argmax"
    # row r is the r-th document: it scores as the rater scores that text
    from climb_hpc.corpus import iter_doc_shards

    texts = [t for _, tb in iter_doc_shards(rd, ["text"]) for t in tb.column("text").to_pylist()]
    assert np.array_equal(x[[0, 50, 104]], load_rater(nvidia_models, "nvidia_climb").rate([texts[i] for i in (0, 50, 104)]))


def test_refine_applies_the_recipes_thresholds_per_axis(nvidia_run):
    info = read_json(nvidia_run / "refine" / "clusters.json")
    assert info["pruning"] == "applied" and info["axes"] == list(NVIDIA_AXES) and info["range"] == [-1.0, 5.0]
    thresholds = {k: v for k, v in info["thresholds"].items() if v is not None}
    assert thresholds["advertisement"] == 2.0 and thresholds["cultural_value"] == 1.0
    want = _initial_decisions(nvidia_run, thresholds)
    got = {c["id"]: c["pruned"] is None for c in info["initial"] if c["size"]}
    assert got == want
    assert 0 < sum(want.values()) < len(want)  # some clusters kept, some pruned
    for c in info["initial"]:  # a pruned cluster says which axis it failed
        if c["size"] and c["pruned"] is not None:
            assert any(a in c["pruned"] for a in thresholds), c["pruned"]


def test_the_papers_threshold_keeps_other_clusters(nvidia_run, tmp_path, nvidia_models):
    """quality=nvidia_climb_paper: the same scores, refine prunes on quality >= 3 only."""
    run = tmp_path / "paper"
    shutil.copytree(nvidia_run, run, ignore=shutil.ignore_patterns("config.yaml", "manifest.json"))
    for p in (run / "refine", run / "_done" / "refine"):
        shutil.rmtree(p)
    run_pipeline(make_cfg(run, "cluster=debug", *RUN, "quality=nvidia_climb_paper", f"quality.raters={nvidia_models}"))
    info = read_json(run / "refine" / "clusters.json")
    got = {c["id"]: c["pruned"] is None for c in info["initial"] if c["size"]}
    assert got == _initial_decisions(run, {"quality": 3.0})
    reference = {c["id"]: c["pruned"] is None
                 for c in read_json(nvidia_run / "refine" / "clusters.json")["initial"] if c["size"]}
    assert got != reference


# ---------------------------------------------------------------- memory from the files' sizes


def _sparse_models(folder: Path, sizes: dict[str, int]) -> None:
    folder.mkdir()
    for axis, size in sizes.items():
        with open(folder / f"best_model_{axis}.bin", "wb") as f:
            f.truncate(size)  # a sparse file: its size without the disk


def test_memory_is_requested_from_the_model_files_sizes(tmp_path):
    folder = tmp_path / "models"
    sizes = {a: int(6.8e9) + i * 10**8 for i, a in enumerate(NVIDIA_AXES)}  # NVIDIA's are ~6.8 GB each
    _sparse_models(folder, sizes)
    cfg = make_cfg(tmp_path / "r", *PRESET, f"quality.raters={folder}")
    total = sum(sizes.values())
    want = int(np.ceil(quality.MODEL_MEM_FACTOR * total / 2**30 + 2))
    assert want == 38  # 35.0e9 bytes = 32.6 GiB, x 1.1 + 2
    assert quality.STAGE.resources(cfg).mem_gb == want
    assert stage_resources(cfg, quality.STAGE).mem_gb == want  # what the scheduler is asked for
    # fewer axes, fewer models to hold
    three = make_cfg(tmp_path / "r", *PRESET, f"quality.raters={folder}", "quality.axes=[quality,advertisement,cultural_value]",
                     "quality.mem_margin_gb=0")
    assert quality.STAGE.resources(three).mem_gb == int(np.ceil(1.1 * (sizes["quality"] + sizes["advertisement"]
                                                                       + sizes["cultural_value"]) / 2**30))
    # a given mem_gb wins; the heuristic and a folder missing a file ask for nothing special
    assert quality.STAGE.resources(make_cfg(tmp_path / "r", *PRESET, f"quality.raters={folder}",
                                            "quality.mem_gb=100")).mem_gb == 100
    assert quality.STAGE.resources(make_cfg(tmp_path / "r")).mem_gb is None
    os.remove(folder / "best_model_educational_value.bin")
    assert quality.STAGE.resources(cfg).mem_gb is None


def test_memory_of_trained_models_matches_their_files(nvidia_models, tmp_path):
    cfg = make_cfg(tmp_path / "r", *PRESET, f"quality.raters={nvidia_models}", "quality.mem_margin_gb=0.5")
    total = sum((nvidia_models / f"best_model_{a}.bin").stat().st_size for a in NVIDIA_AXES)
    assert quality.models_mem_gb(cfg) == int(np.ceil(1.1 * total / 2**30 + 0.5))
    assert refine.DEFAULT_AXES == ("quality", "advertisement", "informational", "educational")  # the fallback only
