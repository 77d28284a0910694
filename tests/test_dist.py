"""The distribution: one version, build-only Cython, the sdist's contents and a fresh install from it,
content-keyed rebuilds, the DLCPU_BOUNDSCHECK=1 debug build, and lint pins that agree.

These tests need the source tree (the repository root above this file); run from an installed copy
of the tests without it, they skip and say so.
"""
import configparser
import glob
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

import dlcpu

ROOT = Path(__file__).resolve().parents[1]


def source_tree():
    """The repository root, or skip: these tests read and build the sources."""
    if not ((ROOT / "setup.py").is_file() and (ROOT / "pyproject.toml").is_file() and (ROOT / "pyx").is_dir()):
        pytest.skip(f"the dlcpu source tree (setup.py, pyproject.toml, pyx/) is not at {ROOT}")
    return ROOT


def pyproject():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    return tomllib.loads((source_tree() / "pyproject.toml").read_text())


def load_setup():
    """setup.py as a module (its setup() call runs only as __main__)."""
    spec = importlib.util.spec_from_file_location("dlcpu_setup", source_tree() / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------- metadata
def test_version_is_written_once():
    meta = pyproject()
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dlcpu._version.__version__"}
    from dlcpu import _version

    assert dlcpu.__version__ == _version.__version__ == importlib.metadata.version("dlcpu")
    hits = [p for p in glob.glob(str(ROOT / "dlcpu" / "**" / "*.py"), recursive=True)
            if re.search(r"^__version__\s*=", Path(p).read_text(), re.MULTILINE)]
    assert [Path(p).name for p in hits] == ["_version.py"]


def test_cython_is_build_only_and_licence_shipped():
    meta = pyproject()
    assert any(r.lower().startswith("cython") for r in meta["build-system"]["requires"])
    assert not any(r.lower().startswith("cython") for r in meta["project"]["dependencies"])
    assert "BSD 3-Clause" in (ROOT / "LICENSE").read_text()
    assert meta["project"]["license"] == "BSD-3-Clause"


def test_lint_pins_agree():
    """tox -e lint and .ci/run install the same linter versions."""
    tox = configparser.ConfigParser()
    tox.read(source_tree() / "tox.ini")
    tox_pins = sorted(tox["testenv:lint"]["deps"].split())
    ci_pins = sorted(set(re.findall(r"\b(?:ruff|cython-lint)==[\w.]+", (ROOT / ".ci" / "run").read_text())))
    assert tox_pins == ci_pins == ["cython-lint==0.22.1", "ruff==0.17.6"]


# ---------------------------------------------------------------------- DLCPU_BOUNDSCHECK=1
def test_boundscheck_switch_sets_the_directives():
    setup = load_setup()
    assert setup.cython_directives({}) == {"language_level": 3}
    for value in ("1", "true", "yes"):
        directives = setup.cython_directives({"DLCPU_BOUNDSCHECK": value})
        assert directives["boundscheck"] is directives["wraparound"] is directives["initializedcheck"] is True
    # the files switch the checks off in their own `# cython:` line, which beats compiler_directives:
    # the debug build's rewritten sources must leave no check off
    checks_off = re.compile(r"\b(boundscheck|wraparound|initializedcheck)(\s*=\s*|\s*\(\s*)False")
    debug = setup.cython_directives({"DLCPU_BOUNDSCHECK": "1"})
    for path in sorted((ROOT / "pyx").glob("*.pyx")) + sorted((ROOT / "pyx").glob("*.pxd")):
        text = path.read_text()
        rewritten = setup.force_directives(text, debug)
        assert not checks_off.search(rewritten), path.name
        assert rewritten.count("\n") == text.count("\n"), "line numbers must stay those of the source"
        assert setup.force_directives(text, setup.cython_directives({})) == text


def test_boundscheck_switch_reaches_the_generated_c(tmp_path, monkeypatch):
    """Cython output of one real module: no index checks by default, index checks with the switch;
    and a second run with nothing changed regenerates nothing."""
    pytest.importorskip("Cython", reason="Cython is needed to generate C (pip install '.[test]')")
    setup = load_setup()
    monkeypatch.chdir(source_tree())
    generated = {}
    for mode, env in (("release", {}), ("boundscheck", {"DLCPU_BOUNDSCHECK": "1"})):
        ext = setup.make_extension("pool", "pyx/pool.pyx")
        directives = setup.cython_directives(env)
        assert setup.cythonize_changed([ext], directives, build_dir=str(tmp_path)) == ["dlcpu._ext.pool"]
        (c_file,) = ext.sources
        assert c_file.startswith(str(tmp_path / mode))
        generated[mode] = Path(c_file).read_text()
        ext = setup.make_extension("pool", "pyx/pool.pyx")
        assert setup.cythonize_changed([ext], directives, build_dir=str(tmp_path)) == []
        assert ext.sources == [c_file]
    assert "RaiseBufferIndexError" not in generated["release"]
    assert "RaiseBufferIndexError" in generated["boundscheck"]


# --------------------------------------------------------------------- no rebuild when unchanged
@pytest.mark.slow
def test_build_ext_skips_unchanged_extensions(tmp_path, monkeypatch, capfd):
    """A second build of unchanged sources runs neither Cython nor the compiler, even when every
    output is older than its inputs (as after pip's fresh isolated build environment)."""
    pytest.importorskip("Cython", reason="Cython is needed to build (pip install '.[test]')")
    from setuptools import Distribution

    setup = load_setup()
    monkeypatch.chdir(source_tree())

    def build():
        ext = setup.make_extension("cpu", "pyx/cpu.pyx")
        dist = Distribution({"name": "dlcpu-build-test", "ext_modules": [ext],
                             "cmdclass": {"build_ext": setup.BuildExt}})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib, cmd.build_temp = str(tmp_path / "lib"), str(tmp_path / "temp")
        cmd.cython_build_dir = str(tmp_path / "cython")
        cmd.ensure_finalized()
        cmd.run()
        return Path(cmd.get_ext_fullpath(ext.name)), Path(ext.sources[0])

    so, c_file = build()
    assert so.is_file() and c_file.is_file()
    for path in (so, c_file):
        os.utime(path, (1, 1))  # older than every source, header and Cython include
    capfd.readouterr()
    assert build() == (so, c_file)
    out = capfd.readouterr().out
    assert "dlcpu._ext.cpu is up to date" in out and "ythonizing" not in out
    assert so.stat().st_mtime == 1 and c_file.stat().st_mtime == 1


# ---------------------------------------------------------------------------------------- sdist
@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    root = source_tree()
    pytest.importorskip("build", reason="python -m build makes the sdist (pip install '.[test]')")
    out = tmp_path_factory.mktemp("sdist")
    res = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(root)],
                         check=False, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (path,) = out.glob("dlcpu-*.tar.gz")
    return path


@pytest.mark.slow
def test_sdist_holds_what_a_build_needs(sdist):
    with tarfile.open(sdist) as tar:
        top = f"dlcpu-{dlcpu.__version__}/"
        names = {n[len(top):] for n in tar.getnames() if n.startswith(top)}
    needed = {"LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in"}
    for pattern in ("pyx/*.pyx", "pyx/*.pxd", "pyx/*.pxi", "pyx/kernels/*.h", "cli/*.py", "dlcpu/**/*.py",
                    "dlcpu/workloads/*.csv", "docs/*.md"):
        needed |= {Path(p).relative_to(ROOT).as_posix() for p in glob.glob(str(ROOT / pattern), recursive=True)
                   if "__pycache__" not in p}
    assert not needed - names, f"missing from the sdist: {sorted(needed - names)}"
    built = [n for n in names if n.endswith((".c", ".cpp", ".so", ".o")) or n.startswith("build/")]
    assert not built, f"build products in the sdist: {built}"


@pytest.mark.slow
def test_sdist_installs_in_a_fresh_venv(sdist, tmp_path):
    """pip install dlcpu-*.tar.gz into a fresh venv, as a debug build (DLCPU_BOUNDSCHECK=1), then
    import it, run a checked kernel and `dlcpu info`.  --no-deps, and the venv sees this environment's
    packages (numpy, typer, ...) after its own: nothing is downloaded but the build requirements."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    here = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    Path(purelib, "_dlcpu_test_parent.pth").write_text("".join(p + "\n" for p in here))

    env = dict(os.environ, DLCPU_BOUNDSCHECK="1")
    res = subprocess.run([py, "-m", "pip", "install", "--no-deps", str(sdist)], check=False, capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=3000)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]

    code = ("import json, numpy as np, dlcpu\n"
            "x = np.arange(12, dtype=np.float32).reshape(3, 4)\n"
            "y = np.ones((4, 5), np.float32)\n"
            "assert np.allclose(dlcpu.matmul(x, y), x @ y)\n"
            "print(json.dumps([dlcpu.__file__, dlcpu.__version__]))\n")
    res = subprocess.run([py, "-c", code], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    where, version = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    assert version == dlcpu.__version__

    res = subprocess.run([venv / "bin" / "dlcpu", "info", "--json"], check=False, capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    info = json.loads(res.stdout)
    assert info["version"] == dlcpu.__version__
    assert "DLCPU_BOUNDSCHECK=1" in info["compile_flags"]
    assert "-Og" in info["compile_flags"].split() and "-O3" not in info["compile_flags"].split()
