"""Hostile inputs and values, tried from outside as a user would: prints a table of probes (input, expected,
observed) for issue 14's classes, each run through the `climb-hpc` command in a fresh run folder.

    python benchmarks/bad_input_probes.py [--out /tmp/probes]      # ~2 min on 2 cores; needs ../shared/data

Expected outcomes: `rc 2, one line` (a `climb-hpc: error: ...` line naming the file or key, rc 2, no traceback,
and for a value error no run folder at all); `rc 0` where the input is legitimate. The last column says
whether the observation matched. Exits 1 if any probe did not.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

ROOT = Path(__file__).resolve().parents[1]
NEWS = ROOT.parent / "shared" / "data" / "corpus" / "news.jsonl"


def climb(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    quiet = ["progress=false"] if args[0] == "run" else []
    return subprocess.run([sys.executable, "-m", "climb_hpc.cli", *args, *quiet], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=900)


def error_line(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("climb-hpc: error:")]
    return lines[0] if lines else ""


def one_line_error(p: subprocess.CompletedProcess, *fragments: str) -> tuple[bool, str]:
    line = error_line(p)
    others = [ln for ln in p.stderr.splitlines() if ln.strip() and not re.match(r"^\d\d:\d\d:\d\d ", ln)
              and ln != line and not re.match(r"^\s*\w+:\s+\d+%", ln)]
    ok = p.returncode == 2 and bool(line) and not others and "Traceback" not in p.stderr and \
        all(f in line for f in fragments)
    shown = line.replace("climb-hpc: error: ", "")
    return ok, f"rc {p.returncode}: {shown[:150]}{'...' if len(shown) > 150 else ''}"


def make_inputs(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    lines = NEWS.read_bytes().splitlines(keepends=True)[:5000]
    raw = b"".join(lines)
    f: dict[str, Path] = {}
    for frac in (0.5, 0.7):
        zst = zstandard.ZstdCompressor(level=3).compress(raw)
        f[f"zst{int(frac * 100)}"] = d / f"news_cut{int(frac * 100)}.jsonl.zst"
        f[f"zst{int(frac * 100)}"].write_bytes(zst[: int(len(zst) * frac)])
    gz = gzip.compress(raw)
    f["gz70"] = d / "gz" / "news_cut70.jsonl.gz"
    f["gz70"].parent.mkdir(exist_ok=True)
    f["gz70"].write_bytes(gz[: int(len(gz) * 0.7)])
    table = pa.Table.from_pylist([json.loads(x) for x in lines[:3000]])
    pq.write_table(table, d / "full.parquet", row_group_size=1000)
    data = (d / "full.parquet").read_bytes()
    f["pq_footer"] = d / "footer_cut.parquet"
    f["pq_footer"].write_bytes(data[: len(data) - 200])
    md = pq.ParquetFile(d / "full.parquet").metadata
    col = md.row_group(1).column(0)
    start = col.data_page_offset
    bad = bytearray(data)
    for i in range(start + 20, start + 400):
        bad[i] ^= 0x5A
    f["pq_page"] = d / "page_bad.parquet"
    f["pq_page"].write_bytes(bytes(bad))
    f["jsonl_cut"] = d / "cut.jsonl"
    f["jsonl_cut"].write_bytes(raw[: len(raw) - len(lines[-1]) // 2])
    # symlinks: a followed sub-folder, a loop
    tree = d / "tree"
    (tree / "real").mkdir(parents=True, exist_ok=True)
    (d / "elsewhere").mkdir(exist_ok=True)
    (tree / "real" / "a.jsonl").write_bytes(lines[0])
    (d / "elsewhere" / "b.jsonl").write_bytes(lines[1])
    if not (tree / "linked").is_symlink():
        (tree / "linked").symlink_to(d / "elsewhere")
    f["tree"] = tree
    loop = d / "loop"
    (loop / "sub").mkdir(parents=True, exist_ok=True)
    (loop / "sub" / "a.jsonl").write_bytes(lines[0])
    if not (loop / "sub" / "back").is_symlink():
        (loop / "sub" / "back").symlink_to(loop)
    f["loop"] = loop
    f["body"] = d / "body.jsonl"
    f["body"].write_text("".join(json.dumps({"body": f"doc {i}"}) + "\n" for i in range(20)))
    f["good"] = d / "good.jsonl"
    f["good"].write_bytes(b"".join(lines[:50]))
    (d / "dup").mkdir(exist_ok=True)
    f["dup"] = d / "dup" / "again.jsonl"
    f["dup"].write_bytes(b"".join(lines[:50]))
    f["junk"] = d / "junk.jsonl"
    f["junk"].write_text("not json\n[1, 2]\n\n")
    return f


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/climb_probes")
    out = Path(ap.parse_args().out)
    if not NEWS.exists():
        print(f"needs {NEWS} (../shared/data)")
        return 0
    shutil.rmtree(out, ignore_errors=True)
    f = make_inputs(out / "inputs")
    n = iter(range(1000))

    def run(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, Path]:
        rd = out / f"run{next(n)}"
        return climb("run", f"run_dir={rd}", "cluster=debug", "until=ingest", *args, env=env), rd

    probes: list[tuple[str, str, bool, str]] = []

    def probe(what: str, expected: str, ok_observed: tuple[bool, str]) -> None:
        probes.append((what, expected, *ok_observed))

    # ---- damaged input files
    for key, where in (("zst70", "compressed byte"), ("zst50", "compressed byte"), ("gz70", "compressed byte"),
                       ("pq_footer", "footer"), ("pq_page", "row group 1"), ("jsonl_cut", "byte")):
        p, rd = run(f"corpus.paths=[{f[key]}]")
        ok, obs = one_line_error(p, str(f[key]), where)
        ok = ok and not (rd / "_done" / "ingest" / "_stage").exists()
        probe(f"{f[key].name} ({key})", f"rc 2, names the file and the {where}; ingest not complete", (ok, obs))
    p, rd = run(f"corpus.paths=[{f['zst70']}]", "corpus.damaged_files=quarantine")
    s = json.loads((rd / "ingest" / "summary.json").read_text()) if p.returncode == 0 else {}
    dmg = s.get("damaged_files") or []
    probe("zst cut at 70 %, corpus.damaged_files=quarantine", "rc 0; summary lists the damaged file and what was kept",
          (p.returncode == 0 and len(dmg) == 1,
           f"rc {p.returncode}: {s.get('docs_written')} docs kept, damaged: {json.dumps(dmg)[:140]}"))
    # ---- symlinks
    p, rd = run(f"corpus.paths=[{f['tree']}]")
    s = json.loads((rd / "ingest" / "summary.json").read_text()) if p.returncode == 0 else {}
    probe("folder with a symlinked sub-folder", "rc 0, both docs ingested",
          (s.get("docs_written") == 2, f"rc {p.returncode}: {s.get('docs_written')} docs"))
    p, _ = run(f"corpus.paths=[{f['loop']}]")
    probe("folder with a symlink loop", "rc 2, names the link", one_line_error(p, "loop"))
    # ---- other input errors
    for what, args, frag in (
            ("a path given twice", [f"corpus.paths=[{f['good']},{f['good']}]"], "twice"),
            ("the same ids in two files", [f"corpus.paths=[{f['good']},{f['dup']}]"], "more than one shard"),
            ("a file with no valid record", [f"corpus.paths=[{f['junk']}]"], "no document"),
            ("a path that does not exist", ["corpus.paths=[/no/such.jsonl]"], "does not exist")):
        p, _ = run(*args)
        probe(what, "rc 2, one line", one_line_error(p, frag))
    # ---- values
    for what, arg, frag in (
            ("newline in run_dir", None, "control character"),
            ("cluster.cpus=-1", "cluster.cpus=-1", "cluster.cpus"),
            ("cluster.max_retries=-1", "cluster.max_retries=-1", "max_retries"),
            ("cluster.stage_resources.ingest.cpus=-2", "cluster.stage_resources.ingest.cpus=-2", "ingest.cpus"),
            ("corpus.chunk_mb=abc", "corpus.chunk_mb=abc", "chunk_mb"),
            ("corpus.chunk_mb=-1", "corpus.chunk_mb=-1", "chunk_mb"),
            ("+embed.max_lenght=5", "+embed.max_lenght=5", "embed.max_length"),
            ("+cluster.dry_run=true", "+cluster.dry_run=true", "dry_run"),
            ("embed.batch_size=1.5", "embed.batch_size=1.5", "whole number")):
        rd = out / f"run{next(n)}"
        args = [f"run_dir={rd}\nrm -rf /"] if arg is None else [f"run_dir={rd}", arg]
        p = climb("run", *args, "until=ingest")
        ok, obs = one_line_error(p, frag)
        probe(what, "rc 2, one line, no run folder", (ok and not rd.exists() and not Path(f"{rd}\nrm -rf /").exists(), obs))
    for flag in ("part", "outp", "sig", "dep", "no-requeue", "requeu", "expo"):
        rd = out / f"run{next(n)}"
        p = climb("run", f"run_dir={rd}", "cluster=slurm", "dry_run=true", f"+cluster.extra_sbatch.{flag}=x")
        probe(f"cluster.extra_sbatch.{flag}=x", "rc 2, one line", one_line_error(p, f"extra_sbatch.{flag}"))
    p, rd = run("cluster.stage_resources.ingest.cpus=4", "corpus.builtin.docs_per_domain=5")
    probe("README: cluster.stage_resources.ingest.cpus=4", "rc 0", (p.returncode == 0, f"rc {p.returncode}"))
    # ---- fix in place, resume, status
    p1, rd = run(f"corpus.paths=[{f['body']}]")
    p2 = climb("status", f"run_dir={rd}")
    probe("wrong corpus.text_field, then status", "rc 2; status: ingest failed (finalize)",
          (p1.returncode == 2 and "finalize failed" in p2.stdout, f"rc {p1.returncode}; status: " +
           " | ".join(ln.strip() for ln in p2.stdout.splitlines()[1:3])))
    p3 = climb("run", f"run_dir={rd}", "cluster=debug", "until=ingest", f"corpus.paths=[{f['body']}]",
               "corpus.text_field=body")
    probe("... relaunched in place with corpus.text_field=body", "rc 0, ingest reset and complete",
          (p3.returncode == 0 and (rd / "_done" / "ingest" / "_stage").exists(), f"rc {p3.returncode}"))
    p4 = climb("run", f"run_dir={rd}", "until=ingest")
    probe("... resumed with run_dir alone", "rc 0, nothing runs",
          (p4.returncode == 0 and "already complete" in p4.stdout, f"rc {p4.returncode}"))
    p5 = climb("run", f"run_dir={rd}", "corpus.text_field=text")
    probe("... then corpus.text_field=text (ingest complete)", "rc 2, names key, both values, the stage",
          one_line_error(p5, "corpus.text_field: 'body' -> 'text'", "stage ingest"))
    env = dict(os.environ)
    env["PATH"] = ":".join(x for x in env["PATH"].split(":") if not (Path(x) / "srun").exists())
    rd = out / f"run{next(n)}"
    p = climb("run", f"run_dir={rd}", "cluster=slurm", "dry_run=true", "pipeline=selftest", env=env)
    probe("dry run with no Slurm commands on PATH", "rc 0, scripts written",
          (p.returncode == 0 and (rd / "sbatch" / "noop.sbatch").exists(), f"rc {p.returncode}"))

    print("| probe | expected | observed | ok |\n|---|---|---|---|")
    for what, expected, ok, observed in probes:
        print(f"| {what} | {expected} | {observed.replace('|', '/')} | {'yes' if ok else '**NO**'} |")
    bad = sum(not ok for _, _, ok, _ in probes)
    print(f"\n{len(probes) - bad} of {len(probes)} probes as expected")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
