"""Every code block in README.md and docs/guide.md runs, so the user's guide cannot drift from
the code.

- ```python blocks are executed in order, one shared namespace per document (later blocks use
  names that earlier ones define), each as its own test, in a temporary working directory.
- ```bash blocks: every line that starts with `dlcpu ` runs with the installed `dlcpu` command
  and must exit 0; so does every `mpiexec ... dlcpu ...` line, with the mpiexec installed beside
  the Python running the tests (skipped without MPI, unless DLCPU_REQUIRE_MPI=1).  A block right after `<!-- readme-test: skip (reason) -->` is skipped with
  that reason (installing packages, long benchmarks).
- Blocks in any other language (```text, or none: output shown as text) are not code.
- The documents' relative links point at files and headings that exist.

The documents sit next to tests/, in the source tree; the code under test is the installed package.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"
DOCS = (README, GUIDE)

FENCE = re.compile(r"^```(\S*)\s*$")
SKIP_MARK = re.compile(r"^<!--\s*readme-test:\s*skip\s*\((.+)\)\s*-->\s*$")


def parse_blocks(text, name="README.md"):
    """[(language, first line number, code, skip reason or None)] of the fenced blocks."""
    blocks = []
    lines = text.splitlines()
    i = 0
    last_nonblank = ""
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                last_nonblank = lines[i].strip()
            i += 1
            continue
        lang, start = m.group(1).lower(), i + 1
        j = start
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if j == len(lines):
            raise ValueError(f"{name}: the code block opened on line {i + 1} is never closed")
        skip = SKIP_MARK.match(last_nonblank)
        blocks.append((lang, start + 1, "\n".join(lines[start:j]) + "\n", skip.group(1) if skip else None))
        last_nonblank = ""
        i = j + 1
    return blocks


def doc_blocks(doc):
    """(doc, language, line, code, skip) of every fenced block of one document."""
    if not doc.is_file():
        return []
    return [(doc, *b) for b in parse_blocks(doc.read_text(encoding="utf-8"), doc.name)]


BLOCKS = [b for doc in DOCS for b in doc_blocks(doc)]
PYTHON = [b for b in BLOCKS if b[1] in ("python", "py")]
BASH = [b for b in BLOCKS if b[1] in ("bash", "sh", "shell", "console")]
needs_readme = pytest.mark.skipif(not README.is_file(), reason=f"{README} is not there (tests run outside a source tree)")


def _id(block):
    return f"{block[0].stem}-line{block[2]}"


# ------------------------------------------------------------------------------------ python
@pytest.fixture(scope="module")
def namespaces():
    """One namespace per document, shared by its blocks in order."""
    return {}


@needs_readme
@pytest.mark.parametrize("block", PYTHON, ids=[_id(b) for b in PYTHON])
def test_python_block(block, namespaces, tmp_path, monkeypatch):
    doc, _, line, code, skip = block
    namespace = namespaces.setdefault(doc, {"__name__": "__readme__"})
    if skip:
        pytest.skip(skip)
    if namespace.get("__failed__"):
        pytest.skip(f"an earlier {doc.name} block failed (line {namespace['__failed__']})")
    monkeypatch.chdir(tmp_path)
    # Padding with blank lines makes tracebacks name the document's own line numbers.
    compiled = compile("\n" * (line - 1) + code, str(doc), "exec")
    try:
        exec(compiled, namespace)  # noqa: S102 -- running the README is the point
    except BaseException:
        namespace["__failed__"] = line
        raise


# -------------------------------------------------------------------------------------- bash
def dlcpu_executable():
    """The `dlcpu` installed with the Python running the tests (same venv), else one on PATH."""
    here = Path(sys.executable).parent / "dlcpu"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("dlcpu")


def commands(code):
    return [line.strip() for line in code.splitlines() if line.strip().startswith(("dlcpu ", "mpiexec "))]


def mpiexec_executable():
    """The mpiexec of the `mpi` extra (beside this Python), else one on PATH."""
    return shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def argv_of(cmd, exe):
    """The command line to run: `dlcpu` replaced by the installed one, `mpiexec` by the extra's."""
    argv = shlex.split(cmd, comments=True)
    if argv[0] == "mpiexec":
        launcher = mpiexec_executable()
        if launcher is None:
            if os.environ.get("DLCPU_REQUIRE_MPI", "") == "1":
                pytest.fail(f"`{cmd}` needs mpiexec (pip install '.[mpi]')")
            pytest.skip(f"`{cmd}` needs mpiexec (pip install '.[mpi]')")
        return [launcher, *(exe if a == "dlcpu" else a for a in argv[1:])]
    return [exe, *argv[1:]]


@needs_readme
@pytest.mark.parametrize("block", BASH, ids=[_id(b) for b in BASH])
def test_bash_block(block, tmp_path):
    doc, _, line, code, skip = block
    if skip:
        pytest.skip(skip)
    cmds = commands(code)
    if not cmds:
        pytest.skip(f"the bash block on {doc.name} line {line} has no dlcpu command")
    exe = dlcpu_executable()
    if exe is None:
        pytest.fail("the dlcpu command is not installed")
    for cmd in cmds:
        res = subprocess.run(argv_of(cmd, exe), check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert res.returncode == 0, (
            f"{doc.name} line {line}: `{cmd}` exited {res.returncode}\n"
            f"stdout:\n{res.stdout[-2000:]}\nstderr:\n{res.stderr[-2000:]}")


# ------------------------------------------------------------------------------------- links
def slug(heading):
    """The anchor GitHub makes of a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    found, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


@needs_readme
@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_relative_links_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        file = (doc.parent / path) if path else doc
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"broken links in {doc.name}:\n" + "\n".join(broken)


@needs_readme
def test_both_documents_have_runnable_examples():
    """A renamed or emptied guide would otherwise leave its examples silently untested."""
    for doc in DOCS:
        langs = [b[1] for b in BLOCKS if b[0] == doc]
        assert "python" in langs and "bash" in langs, f"{doc} has no python or no bash block"


# ------------------------------------------------------------------------------- the harness
def test_parser_finds_blocks_and_skip_marks():
    text = ("intro\n\n<!-- readme-test: skip (installs) -->\n```bash\npip install x && dlcpu a\n```\n"
            "```python\nx = 1\n```\n```\nplain output\n```\n```bash\ndlcpu info  # comment\n```\n")
    blocks = parse_blocks(text)
    assert [(b[0], b[3]) for b in blocks] == [("bash", "installs"), ("python", None), ("", None), ("bash", None)]
    assert blocks[1][1] == 8 and blocks[1][2] == "x = 1\n"
    assert commands(blocks[0][2]) == [] and commands(blocks[3][2]) == ["dlcpu info  # comment"]
    assert shlex.split(commands(blocks[3][2])[0], comments=True) == ["dlcpu", "info"]


def test_a_failing_block_fails(tmp_path, monkeypatch):
    """The runners really run the code: a python block that raises fails its test (and later
    blocks are skipped, not run on a half-built namespace); a dlcpu command that exits non-zero
    fails its test."""
    namespaces = {}
    doc = README
    test_python_block((doc, "python", 3, "ok = 1\n", None), namespaces, tmp_path, monkeypatch)
    ns = namespaces[doc]
    assert ns["ok"] == 1
    with pytest.raises(ZeroDivisionError) as info:
        test_python_block((doc, "python", 7, "1 / 0\n", None), namespaces, tmp_path, monkeypatch)
    assert info.traceback[-1].lineno + 1 == 7  # reported at the README's own line
    with pytest.raises(pytest.skip.Exception):
        test_python_block((doc, "python", 9, "ok = 2\n", None), namespaces, tmp_path, monkeypatch)
    assert ns["ok"] == 1
    if dlcpu_executable() is None:
        pytest.skip("the dlcpu command is not installed")
    with pytest.raises(AssertionError, match="exited 2"):
        test_bash_block((doc, "bash", 1, "dlcpu no-such-command\n", None), tmp_path)


def test_slug_matches_github():
    assert slug(" Convolution, ResNet-50 v1.5") == "convolution-resnet-50-v15"
    assert slug(" Winograd F(4x4,3x3) against direct") == "winograd-f4x43x3-against-direct"
    assert slug(" LSTM training step with per-step weight preparation") == \
        "lstm-training-step-with-per-step-weight-preparation"
