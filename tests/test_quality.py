"""Stage ``quality``: the heuristic rater, fastText raters trained with ``train-raters``, the Zarr store.

The pipeline run is the built-in corpus at 10 docs a domain (70 docs) with 16-row shards: 5 tasks,
the rows of the embed layout's tasks.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from climb_hpc.cli import main as cli_main
from climb_hpc.clusters.quality import STAGE, layout_path, store_path, summary_path
from climb_hpc.clusters.raters import AXES, FastTextRater, HeuristicRater, expected_scores, load_rater
from climb_hpc.corpus.builtin import DOMAINS, generate
from climb_hpc.pipeline import prepare_stage, run_pipeline
from climb_hpc.rundir import RunDir, read_json
from tests.conftest import make_cfg

SMALL = ("corpus.builtin.docs_per_domain=10", "embed.rows_per_shard=16", "embed.chunk_rows=8", "embed.cpus=1",
         "pipeline.stages=[ingest,embed,quality]")
N_DOCS = 70
SPAM = [
    "BUY NOW!!! click http://cheap-deals.biz discount $$$",
    "Limited time offer!!! Get 50% off all watches. Visit www.bestwatches.com and order now. Free shipping!",
    "CLICK HERE TO WIN A FREE PHONE!!! Sign up today, 100% free, act now http://x.co/win",
]


# ---------------------------------------------------------------- synthetic labelled data

PRODUCTS = "watches|shoes|phones|laptops|bags|jackets|headphones|vitamins|sofas|tickets".split("|")
TOPICS = "photosynthesis|erosion|tides|volcanoes|magnetism|digestion|friction|evaporation|gravity|fermentation".split("|")
AD = ["Huge sale on {p} today only!", "Buy {p} now and save {n}% with code SAVE{n}.", "Click here for cheap {p}.",
      "Free shipping on all {p}, order now!", "Limited time deal: {p} at the lowest price, visit our store.",
      "Don't miss out, best price on {p} guaranteed!"]
INFO = ["{t} is a process that depends on temperature and pressure.", "Scientists measured {t} in {n} experiments.",
        "The study of {t} explains why the effect grows with distance.", "In {t}, energy is transferred from one "
        "system to another.", "Researchers describe {t} as a gradual change over {n} years.",
        "Because of {t}, the rate changes when the conditions change."]


def labelled_doc(rng: random.Random, ad: bool) -> dict:
    fill = {"p": rng.choice(PRODUCTS), "t": rng.choice(TOPICS), "n": rng.randint(5, 90)}
    text = " ".join(rng.choice(AD if ad else INFO).format(**fill) for _ in range(rng.randint(3, 6)))
    hi, lo = rng.choice([4, 5]), rng.choice([0, 1])
    return {"text": text, "quality": lo + 1 if ad else hi, "advertisement": lo if ad else 5,
            "scores": {"informational": lo if ad else hi, "educational": lo if ad else hi - 1}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[dict]]:
    """fastText raters trained through the CLI on 200 labelled docs; 40 held-out docs."""
    tmp = tmp_path_factory.mktemp("raters")
    rng = random.Random(0)
    docs = [labelled_doc(rng, ad=i % 2 == 0) for i in range(240)]
    data = tmp / "labelled.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs[:200]))
    out = tmp / "raters"
    assert cli_main(["train-raters", f"input={data}", f"output={out}", "epoch=20", "wordNgrams=2", "bucket=20000"]) == 0
    return out, docs[200:]


# ---------------------------------------------------------------- raters


def test_heuristic_ranks_spam_below_clean_text():
    r = HeuristicRater()
    clean = [generate(d, i, 0)["text"] for d in DOMAINS for i in range(20)]
    c, s = r.rate(clean), r.rate(SPAM)
    assert c.shape == (140, 4) and c.dtype == np.float32 and np.isfinite(c).all()
    assert (c >= 0).all() and (c <= 5).all() and (s >= 0).all() and (s <= 5).all()
    assert (c >= 3).all(1).mean() >= 0.6 and (c[:, :2] >= 3).all(1).mean() >= 0.95  # the default run prunes little
    assert s[:, 1].max() < 1.0 and s[:, 0].max() < 2.0  # spam: low on advertisement and quality
    assert s[:, 1].max() < c[:, 1].min() and s[:, 0].max() < c[:, 0].min()
    assert np.array_equal(r.rate(clean), c)  # deterministic
    assert r.rate([]).shape == (0, 4)


def test_expected_score_is_the_mean_label():
    got = expected_scores([["__label__5", "__label__0"], ["__label__2"]], [np.array([0.75, 0.25]), np.array([1.0])])
    assert np.allclose(got, [3.75, 2.0])


def test_train_raters_writes_four_models_that_rank_ads_low(trained):
    out, held_out = trained
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{a}.bin" for a in AXES] + ["raters.json"])
    info = read_json(out / "raters.json")
    assert info["axes"]["advertisement"]["examples"] == 200 and info["params"]["epoch"] == 20
    rater = load_rater(out)
    assert isinstance(rater, FastTextRater)
    scores = rater.rate([d["text"] for d in held_out])
    assert scores.shape == (40, 4) and np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 5).all()
    is_ad = np.array([d["advertisement"] <= 1 for d in held_out])
    assert scores[is_ad, 1].max() < scores[~is_ad, 1].min()  # every held-out ad below every informative doc
    assert scores[is_ad, 2].mean() + 2 < scores[~is_ad, 2].mean()
    assert rater.rate(["a single line"]).shape == (1, 4)  # the one-text case (numpy-2 safe list form)


def test_train_raters_rejects_records_without_scores(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no scores"}) + "\n")
    assert cli_main(["train-raters", f"input={bad}", f"output={tmp_path / 'o'}"]) == 2


# ---------------------------------------------------------------- the stage


def _check_store(run: Path) -> np.ndarray:
    rd = RunDir(run)
    arr = zarr.open(str(store_path(rd)), mode="r")
    assert arr.shape == (N_DOCS, 4) and arr.dtype == np.float32
    assert arr.shards == (16, 4) and arr.chunks == (8, 4)
    x = arr[:]
    assert np.isfinite(x).all() and (x >= 0).all() and (x <= 5).all()
    layout = read_json(layout_path(rd))
    assert layout["tasks"] == read_json(run / "embed" / "layout.json")["tasks"]
    assert layout["axes"] == list(AXES)
    return x


def test_stage_heuristic_and_fasttext(tmp_path, trained):
    run = tmp_path / "run"
    run_pipeline(make_cfg(run, "cluster=debug", *SMALL))
    x = _check_store(run)
    s = read_json(summary_path(RunDir(run)))
    assert s["rater"]["kind"] == "heuristic" and s["docs_per_s"] > 0
    assert (x[:, :2] >= 3).all(1).mean() >= 0.9
    # rows are in corpus order: row r is the r-th doc of the ingest shards, so it rates as that text
    from climb_hpc.corpus import iter_doc_shards

    texts = [t for _, tb in iter_doc_shards(RunDir(run), ["text"]) for t in tb.column("text").to_pylist()]
    assert np.array_equal(x[[0, 33, 69]], HeuristicRater().rate([texts[0], texts[33], texts[69]]))
    # the same run folder re-rated with the trained fastText raters (a changed rater is refused)
    rd = RunDir(run)
    cfg = rd.load_config()
    cfg.quality.raters = str(trained[0])
    with pytest.raises(RuntimeError, match="planned differently"):
        prepare_stage(cfg, rd, STAGE)[0]
    # a copy of the run with ingest + embed kept (no second embedding), quality cleared, raters switched
    run2 = tmp_path / "run2"
    shutil.copytree(run, run2)
    for p in (run2 / "quality", run2 / "_done" / "quality"):
        shutil.rmtree(p)
    cfg2 = make_cfg(run2, "cluster=debug", *SMALL, f"quality.raters={trained[0]}")
    RunDir(run2).save_config(cfg2)
    run_pipeline(cfg2)
    y = _check_store(run2)
    assert read_json(summary_path(RunDir(run2)))["rater"]["kind"] == "fasttext"
    assert not np.array_equal(x, y)
