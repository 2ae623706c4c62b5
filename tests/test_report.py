"""The run report (climb_hpc/report): report.html over a REAL small run, end to end.

One module-scoped run of every stage (cluster=debug): the built-in corpus at 40 docs a domain embedded with
MiniLM, rated, clustered (2 clusters pruned by an educational threshold, the rest merged into 4), tokenized,
a 7-trial CLIMB search, the mix, a tiny teacher pretrained + corrected, importance, pruning (width + one
layer), distillation, and the ``report`` stage last. A copy taken after ``tokenize`` (its config saved as
cluster=slurm) is the partial run.
"""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from climb_hpc.cli import main
from climb_hpc.pipeline import run_pipeline
from climb_hpc.report.build import SECTIONS, write_report
from climb_hpc.report.mixture import weights_text
from climb_hpc.report.page import PNG_MAGIC, fmt
from climb_hpc.rundir import RunDir, read_json
from tests.conftest import SMALL_PROXY, TOKENIZED, make_cfg
from tests.test_minitron import TEACHER

STAGES = ("pipeline.stages=[ingest,embed,quality,kmeans,assign,refine,tokenize,search,mix,correct,importance,prune,"
          "distill,report]")
RUN = ("cluster=debug", STAGES, *TOKENIZED, "clusters.refine.from_field=null", *SMALL_PROXY, "embed.max_length=64",
       "clusters.refine.thresholds.educational=3.0", "clusters.refine.target_clusters=4",
       "proxy.tokens=4096", "search.budget=7", "search.pool_size=300", "mix.tokens=60000",
       *TEACHER, "minitron.teacher.pretrain_tokens=20480",
       "minitron.importance.samples=32", "minitron.importance.seq_len=32", "minitron.importance.batch_size=8",
       "minitron.importance.cpus=1", "minitron.prune.cpus=1", "minitron.prune.hidden_size=48",
       "minitron.prune.intermediate_size=96", "minitron.prune.num_attention_heads=1", "minitron.prune.depth.drop=1",
       "minitron.distill.seq_len=64", "minitron.distill.micro_batch_size=4", "minitron.distill.global_batch_size=8",
       "minitron.distill.val_tokens=4000", "minitron.distill.cpus=1", "minitron.distill.lr=3e-3",
       "minitron.distill.tokens=5120", "minitron.distill.temperature=2.0")
TITLES = [title for _, title, _ in SECTIONS]
VOID = {"meta", "img", "br", "hr", "input", "link", "wbr", "source"}


class Parsed(HTMLParser):
    """The page's tags, headings, element ids, every src / href, and per section its text and table rows."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.h2: list[str] = []
        self.title = ""
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.rows: dict[str, list[list[str]]] = {}  # section title -> its table rows (cell texts)
        self.texts: dict[str, list[str]] = {}       # section title -> its text
        self.open_sections = 0
        self.misnested: list[str] = []  # end tags that do not close the innermost open element
        self._in: list[str] = []
        self._cell: list[str] | None = None
        self._section = ""
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in VOID:
            self._in.append(tag)
        for k, v in attrs:
            if k == "id":
                self.ids.add(v or "")
            if k in ("src", "href", "srcset", "action", "data", "poster"):
                self.refs.append((tag, k, v or ""))
        if tag == "tr":
            self.rows.setdefault(self._section, []).append([])
        if tag in ("td", "th"):
            self._cell = []
        if tag == "section":
            self.open_sections += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[self._section][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "section":
            self.open_sections -= 1
        if self._in and self._in[-1] == tag:
            self._in.pop()
        else:
            self.misnested.append(f"</{tag}> inside {self._in[-3:]}")

    def handle_data(self, data: str) -> None:
        if self._in and self._in[-1] == "h2":
            self._section = data.strip()
            self.h2.append(self._section)
        if self._in and self._in[-1] == "title":
            self.title += data
        self.texts.setdefault(self._section, []).append(data)
        if self._cell is not None:
            self._cell.append(data)

    def text(self, section: str | None = None) -> str:
        return " ".join(" ".join(v) for k, v in self.texts.items() if section is None or k == section)

    def row(self, section: str, first: str, cells: int | None = None) -> list[str]:
        """The first table row of ``section`` whose first cell is ``first`` (and has ``cells`` cells)."""
        found = [r for r in self.rows.get(section, []) if r and r[0] == first and (cells is None or len(r) == cells)]
        assert found, f"no table row starting with {first!r} in section {section!r}"
        return found[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("report")
    run, partial = base / "run", base / "partial"
    run_pipeline(make_cfg(run, *RUN, "until=tokenize"))
    shutil.copytree(run, partial)  # a run that stopped after tokenize, as if it had run on Slurm
    RunDir(partial).save_config(make_cfg(partial, *RUN, "cluster=slurm"))
    (partial / "_jobs").mkdir()
    (partial / "_jobs" / "tokenize.json").write_text(json.dumps({str(t): f"4242_{t}" for t in range(7)}))
    run_pipeline(make_cfg(run, *RUN))
    return {"run": run, "partial": partial}


def check_self_contained(text: str) -> Parsed:
    assert text.startswith("<!DOCTYPE html>")
    page = Parsed(text)
    assert page.title.startswith("climb-hpc report") and page.open_sections == 0
    assert not page.misnested and not page._in, (page.misnested, page._in)  # every element closed, in order
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    imgs = [v for tag, k, v in page.refs if tag == "img"]
    assert imgs, "no image in the page"
    for tag, k, v in page.refs:
        if tag == "img":
            assert k == "src" and v.startswith("data:image/png;base64,")
            assert base64.b64decode(v.split(",", 1)[1], validate=True)[:8] == PNG_MAGIC
        else:  # only links to this page's own sections
            assert k == "href" and v.startswith("#") and v[1:] in page.ids, (tag, k, v)
    assert "url(" not in text and "@import" not in text
    return page


def test_the_report_stage_writes_one_self_contained_page_with_every_section(runs):
    run = runs["run"]
    assert RunDir(run).stage_complete("report")
    page = check_self_contained((run / "report.html").read_text())
    assert page.h2 == TITLES
    assert "not run yet" not in page.text() and "could not build" not in page.text()
    embedded = {base64.b64decode(v.split(",", 1)[1]) for _, _, v in page.refs if v.startswith("data:")}
    files = {p.name: p.read_bytes() for p in (run / "report").glob("*.png")}
    assert {"cluster_sizes.png", "cluster_quality.png", "refine.png", "doc_map.png", "final_weights.png",
            "predicted_vs_measured.png", "mixture_map.png", "final_mixture.png", "proxy_curves.png",
            "minitron_curves.png", "pruned_architecture.png", "layer_importance.png"} == set(files)
    assert embedded == set(files.values())  # the page shows exactly the PNGs written next to it


def test_the_sections_show_the_runs_own_numbers(runs):
    run = runs["run"]
    page = Parsed((run / "report.html").read_text())
    for stage in ("ingest", "embed", "refine", "search", "proxy/climb_plus_r1", "proxy/references", "distill"):
        assert page.row("Run summary", stage)[1] == "complete", stage

    clusters = read_json(run / "refine" / "clusters.json")
    assert clusters["final_clusters"] == 4 and clusters["pruned_docs"] == 80
    tokens = read_json(run / "tokenize" / "summary.json")["clusters"]
    for c in clusters["clusters"]:  # cluster, members, docs, tokens, share, 4 axes
        assert page.row("Clusters", str(c["id"]), cells=9)[2:4] == [fmt(c["size"]), fmt(tokens[str(c["id"])]["tokens"])]
    pruned = [c for c in clusters["initial"] if c["pruned"]]
    assert [page.row("Clusters", str(c["id"]), cells=7)[2] for c in pruned] == [c["pruned"] for c in pruned]
    assert "280 of 280 documents" in page.text("Documents map")

    result = read_json(run / "search" / "result.json")
    best = result["best"]
    row = page.row("Mixture search", "best measured")
    assert row[1:4] == [str(best["round"]), str(best["trial"]), fmt(best["value"], 5)]
    assert row[5] == weights_text(best["weights"])
    assert page.row("Mixture search", "uniform (reference)")[3] == fmt(result["references"]["uniform"]["value"], 5)
    # climb_plus's rounds at a budget of 7: 4 spread over the pool, then 1, 1, 1
    assert [page.row("Mixture search", str(k), cells=7)[1] for k in (1, 2, 3, 4)] == ["4", "1", "1", "1"]

    mixture = read_json(run / "mixture.json")
    assert mixture["weights"] == best["weights"]
    for c, w in mixture["weights"].items():
        assert page.row("Final weights", c)[1] == fmt(w)

    assert "9 proxy trials in 5 groups" in page.text("Training curves")
    for phase, work in (("teacher pretraining", "correct/pretrain"), ("teacher correction", "correct"),
                        ("distillation", "distill")):
        m = read_json(run / work / "metrics.json")
        assert page.row("Training curves", phase)[1:3] == [fmt(m["steps"]), fmt(m["tokens"])]

    student = json.loads((run / "student_pruned" / "config.json").read_text())
    prune = read_json(run / "prune" / "summary.json")
    arch = "Pruned architecture"
    assert student["hidden_size"] == 48 and page.row(arch, "hidden size")[1:] == ["64", "48", "48"]
    assert page.row(arch, "layers")[1:] == ["2", "1", "1"] and page.row(arch, "attention heads")[1:] == ["2", "1", "1"]
    p = prune["params"]
    assert page.row(arch, "parameters")[1:] == [fmt(p["before"]), fmt(p["after"]), fmt(p["after"])]
    d = read_json(run / "distill" / "metrics.json")
    assert page.row(arch, "validation LM loss")[2:] == [fmt(d["val_before"]["lm"], 5), fmt(d["val_after"]["lm"], 5)]
    assert f"dropped teacher layer(s) {prune['kept']['dropped_layers']} of 2" in page.text(arch)


def test_the_command_refreshes_the_page_and_it_is_deterministic(runs, capsys):
    run = runs["run"]
    assert main(["report", f"run_dir={run}", "max_points=100"]) == 0  # a seeded sample of the 280 documents
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    first = (run / "report.html").read_bytes()
    assert "100 of 280 documents (a seeded sample of at most 100)" in Parsed(first.decode()).text("Documents map")
    pngs = {p.name: p.read_bytes() for p in (run / "report").glob("*.png")}
    assert write_report(run, max_points=100) == run / "report.html"
    assert (run / "report.html").read_bytes() == first
    assert {p.name: p.read_bytes() for p in (run / "report").glob("*.png")} == pngs
    assert main(["report", f"run_dir={run}", "dpi=big"]) == 2 and main(["report"]) == 2


def test_a_partial_slurm_run_gets_a_note_for_each_missing_stage(runs):
    run = runs["partial"]
    page = check_self_contained(write_report(run).read_text())
    assert page.h2 == TITLES
    assert page.row("Run summary", "", cells=3) == ["", "executor", "slurm"]
    assert page.row("Run summary", "tokenize")[1] == "complete" and page.row("Run summary", "search")[1] == "not run"
    assert "280 of 280 documents" in page.text("Documents map")
    for title, stage in (("Mixture search", "search"), ("Final weights", "mix"), ("Training curves", "search"),
                         ("Training curves", "correct"), ("Training curves", "distill"),
                         ("Pruned architecture", "prune")):
        assert f"stage {stage} not run yet" in page.text(title), (title, stage)
    assert "could not build" not in page.text()


def test_corrupt_files_become_notes_not_a_crash(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run, ignore=shutil.ignore_patterns("report*", "*.safetensors", "tokens.bin"))
    (run / "refine" / "clusters.json").write_text('{"clusters": [')
    (run / "search" / "result.json").write_text("[1, 2]")
    (run / "config.yaml").write_text("a: [unclosed\n")
    with open(run / "distill" / "train_log.jsonl", "a") as f:
        f.write('{"step": 99, "loss": 0.0')  # a torn last line
    (run / "_failed" / "distill").mkdir(parents=True)
    (run / "_failed" / "distill" / "00001").write_text(json.dumps({"error": "<script>alert(1)</script> boom"}))
    text = write_report(run).read_text()
    page = check_self_contained(text)
    assert page.h2 == TITLES
    assert "refine/clusters.json: unreadable" in page.text("Clusters")
    assert "could not build this section" in page.text("Mixture search")
    assert "config.yaml could not be read" in page.text("Run summary")
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; boom" in text
    assert "could not build" not in page.text("Training curves") and (run / "report" / "minitron_curves.png").exists()
    p = read_json(run / "prune" / "summary.json")["params"]  # no safetensors: counts from the prune summary
    assert page.row("Pruned architecture", "parameters")[1:] == [fmt(p["before"]), fmt(p["after"]), "n/a"]
