"""The data-parallel options shared by `dlcpu train --dist` and `dlcpu scale ranks`: their typer
declarations and their check into a dlcpu.distributed.DataParallelOptions."""
from dataclasses import dataclass
from typing import Annotated

import typer

from ._output import bad_option

FusionThreshold = Annotated[str | None, typer.Option(
    "--fusion-threshold", metavar="<bytes>",
    help="Data-parallel: gradients travel in fusion buckets of at most this size (e.g. 32K, 1M; 0: one per "
         "parameter), each started as soon as backward has produced it (default 32K).")]
Compress = Annotated[str | None, typer.Option(
    "--compress", metavar="<kind>",
    help="Data-parallel: none, or bf16 (gradients divided by the batch share, rounded to bf16 and summed "
         "in bf16: half the bytes).")]
CommCore = Annotated[bool, typer.Option(
    "--comm-core", help="Data-parallel: give each rank an MPI progress thread (MPICH's asynchronous progress) "
                        "on a core of its own, one compute thread fewer by default.")]
Overlap = Annotated[bool, typer.Option(
    "--overlap/--no-overlap", help="Data-parallel: start each bucket's allreduce during backward (default), "
                                   "or all of them after it (to measure what overlap saves).")]


@dataclass
class DistArgs:
    """The data-parallel options of `dlcpu train` as given (checked by dist_options)."""
    dist: bool = False
    fusion_threshold: str = None
    compress: str = None
    comm_core: bool = False
    timeline: str = None
    comm_timeout: float = None
    check_replicas: bool = False
    overlap: bool = True

    def given_without_dist(self):
        """The --dist-only options given without --dist, by option name."""
        flags = {"--fusion-threshold": self.fusion_threshold is not None, "--compress": self.compress is not None,
                 "--comm-core": self.comm_core, "--timeline": self.timeline is not None,
                 "--comm-timeout": self.comm_timeout is not None, "--check-replicas": self.check_replicas,
                 "--no-overlap": not self.overlap}
        return [name for name, given in flags.items() if given]


def dist_options(d):
    """DistArgs -> distributed.DataParallelOptions (bad option values named), or None without --dist."""
    if not d.dist:
        extra = d.given_without_dist()
        if extra:
            raise bad_option(extra[0], "applies to data-parallel training only; add --dist (and launch with mpiexec)")
        return None
    from .. import distributed

    try:
        threshold = distributed.parse_bytes(d.fusion_threshold) if d.fusion_threshold is not None \
            else distributed.DEFAULT_FUSION_THRESHOLD
    except ValueError as exc:
        raise bad_option("--fusion-threshold", str(exc)) from None
    if d.compress is not None and d.compress not in distributed.COMPRESSIONS:
        raise bad_option("--compress", f"must be {' or '.join(distributed.COMPRESSIONS)}, got {d.compress!r}")
    if d.timeline is not None and not d.timeline.strip():
        raise bad_option("--timeline", "must be a file name, got an empty string")
    # whether rank 0 can write --timeline is checked once MPI runs (cli/train.py, _join_ranks)
    return distributed.DataParallelOptions(
        fusion_threshold=threshold, compression=d.compress or "none", overlap=d.overlap, comm_core=d.comm_core,
        timeout=distributed.DEFAULT_TIMEOUT if d.comm_timeout is None else d.comm_timeout,
        check_replicas=d.check_replicas, timeline=d.timeline)
