"""climb-hpc installs like a package: the wheel built from this checkout carries the Hydra config tree and the
sbatch scripts, declares exactly one faiss per extra, and, installed (not editable) in a fresh venv, runs from
a folder that is not the checkout with CLIMB_HPC_CONFIGS unset.

The fresh venv gets the dev venv's dependencies without installing them again: a .pth file puts the dev
venv's site-packages on its path, AFTER its own. Plain path lines in a .pth are not scanned for .pth files,
so the dev venv's editable-install finder stays inactive and ``climb_hpc`` comes from the wheel."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")


def _copy_tree(dst: Path) -> None:
    """What a fresh clone plus this working tree holds (tracked and untracked-not-ignored files, links kept),
    so the build leaves no build/ or egg-info in the checkout and sees no stale build output."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src, out = ROOT / rel, dst / rel
        if not (src.exists() or src.is_symlink()):  # deleted in the working tree
            continue
        if any((ROOT / up).is_symlink() for up in Path(rel).parents if up != Path(".")):  # now behind a link
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, out)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the wheel is built from the files git sees)")
    tmp = tmp_path_factory.mktemp("wheel")
    _copy_tree(tmp / "src")
    # no network for the build backend when this venv already has setuptools
    no_isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    p = subprocess.run([*PIP, "wheel", "--no-deps", *no_isolation, "-w", str(tmp / "dist"), str(tmp / "src")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("climb_hpc-*.whl")
    return whl


def test_wheel_ships_configs_and_sbatch_scripts_and_one_faiss_per_extra(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "climb_hpc/configs/config.yaml" in names
    yamls = {f"climb_hpc/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").glob("*/*.yaml")}
    assert len(yamls) > 10 and not yamls - names, sorted(yamls - names)
    sbatch = {f"climb_hpc/slurm/{p.name}" for p in (ROOT / "slurm").glob("*.sbatch")}
    assert len(sbatch) == 3 and not sbatch - names, sorted(sbatch - names)
    templates = {f"climb_hpc/evaltasks/templates/{p.name}" for p in (ROOT / "climb_hpc/evaltasks/templates").glob("*.yaml")}
    assert len(templates) == 2 and not templates - names, sorted(templates - names)  # climb-hpc build-tasks
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "configs/", "slurm/", "hpc/"))]

    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [ln.split(":", 1)[1].strip() for ln in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
                if ln.startswith("Requires-Dist:")]
    faiss = sorted(r for r in requires if r.lower().startswith("faiss"))
    assert len(faiss) == 2, requires  # nothing faiss in the base dependencies: [gpu] holds exactly one
    assert faiss[0].startswith("faiss-cpu") and faiss[0].endswith('; extra == "cpu"'), faiss
    assert faiss[1].startswith("faiss-gpu-cu12") and faiss[1].endswith('; extra == "gpu"'), faiss


class Installed:
    """The wheel installed in a fresh venv, and a working folder that is not the checkout."""

    def __init__(self, wheel: Path, tmp: Path):
        self.tmp, self.venv, self.work = tmp, tmp / "venv", tmp / "work"
        # this venv's pip installs into the fresh one (pip >= 22.3 has --python); an older pip: the fresh venv's own
        own_pip = tuple(int(x) for x in importlib.metadata.version("pip").split(".")[:2]) < (22, 3)
        subprocess.run([sys.executable, "-m", "venv", *([] if own_pip else ["--without-pip"]), str(self.venv)],
                       check=True)
        self.py, self.cli = self.venv / "bin" / "python", str(self.venv / "bin" / "climb-hpc")
        pip = [str(self.py), *PIP[1:]] if own_pip else [*PIP, "--python", str(self.py)]
        # the wheel first, while the fresh venv sees only itself (pip would otherwise find the dev venv's
        # editable climb-hpc of the same version and keep it)
        p = subprocess.run([*pip, "install", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]
        site = self.run(str(self.py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        dev = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        (Path(site.stdout.strip()) / "zz_dev_venv_deps.pth").write_text("".join(f"{p}\n" for p in dev))

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("CLIMB_HPC_CONFIGS", "CLIMB_HPC_VENV", "PYTHONPATH",
                                                                "VIRTUAL_ENV")}
        return {**env, "PATH": f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}  # as if activated

    def run(self, *args: str) -> subprocess.CompletedProcess:
        self.work.mkdir(exist_ok=True)
        return subprocess.run(args, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=300)

    def complete(self, run_dir: Path, stage: str) -> dict:
        st = self.run(self.cli, "status", f"run_dir={run_dir}", "format=json")
        assert st.returncode == 0, st.stderr
        row = {s["stage"]: s for s in json.loads(st.stdout)["stages"]}[stage]
        assert row["complete"] and row["done"] == row["total"], row
        return row


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Installed:
    return Installed(wheel, tmp_path_factory.mktemp("installed"))


def test_installed_wheel_runs_outside_the_checkout(installed):
    where = installed.run(str(installed.py), "-c",
                          "import climb_hpc, climb_hpc.config as c; print(climb_hpc.__file__); print(c.config_dir())")
    assert where.returncode == 0, where.stderr
    pkg, configs = (Path(line) for line in where.stdout.split())
    assert pkg.is_relative_to(installed.venv) and configs == pkg.parent / "configs", where.stdout
    assert not pkg.resolve().is_relative_to(ROOT)

    run = installed.tmp / "r"
    r = installed.run(installed.cli, "run", f"run_dir={run}", "pipeline=selftest", "cluster=local", "selftest.tasks=2",
                      "until=noop", "progress=false")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert installed.complete(run, "noop")["total"] == 2

    run2 = installed.tmp / "r2"  # the built-in corpus, which the package generates
    r2 = installed.run(installed.cli, "run", f"run_dir={run2}", "until=ingest", "corpus.builtin.docs_per_domain=5",
                       "progress=false")
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-2000:]
    assert installed.complete(run2, "ingest")["total"] == 7  # one task a built-in domain
    assert len(list((run2 / "ingest" / "docs").glob("*.parquet"))) == 7


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_installed_controller_sbatch_runs_with_the_activated_venv(installed):
    """The wheel's controller.sbatch, submitted from a folder with no .venv and CLIMB_HPC_VENV unset: it runs
    the climb-hpc of the PATH sbatch passes on (the activated fresh venv)."""
    where = installed.run(str(installed.py), "-c",
                          "import climb_hpc, pathlib; print(pathlib.Path(climb_hpc.__file__).parent / 'slurm')")
    script = Path(where.stdout.strip()) / "controller.sbatch"
    assert script.is_relative_to(installed.venv) and script.is_file(), where
    run, log = installed.tmp / "slurm_run", installed.tmp / "controller.log"
    job = installed.run("sbatch", "--parsable", "--wait", "--mem=1G", f"--output={log}", str(script), f"run_dir={run}",
                        "pipeline=selftest", "until=noop", "selftest.tasks=2", "cluster.poll_s=0.5")
    assert job.returncode == 0, job.stderr + (log.read_text()[-2000:] if log.exists() else "")
    assert installed.complete(run, "noop")["total"] == 2


def test_missing_faiss_is_one_line_naming_both_installs(monkeypatch):
    from climb_hpc.clusters import import_faiss
    from climb_hpc.errors import ConfigError

    monkeypatch.setitem(sys.modules, "faiss", None)  # as if neither faiss wheel were installed
    with pytest.raises(ConfigError) as e:
        import_faiss()
    msg = str(e.value)
    assert "\n" not in msg and "pip install 'climb-hpc[cpu]'" in msg and "pip install 'climb-hpc[gpu]'" in msg
