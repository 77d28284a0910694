"""Build of dlcpu's Cython + OpenMP extensions.

One table maps pyx/<name>.pyx to dlcpu._ext.<name>.  No -march flag: every SIMD function carries
its own target attribute (pyx/kernels/isa.h), so one build runs on any x86-64 and picks its ISA
path at run time.  OpenMP is probed by compiling and running a tiny program; DLCPU_NO_OPENMP=1
builds serial kernels instead.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXTENSIONS = {
    "cpu": "pyx/cpu.pyx",
    "layout": "pyx/layout.pyx",
    "brgemm": "pyx/brgemm.pyx",
    "conv": "pyx/conv.pyx",
    "pool": "pyx/pool.pyx",
    "norm": "pyx/norm.pyx",
    "rnn": "pyx/rnn.pyx",
}

BASE_CFLAGS = ["-O3", "-fno-strict-aliasing", "-Wno-unused-function", "-Wno-unreachable-code"]
OPENMP_FLAG = "-fopenmp"

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


class BuildExt(build_ext):
    def build_extensions(self):
        use_openmp = os.environ.get("DLCPU_NO_OPENMP", "0") not in ("1", "true", "TRUE", "yes")
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
        flags = BASE_CFLAGS + ([OPENMP_FLAG] if use_openmp else [])
        build_flags = " ".join(flags)
        for ext in self.extensions:
            ext.extra_compile_args = list(flags)
            ext.extra_link_args = [OPENMP_FLAG] if use_openmp else []
            ext.define_macros = list(ext.define_macros or []) + [
                ("DLCPU_BUILD_FLAGS", '"%s"' % build_flags),
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            ]
        super().build_extensions()


extensions = [
    Extension(
        f"dlcpu._ext.{name}",
        [path],
        include_dirs=["pyx/kernels", "pyx", numpy.get_include()],
        depends=[os.path.join("pyx/kernels", h) for h in os.listdir("pyx/kernels")]
        + ["pyx/dlcpu_kernels.pxd"],
    )
    for name, path in EXTENSIONS.items()
]

setup(
    packages=["dlcpu", "dlcpu._ext", "dlcpu.nn", "dlcpu.cli"],
    package_dir={"dlcpu": "dlcpu", "dlcpu.cli": "cli"},
    package_data={"dlcpu": ["workloads/*.csv"]},
    ext_modules=cythonize(
        extensions,
        include_path=["pyx"],
        compiler_directives={"language_level": 3},
    ),
    cmdclass={"build_ext": BuildExt},
)
