"""`climb-hpc <command> [key=value ...]`: run, status, report, plan, train-raters.

    climb-hpc run [run_dir=DIR] [until=STAGE] [cluster=local|debug|slurm|dgx_h100_32n] [key=value ...]
    climb-hpc status run_dir=DIR [format=json]
    climb-hpc plan cluster=PROFILE plan.corpus_tokens=1.2e12 [format=json] [key=value ...]
        GPU-, core- and node-hours of every stage and the `scontrol create reservation` request to ask for,
        with preflight's verdict
    climb-hpc preflight [cluster=PROFILE] [format=json] [key=value ...]
        rehearses every stage with no data and no GPU (models on the meta device, pruning targets, batch
        arithmetic, sequence lengths, time limits, peak memory a GPU); rc 2 when a check fails. `run` runs it
        first unless preflight=skip
    climb-hpc export run_dir=DIR format=parquet out=DIR2 [tokens=N] [cluster=...]
        the mixture's documents (id, text, cluster, split, epoch) at a token budget (default mix.tokens) as
        Parquet shards, one a tokenize part, written in parallel by an array; datasets.load_dataset reads them
    climb-hpc report run_dir=DIR [max_points=5000] [dpi=100] [top_trials=5]
        writes (refreshes) DIR/report.html, one self-contained page, and its PNGs in DIR/report/
    climb-hpc train-raters input=LABELLED.jsonl output=DIR [text_field=text] [epoch=25 lr=0.5 wordNgrams=2 ...]
        fastText quality raters from a JSONL of {"text": ..., "quality": 0-5, "advertisement": 0-5,
        "informational": 0-5, "educational": 0-5}; use them with quality.raters=DIR.
        [convention=nvidia_climb] trains in the format of NVIDIA's released CLIMB classifiers (labels -1..5,
        their preprocessing, best_model_<axis>.bin); [axes=a,b,c] picks the axes (docs/quality.md)
    climb-hpc build-tasks corpus=PATH out=DIR [holdout=F] [seed=N] [items=N] [domains=a,b] [kinds=cont,answer]
        local lm-eval multiple-choice tasks (data + task YAMLs) from the corpus's held-out docs, for
        target=lm_eval target.include_path=DIR (docs/targets.md)
"""

from __future__ import annotations

import json
import logging
import sys
import time

from climb_hpc.config import ConfigError
from climb_hpc.errors import UserError, one_line
from climb_hpc.rundir import RunDir

USAGE = __doc__.strip()
log = logging.getLogger("climb_hpc")


def _kv(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args:
        if "=" not in a:
            raise ConfigError(f"expected key=value, got {a!r}")
        k, v = a.split("=", 1)
        out[k] = v
    return out


def cmd_run(args: list[str]) -> int:
    from climb_hpc.config import compose_for_run
    from climb_hpc.pipeline import run_pipeline

    cfg = compose_for_run(args)
    if cfg.preflight == "run":
        from climb_hpc.preflight import gate, profile_for

        gate(cfg, profile_for(args, cfg))
    t0 = time.time()
    results = run_pipeline(cfg)
    if cfg.get("dry_run"):
        print(f"dry run: nothing submitted; scripts in {RunDir(cfg.run_dir).path / 'sbatch'}")
        return 0
    from climb_hpc.summary import summary_lines

    print(f"\nrun folder: {RunDir(cfg.run_dir).path}  ({time.time() - t0:.1f} s)")
    for r in results:
        if r.skipped:
            what = "already complete"
        elif r.num_tasks:
            what = f"ran {r.ran} task(s) in {r.seconds:.1f} s"
        else:  # a driver stage (search, report): its own work, or its sub-stages' arrays above
            what = f"done in {r.seconds:.1f} s"
        print(f"  {r.name:<10} {r.num_tasks:>6} task(s)  {what}")
    lines = summary_lines(cfg.run_dir)
    if lines:
        print("\n" + "\n".join(lines))
    return 0


def cmd_export(args: list[str]) -> int:
    """``export run_dir=DIR format=parquet out=DIR2 [tokens=N]``: the export stage on a run whose mix is done."""
    from climb_hpc.config import compose_for_run
    from climb_hpc.pipeline import run_one_stage

    short = {"format": "mix.export.format", "out": "mix.export.out", "tokens": "mix.export.token_budget"}
    given = _kv(args)
    if "run_dir" not in given or not RunDir(given["run_dir"]).exists():
        raise ConfigError("export needs run_dir=DIR of a run whose mix stage is complete")
    r = run_one_stage(compose_for_run([f"{short.get(k, k)}={v}" for k, v in given.items()]), "export")
    print(f"export: {r.num_tasks} Parquet shard(s) in {given.get('out') or '(mix.export.out)'}"
          + (" (already complete)" if r.skipped else ""))
    return 0


def _format(args: list[str]) -> tuple[str, list[str]]:
    """(``format=text|json``, the other arguments)."""
    fmt = next((a.split("=", 1)[1] for a in args if a.startswith("format=")), "text")
    if fmt not in ("text", "json"):
        raise ConfigError(f"format={fmt}: choose text or json")
    return fmt, [a for a in args if not a.startswith("format=")]


def cmd_preflight(args: list[str]) -> int:
    from climb_hpc.config import compose_for_run
    from climb_hpc.preflight import dumps, preflight, profile_for, raise_on_failure, render

    fmt, args = _format(args)
    cfg = compose_for_run(args)
    rows = preflight(cfg, profile_for(args, cfg))
    print(dumps(rows) if fmt == "json" else render(rows))
    raise_on_failure(rows)
    return 0


def cmd_status(args: list[str]) -> int:
    from climb_hpc.pipeline import status

    kv = _kv(args)
    if "run_dir" not in kv:
        raise ConfigError("status needs run_dir=DIR")
    unknown = sorted(set(kv) - {"run_dir", "format"})
    if unknown or kv.get("format", "text") not in ("text", "json"):
        raise ConfigError(f"status takes run_dir=DIR and format=text|json; got {' '.join(args)}")
    rows = status(RunDir(kv["run_dir"]))
    if kv.get("format") == "json":
        print(json.dumps({"run_dir": str(RunDir(kv["run_dir"]).path), "stages": rows}, indent=2))
        return 0
    print(f"{'stage':<20}{'done':>8}{'total':>8}{'failed':>8}  state")
    for r in rows:
        _status_line(r, r["stage"])
        for part in r.get("parts", []):  # a driver stage's arrays (the search's rounds)
            _status_line(part, "  " + part["stage"])
        if r["stage_failure"]:
            f = r["stage_failure"]
            print(f"    {f.get('step', 'stage')} failed: {(f.get('error') or '').splitlines()[0]}")
        for f in r["failures"][:5]:
            print(f"    task {f['task']}: {f['error']}\n      log: {f['log']}")
    return 0


def _status_line(r: dict, label: str) -> None:
    total = "?" if r["total"] is None else r["total"]
    state = "complete" if r["complete"] else ("failed" if r["failed"] else ("running" if r["done"] else "waiting"))
    print(f"{label:<20}{r['done']:>8}{total:>8}{r['failed']:>8}  {state}")


def cmd_report(args: list[str]) -> int:
    from climb_hpc.report.build import write_report
    from climb_hpc.report.common import DEFAULTS

    kv = _kv(args)
    if "run_dir" not in kv:
        raise ConfigError("report needs run_dir=DIR")
    unknown = sorted(set(kv) - {"run_dir", *DEFAULTS})
    if unknown:
        raise ConfigError(f"report: unknown option(s) {unknown}; known: run_dir, {', '.join(DEFAULTS)}")
    try:
        opts = {k: int(v) for k, v in kv.items() if k in DEFAULTS}
    except ValueError:
        opts = {"": 0}
    if any(v < 1 for v in opts.values()):
        raise ConfigError(f"report: {', '.join(DEFAULTS)} take whole numbers of at least 1")
    print(write_report(kv["run_dir"], **opts))
    return 0


def cmd_plan(args: list[str]) -> int:
    from climb_hpc.config import compose
    from climb_hpc.plan import as_json, cluster_profile, make_plan, render

    fmt, args = _format(args)
    from climb_hpc import preflight

    profile = cluster_profile(args)
    cfg = compose(args)
    plan = make_plan(cfg, profile)
    rows = preflight.preflight(cfg, profile, plan)
    if fmt == "json":
        print(json.dumps({**as_json(plan), "preflight": preflight.as_json(rows)}, indent=2))
    else:
        print(render(plan, preflight.render(rows)))
    return 0


def cmd_train_raters(args: list[str]) -> int:
    from climb_hpc.clusters.raters import TRAIN_DEFAULTS, train_raters

    kv = _kv(args)
    if "input" not in kv or "output" not in kv:
        raise ConfigError("train-raters needs input=LABELLED.jsonl and output=DIR")
    inp, out, text_field = kv.pop("input"), kv.pop("output"), kv.pop("text_field", "text")
    conv = kv.pop("convention", None)
    axes = [a.strip() for a in kv.pop("axes").strip("[]").split(",") if a.strip()] if "axes" in kv else None
    params: dict[str, object] = {}
    for k, v in kv.items():
        default = TRAIN_DEFAULTS.get(k)
        try:
            params[k] = type(default)(v) if default is not None else (float(v) if "." in v else int(v))
        except ValueError:
            params[k] = v  # a string argument of train_supervised (loss=hs, ...)
    try:
        info = train_raters(inp, out, text_field=text_field, convention_name=conv, axes=axes, **params)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for axis, a in info["axes"].items():
        print(f"  {axis:<14} {a['examples']:>7} examples  labels {a['label_counts']}  {a['seconds']:.1f} s")
    how = f"quality.raters={out}" + (f" quality.convention={conv}" if conv and conv != "climb_hpc" else "")
    print(f"raters in {out}; use them with {how}" + (f" quality.axes=[{','.join(axes)}]" if axes else ""))
    return 0


def cmd_build_tasks(args: list[str]) -> int:
    from climb_hpc.evaltasks import cli

    try:
        return cli(args)
    except ValueError as e:
        raise ConfigError(str(e)) from None


COMMANDS = {"run": cmd_run, "status": cmd_status, "report": cmd_report, "plan": cmd_plan,
            "preflight": cmd_preflight, "train-raters": cmd_train_raters, "export": cmd_export,
            "build-tasks": cmd_build_tasks}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in COMMANDS:
        print(USAGE)
        return 0 if not argv or argv[0] in ("-h", "--help", "help") else 2
    from climb_hpc.pipeline import StageFailed

    try:
        return COMMANDS[argv[0]](argv[1:])
    except (UserError, FileNotFoundError) as e:  # the user's to fix: one line, no traceback
        print(f"climb-hpc: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"climb-hpc: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nclimb-hpc: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
