"""The `dlcpu` command: assembles the command groups; parse, call the library, render.

    dlcpu --version
    dlcpu info [--json]                                    cli/info.py
    dlcpu bench {peak,conv,gemm,lstm,train digits} ...     cli/bench.py
    dlcpu train {digits,digits-rnn} ...                    cli/train.py
    dlcpu faults {inject,campaign,report,compare} ...      cli/faults.py
    dlcpu scale threads WORKLOAD ...                       cli/scale.py

Exit codes: 0 success, 1 a failure while running, 2 a bad option value; every error is one line
on stderr (DLCPU_DEBUG=1 for the traceback).  --json prints JSON on stdout only; progress and
logs go to stderr.  Shared output and error handling: cli/_output.py.  Also `python -m dlcpu`.
"""
import sys
from typing import Annotated

import typer

from .. import __version__
from . import bench, faults, info, quantize, scale, train
from ._output import command, group, run_app

app = group("dlcpu: CPU deep-learning kernels, benchmarks and tools.")


def _print_version(value):
    if value:
        typer.echo(f"dlcpu {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    """dlcpu: CPU deep-learning kernels, benchmarks and tools."""


command(app, "info")(info.info)
command(app, "quantize")(quantize.quantize)
app.add_typer(bench.app, name="bench")
app.add_typer(train.app, name="train")
app.add_typer(faults.app, name="faults")
app.add_typer(scale.app, name="scale")


def main(args=None):
    """Entry point of the `dlcpu` console script and of `python -m dlcpu`."""
    sys.exit(run_app(app, args))


if __name__ == "__main__":
    main()
