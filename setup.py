"""Build of dlcpu's Cython + OpenMP extensions.

One table maps pyx/<name>.pyx to dlcpu._ext.<name>.  No -march flag: every SIMD function carries
its own target attribute (pyx/kernels/isa.h), so one build runs on any x86-64 and picks its ISA
path at run time.  OpenMP is probed by compiling and running a tiny program.

Build-time switches (environment variables):
    DLCPU_NO_OPENMP=1    serial kernels instead of OpenMP ones
    DLCPU_BOUNDSCHECK=1  debug build: Cython boundscheck, wraparound and initializedcheck on in
                         every module, whatever the files' `# cython:` lines say, compiled at
                         -Og (a seventh of the -O3 compile time; its kernels are slower); `dlcpu info`
                         shows DLCPU_BOUNDSCHECK=1 in compile_flags
    DLCPU_BUILD_JOBS=N   parallel jobs for Cython and the C compiler (default: the usable CPUs)

What is rebuilt is decided by content, not by file times.  pip builds every install in a fresh
isolated environment whose Cython and numpy files are all newer than the last build's output, so
timestamp checks (cythonize's and build_ext's) would regenerate and recompile everything on every
`pip install .`.  Instead each generated C file carries a key (Cython version, directives, the
.pyx and every .pxd/.pxi) and each compiled extension a key (C source, headers, flags, compiler,
numpy and Python versions); a step runs only when its key changed.  Generated C lives in
build/cython/, never next to the sources.
"""
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXTENSIONS = {
    "cpu": "pyx/cpu.pyx",
    "layout": "pyx/layout.pyx",
    "brgemm": "pyx/brgemm.pyx",
    "conv_direct": "pyx/conv_direct.pyx",
    "conv_wu": "pyx/conv_wu.pyx",
    "winograd": "pyx/winograd.pyx",
    "pool": "pyx/pool.pyx",
    "norm": "pyx/norm.pyx",
    "rnn": "pyx/rnn.pyx",
    "faults": "pyx/faults.pyx",
    "approx": "pyx/approx.pyx",
    "optim": "pyx/optim.pyx",
    "precision": "pyx/precision.pyx",
}

PYX_DIR = "pyx"
KERNEL_DIR = os.path.join(PYX_DIR, "kernels")
CYTHON_BUILD_DIR = os.path.join("build", "cython")

BASE_CFLAGS = ["-O3", "-fno-strict-aliasing", "-Wno-unused-function", "-Wno-unreachable-code"]
#: a debug build's optimization level, gcc's level for debugging.  With the checks on, gcc 12
#: compiles the microkernel tables at -Og in a quarter of the -O1 time and a seventh of -O3's
#: (conv_direct 19 against 86 and 141 s, brgemm 20 against 77 and 149 s); its convolutions run
#: as fast as -O1's, its matmul packing 3x slower (256^3: 0.75 against 0.26 ms).  -O0 compiled
#: in 14 s but ran the kernels 15-18x slower (measured 2026-12-02).
DEBUG_OPT = "-Og"
OPENMP_FLAG = "-fopenmp"

#: what DLCPU_BOUNDSCHECK=1 switches on in every module
DEBUG_DIRECTIVES = {"boundscheck": True, "wraparound": True, "initializedcheck": True}

OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d\n", n > 0 && omp_get_max_threads() > 0);
    return 0;
}
"""


def env_flag(name, env=None):
    env = os.environ if env is None else env
    return env.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def build_jobs(env=None):
    """Parallel jobs: DLCPU_BUILD_JOBS, else the CPUs this process may run on."""
    env = os.environ if env is None else env
    if env.get("DLCPU_BUILD_JOBS"):
        return max(1, int(env["DLCPU_BUILD_JOBS"]))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cython_directives(env=None):
    """The compiler directives of this build (DLCPU_BOUNDSCHECK=1 adds DEBUG_DIRECTIVES)."""
    directives = {"language_level": 3}
    if env_flag("DLCPU_BOUNDSCHECK", env):
        directives.update(DEBUG_DIRECTIVES)
    return directives


def force_directives(text, directives):
    """Source text with every check that `directives` switches on switched on in the text too.

    Cython gives a file's own `# cython:` line, decorators and `with` blocks precedence over the
    compiler_directives handed to cythonize (by design: cython/cython#829), and every dlcpu module
    turns the checks off in its first line.  A debug build therefore compiles a copy of each source
    in which `boundscheck=False` / `boundscheck(False)` (and the other checks) read True.
    """
    names = sorted(k for k, v in directives.items() if v is True and k in DEBUG_DIRECTIVES)
    if not names:
        return text
    pattern = re.compile(r"\b({})(\s*=\s*|\s*\(\s*)False\b".format("|".join(names)))
    return pattern.sub(r"\1\2True", text)


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def _write_if_changed(path, text):
    if _read(path) != text:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def content_key(parts, files=()):
    """sha256 over JSON-able parts and the contents of files."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in sorted(set(files)):
        h.update(b"\0" + path.encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def cython_declarations(src_dir=PYX_DIR):
    return sorted(glob.glob(os.path.join(src_dir, "*.pxd")) + glob.glob(os.path.join(src_dir, "*.pxi")))


def cythonize_changed(extensions, directives, jobs=1, build_dir=CYTHON_BUILD_DIR):
    """Point each extension's sources at its generated C file, running Cython only on the modules
    whose key (Cython version, directives, the .pyx and all .pxd/.pxi) changed since the C file
    was written.  Debug builds (DEBUG_DIRECTIVES on) compile rewritten copies, see force_directives."""
    try:
        import Cython
        from Cython.Build import cythonize
    except ImportError:
        sys.exit("dlcpu: building from source needs Cython>=3 (pip installs it from [build-system] requires)")
    import numpy

    debug = any(directives.get(k) for k in DEBUG_DIRECTIVES)
    out_dir = os.path.join(build_dir, "boundscheck" if debug else "release")
    declarations = cython_declarations()
    if debug:
        # the whole Cython tree, so that cimports resolve among the rewritten copies
        include_dir = os.path.join(out_dir, PYX_DIR)
        for path in declarations + sorted({ext.dlcpu_pyx for ext in extensions}):
            _write_if_changed(os.path.join(include_dir, os.path.basename(path)),
                              force_directives(_read(path), directives))
    else:
        include_dir = PYX_DIR

    stale = []
    for ext in extensions:
        pyx = ext.dlcpu_pyx
        if debug:
            source = os.path.join(include_dir, os.path.basename(pyx))
            c_file = os.path.splitext(source)[0] + ".c"
        else:
            source = pyx
            c_file = os.path.join(out_dir, os.path.splitext(pyx)[0] + ".c")
        key = content_key([Cython.__version__, numpy.__version__, directives, debug], [pyx] + declarations)
        if _read(c_file + ".key") != key or not os.path.exists(c_file):
            stale.append((Extension(ext.name, [source]), c_file, key))
        ext.sources = [c_file]

    if stale:
        print("dlcpu: cythonizing {} ({} jobs): {}".format(
            len(stale), min(jobs, len(stale)), ", ".join(s[0].name for s in stale)), flush=True)
        done = cythonize(
            [s[0] for s in stale],
            include_path=[include_dir],
            compiler_directives=directives,
            build_dir=None if debug else out_dir,
            force=True,
            nthreads=jobs if len(stale) > 1 and jobs > 1 else 0,
        )
        for (_, c_file, key), module in zip(stale, done):
            if module.sources != [c_file]:
                raise RuntimeError(f"cythonize wrote {module.sources}, expected {c_file}")
            _write_if_changed(c_file + ".key", key)
    return [ext.name for ext, _, _ in stale]


def openmp_available():
    """Compile, link and run a small OpenMP program with the compiler Python was built with."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    if shutil.which(cc) is None:
        return False, f"compiler {cc!r} not found"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        try:
            subprocess.run([cc, OPENMP_FLAG, src, "-o", exe], check=True, capture_output=True)
            out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
        except (subprocess.CalledProcessError, OSError) as exc:
            err = getattr(exc, "stderr", b"") or b""
            if isinstance(err, bytes):
                err = err.decode(errors="replace")
            return False, err.strip().splitlines()[-1] if err.strip() else str(exc)
        return out.strip() == "1", "probe ran"


def compiler_identity(command):
    """The compiler command and its --version banner (part of every extension's build key)."""
    try:
        banner = subprocess.run([command[0], "--version"], check=False, capture_output=True, text=True).stdout
    except OSError:
        banner = ""
    return [list(command), banner.strip()]


class BuildExt(build_ext):
    """Parallel, content-keyed build: Cython and gcc run only where their inputs changed."""

    cython_build_dir = CYTHON_BUILD_DIR

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = build_jobs()

    def build_extensions(self):
        import numpy

        use_openmp = not env_flag("DLCPU_NO_OPENMP")
        if use_openmp:
            ok, why = openmp_available()
            if not ok:
                sys.stderr.write(
                    "\n*** dlcpu: the C compiler cannot build OpenMP code "
                    f"({why}).\n*** Install an OpenMP-capable compiler (gcc: it ships libgomp; "
                    "clang: install libomp-dev),\n*** or build serial kernels with "
                    "DLCPU_NO_OPENMP=1 pip install .\n\n"
                )
                raise SystemExit(1)
        directives = cython_directives()
        debug = any(directives.get(k) for k in DEBUG_DIRECTIVES)
        jobs = build_jobs() if self.parallel is True else int(self.parallel)
        cythonize_changed(self.extensions, directives, jobs=jobs, build_dir=self.cython_build_dir)

        flags = [DEBUG_OPT if debug and f == "-O3" else f for f in BASE_CFLAGS] + ([OPENMP_FLAG] if use_openmp else [])
        build_flags = " ".join(flags + (["DLCPU_BOUNDSCHECK=1"] if debug else []))
        numpy_include = numpy.get_include()
        for ext in self.extensions:
            ext.include_dirs = [KERNEL_DIR, PYX_DIR, numpy_include]
            ext.extra_compile_args = list(flags)
            ext.extra_link_args = [OPENMP_FLAG] if use_openmp else []
            ext.define_macros = [
                ("DLCPU_BUILD_FLAGS", f'"{build_flags}"'),
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            ]
        # the isolated build environment's path changes with every pip run: key numpy by version
        self._key_common = [
            compiler_identity(self.compiler.compiler_so),
            compiler_identity(self.compiler.linker_so),
            sys.version,
            sysconfig.get_config_var("EXT_SUFFIX"),
            "numpy " + numpy.__version__,
            numpy_include,
        ]
        super().build_extensions()

    def _build_key(self, ext):
        common = list(self._key_common)
        numpy_include = common.pop()
        include_dirs = ["<numpy>" if d == numpy_include else d for d in ext.include_dirs]
        return content_key(
            [common, include_dirs, ext.extra_compile_args, ext.extra_link_args, ext.define_macros,
             ext.libraries, ext.library_dirs],
            list(ext.sources) + list(ext.depends),
        )

    def build_extension(self, ext):
        ext_path = self.get_ext_fullpath(ext.name)
        stamp = os.path.join(self.build_temp, ext.name + ".key")
        key = self._build_key(ext)
        if not self.force and os.path.exists(ext_path) and _read(stamp) == key:
            print(f"dlcpu: {ext.name} is up to date (same C source, headers, flags and compiler)", flush=True)
            return
        if os.path.exists(ext_path):
            os.remove(ext_path)  # build_ext would otherwise trust file times
        super().build_extension(ext)
        _write_if_changed(stamp, key)


def make_extension(name, path):
    ext = Extension(
        f"dlcpu._ext.{name}",
        [path],
        depends=sorted(glob.glob(os.path.join(KERNEL_DIR, "*.h"))) + cython_declarations(),
    )
    ext.dlcpu_pyx = path  # build_ext replaces sources with the generated C file
    return ext


if __name__ == "__main__":
    setup(
        packages=["dlcpu", "dlcpu._ext", "dlcpu.nn", "dlcpu.faults", "dlcpu.approx", "dlcpu.cli"],
        package_dir={"dlcpu": "dlcpu", "dlcpu.cli": "cli"},
        package_data={"dlcpu": ["workloads/*.csv"]},
        ext_modules=[make_extension(name, path) for name, path in EXTENSIONS.items()],
        cmdclass={"build_ext": BuildExt},
    )
