"""Shared output and error handling of the `dlcpu` command groups.

Design: stdout carries results only (tables, or JSON with --json); progress bars, logs and errors
go to stderr.  Every error is one line, `error: ...`, and the exit code says whose fault it was:

    2  a bad option value (typer's own checks, `bad_option`, unparseable lists, unusable --out)
    1  a failure while running (CliError, or a ValueError/TypeError/OSError/... from the library)
    130  interrupted (Ctrl-C), as typer and shells have it

`run_app` prints typer's usage errors as that one line too instead of a help panel.
DLCPU_DEBUG=1 re-raises handled errors, for their traceback.  Commands are declared with
`command(app, name)`, which also registers the error handler and the help classes below.
"""
import functools
import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer vendors click and does not re-export these
from typer.core import TyperCommand, TyperGroup

from .. import _config, cpu
from ..distributed import DistributedError
from ..nn import check_writable
from ..train import TrainingDiverged

# Tables are wide; when stdout is not a terminal (CI logs, files) do not squeeze them to 80 columns.
out = Console()
if not out.is_terminal:
    out = Console(width=160)
err = Console(stderr=True)

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: the --json flag every reporting command takes
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables (progress and logs stay on stderr).")]
#: --threads as a comma list, for the benchmarks
ThreadList = Annotated[str | None, typer.Option("--threads", metavar="<list>",
                                                help="Comma list of thread counts, e.g. 1,2 (default: all cores).")]


class CliError(Exception):
    """A failure while running: printed as one line, exit code 1."""


def bad_option(option, message):
    """A bad option value found by the command itself: one line, exit code 2."""
    return typer.BadParameter(message, param_hint=f"'{option}'")


def print_error(message):
    # emoji=False: rich would turn "results.jsonl:100: corrupt line" into an emoji
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True, emoji=False)


def handled(fn):
    """Turn a command's handled failures into one line on stderr and exit code 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, CliError, MemoryError, OSError, TrainingDiverged, DistributedError) as exc:
            if _config.env_debug():
                raise
            print_error(_escape(str(exc) or type(exc).__name__))
            raise typer.Exit(EXIT_FAILURE) from None

    return wrapper


def _escape(text):
    return text.replace("[", r"\[")


def _hide_flag_types(params):
    # typer 0.29's rich help shows a type column for every option and prints "<bool>" for flags,
    # --help included, which take no value; an empty metavar leaves that column blank for them.
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose --help shows value types only for options that take a value."""

    def get_params(self, ctx):
        return _hide_flag_types(super().get_params(ctx))


class Group(TyperGroup):
    """A command group, with the same help rendering as Command."""

    def get_params(self, ctx):
        return _hide_flag_types(super().get_params(ctx))


def group(help):
    """A Typer app for a command group."""
    return typer.Typer(cls=Group, no_args_is_help=True, add_completion=False, help=help)


def command(app, name=None):
    """Register fn as a command of `app`, with one-line error handling (see `handled`)."""
    def decorate(fn):
        app.command(name, cls=Command)(handled(fn))
        return fn

    return decorate


def run_app(app, args=None):
    """Run a Typer app as the `dlcpu` program; returns the exit code."""
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=args, prog_name="dlcpu", standalone_mode=False)
    except UsageError as exc:
        if isinstance(exc, NoArgsIsHelpError):  # `dlcpu` or `dlcpu bench` alone: the help, exit 2
            exc.show()
            return EXIT_USAGE
        message = _one_line(exc.format_message())
        # under mpiexec every rank finds the same bad option: rank 0 says it, unless the message
        # names its rank (a file missing on one node)
        if not _launched_rank_above_zero() or "(on rank " in message:
            print_error(_escape(message))
        return EXIT_USAGE
    except typer.Abort:
        print_error("aborted")
        return EXIT_FAILURE
    if rv == EXIT_INTERRUPTED:  # typer turns Ctrl-C into this exit code
        print_error("interrupted")
    return rv if isinstance(rv, int) else 0


def _launched_rank_above_zero():
    """True in a process an MPI launcher started as a rank other than 0 (no MPI import)."""
    from ..distributed import launcher_rank

    return bool(launcher_rank())


def _one_line(text):
    return " ".join(text.split())


# ------------------------------------------------------------------------------------ helpers
def parse_threads(text, option="--threads", maximum=None):
    """'1,2' -> [1, 2]; None -> [all threads].  A bad list is a bad option value (exit 2).
    maximum: the largest value allowed (default: the thread limit)."""
    if text is None:
        return [cpu.resolve_threads()]
    maximum = cpu.MAX_THREADS if maximum is None else maximum
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise bad_option(option, f"must be a comma list of integers, got {text!r}") from None
    if not values or any(not 1 <= v <= maximum for v in values):
        raise bad_option(option, f"values must be between 1 and {maximum}, got {text!r}")
    return values


def parse_choices(text, choices, option):
    """'a,b' -> ['a', 'b'], each one of `choices`; else a bad option value (exit 2)."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in choices for v in values):
        raise bad_option(option, f"must be a comma list of {', '.join(choices)}, got {text!r}")
    return list(dict.fromkeys(values))       # each once, in the order given


def check_output_path(path, option="--out"):
    """Before any work: `path` can be written (dlcpu.nn.check_writable); else a bad option value."""
    if path is not None:
        if not path.strip():
            raise bad_option(option, "must be a file name, got an empty string")
        try:
            check_writable(path)
        except ValueError as exc:
            raise bad_option(option, str(exc)) from None
    return path


def emit_json(obj):
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def progress(*extra_columns):
    """A transient rich progress bar on stderr; off when stderr is not a terminal (a log file or
    a pipe would only get the blank line a stopped bar leaves)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra_columns,
                    TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal)
