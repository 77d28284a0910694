"""Data loading for sequence models: length bucketing on one rank and across ranks.

Recurrent models (GNMT, LSTM language models) pay for every padded time step, so sentences of
similar length are batched together ("bucketing", as in TF-NMT). On one process that only saves
padding. Across data-parallel ranks it also decides the step time: every rank waits at the
gradient allreduce for the rank with the longest padded batch (papers.md §10.2, the GNMT-on-CPU
cluster paper's fourth optimisation).

What is here (pure NumPy index bookkeeping; no tensors are touched):

* ``BucketBatcher`` — single-process bucketing. Bucket ``b = min(len // width, num_buckets - 1)``
  with ``width = ceil(max_len / num_buckets)`` (the TF-NMT rule); batches are drawn from one bucket
  each and padded to their own maximum.
* ``DistributedBucketSampler`` — the load-balanced multi-node scheme. Every rank reads the full
  length list and uses the same seed, so all ranks build the same sequence of GLOBAL minibatches of
  ``num_ranks * batch_per_rank`` sequences, each drawn from ONE bucket; rank ``r`` keeps rows
  ``[r*B, (r+1)*B)``. Nothing is communicated: agreement comes from the shared seed.
* ``shard`` — a rank's slice of a global batch (the even split both the sampler and
  data-parallel training, dlcpu.distributed, use).
* ``bucket_study`` — padding waste and straggler factor of three schemes (naive, per-rank
  bucketing, load-balanced) on a list of lengths, computed without running a model.
* ``synthetic_lengths`` and ``text_sentence_lengths`` — length lists to study: log-normal
  synthetic lengths, and real English sentence lengths from the Python reference help text that
  ships with CPython (``pydoc_data.topics``; nothing is downloaded).

Determinism: each epoch's order comes from ``numpy.random.default_rng([seed, epoch])``, so a
(seed, epoch) pair always gives the same batches on every machine and rank, and epochs differ.
Call ``set_epoch(e)`` before iterating, as with ``torch.utils.data.DistributedSampler``.
"""
import math
import platform
import re

import numpy as np

from ._validate import flag, positive_int

__all__ = [
    "BucketBatcher",
    "DistributedBucketSampler",
    "bucket_study",
    "shard",
    "synthetic_lengths",
    "text_sentence_lengths",
]


# ----------------------------------------------------------------------------------------------
# shared helpers

def _lengths(lengths, fn):
    """1-D, non-empty array of positive integer lengths -> int64 array (a copy)."""
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__"):
        raise TypeError(f"{fn}: lengths must be a 1-D sequence or array of positive ints, "
                        f"got {type(lengths).__name__}")
    a = np.asarray(lengths)
    if a.ndim != 1:
        raise ValueError(f"{fn}: lengths must be 1-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{fn}: lengths must be non-empty, got 0 sequences")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{fn}: lengths must be integers, got dtype {a.dtype}")
    if a.min() < 1:
        bad = int(np.argmin(a))
        raise ValueError(f"{fn}: lengths must be >= 1, got lengths[{bad}] = {int(a[bad])}")
    return a.astype(np.int64)


def _epoch(epoch, fn):
    return positive_int(epoch, "epoch", fn, minimum=0)


def _seed(seed, fn):
    return positive_int(seed, "seed", fn, minimum=0)


def _bucket_ids(lengths, num_buckets, width):
    """TF-NMT rule: bucket = min(len // width, num_buckets - 1)."""
    return np.minimum(lengths // width, num_buckets - 1)


def _default_width(lengths, num_buckets):
    return max(1, math.ceil(int(lengths.max()) / num_buckets))


def _padding(lengths, batches):
    """(real tokens, padded tokens) of batches, each padded to its own maximum length."""
    real = padded = 0
    for b in batches:
        if len(b):
            seg = lengths[b]
            real += int(seg.sum())
            padded += int(seg.max()) * len(b)
    return real, padded


# ----------------------------------------------------------------------------------------------
# single process

class BucketBatcher:
    """Batches of sequence indices, each drawn from one length bucket (TF-NMT bucketing).

    Parameters
    ----------
    lengths : 1-D ints >= 1, the length of every sequence (index i -> lengths[i]).
    batch_size : sequences per batch (the last batch of a bucket may be smaller unless drop_last).
    num_buckets : number of buckets; bucket b = min(len // bucket_width, num_buckets - 1).
    bucket_width : default ceil(max(lengths) / num_buckets).
    shuffle : shuffle within each bucket and the order of batches across buckets (seeded);
        without it batches come bucket by bucket in index order.
    seed, drop_last : see the module docstring; drop_last drops each bucket's incomplete batch.

    Iterating yields int64 index arrays for the epoch set by ``set_epoch`` (default 0).
    """

    def __init__(self, lengths, batch_size, num_buckets=5, bucket_width=None, shuffle=True, seed=0,
                 drop_last=False):
        fn = "BucketBatcher"
        self.lengths = _lengths(lengths, fn)
        self.batch_size = positive_int(batch_size, "batch_size", fn)
        self.num_buckets = positive_int(num_buckets, "num_buckets", fn)
        self.bucket_width = (_default_width(self.lengths, self.num_buckets) if bucket_width is None
                             else positive_int(bucket_width, "bucket_width", fn))
        self.shuffle = flag(shuffle, "shuffle", fn)
        self.seed = _seed(seed, fn)
        self.drop_last = flag(drop_last, "drop_last", fn)
        self.bucket_of = _bucket_ids(self.lengths, self.num_buckets, self.bucket_width)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Choose the epoch whose (seeded) order the next iteration produces."""
        self.epoch = _epoch(epoch, "BucketBatcher.set_epoch")

    def batches(self):
        """The list of batches (int64 index arrays) of the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        out = []
        for b in range(self.num_buckets):
            idx = np.flatnonzero(self.bucket_of == b)
            if self.shuffle:
                idx = rng.permutation(idx)
            stop = len(idx) - len(idx) % self.batch_size if self.drop_last else len(idx)
            out.extend(idx[i:i + self.batch_size] for i in range(0, stop, self.batch_size))
        if self.shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        counts = np.bincount(self.bucket_of, minlength=self.num_buckets)
        if self.drop_last:
            return int((counts // self.batch_size).sum())
        return int(((counts + self.batch_size - 1) // self.batch_size).sum())

    def padded_length(self, batch):
        """Time steps a batch is padded to: the longest sequence in it."""
        batch = np.asarray(batch, dtype=np.int64)
        if batch.ndim != 1 or batch.size == 0:
            raise ValueError(f"BucketBatcher.padded_length: batch must be a non-empty 1-D index array, "
                             f"got shape {batch.shape}")
        return int(self.lengths[batch].max())

    @staticmethod
    def pad(batch_sequences, pad_value=0):
        """Stack sequences (1-D arrays of varying length) into a (n, max_len) array, right-padded."""
        seqs = [np.asarray(s) for s in batch_sequences]
        if not seqs or any(s.ndim != 1 for s in seqs):
            raise ValueError("BucketBatcher.pad: batch_sequences must be a non-empty list of 1-D sequences")
        dtype = np.result_type(*seqs, np.asarray(pad_value))
        out = np.full((len(seqs), max(len(s) for s in seqs)), pad_value, dtype=dtype)
        for i, s in enumerate(seqs):
            out[i, :len(s)] = s
        return out

    def padding_waste(self):
        """Padded tokens / all tokens in this epoch's padded batches (0 = no padding at all)."""
        real, padded = _padding(self.lengths, self.batches())
        return (padded - real) / padded if padded else 0.0


# ----------------------------------------------------------------------------------------------
# multi-node, load balanced

def shard(global_batch, num_ranks, rank):
    """Rank `rank`'s rows of a global batch of indices, as evenly as possible
    (``numpy.array_split``): m rows give the first ``m % num_ranks`` ranks ``ceil(m / num_ranks)``
    rows and the others ``floor(m / num_ranks)``, possibly 0.  The slices are disjoint, in rank
    order, and together are the global batch."""
    return np.array_split(np.asarray(global_batch, dtype=np.int64), num_ranks)[rank]


class DistributedBucketSampler:
    """Load-balanced multi-node bucketing (papers.md §10.2): one bucket per GLOBAL step.

    Every rank builds the same epoch plan from the full ``lengths`` and the shared seed:

    1. each bucket's indices are shuffled (``default_rng([seed, epoch])``) and cut into full
       global groups of ``G = num_ranks * batch_per_rank`` consecutive indices;
    2. the list of all full groups, over all buckets, is shuffled with the same generator — this
       is the order of buckets across steps;
    3. at step k every rank takes global group k; rank r keeps rows ``[r*B, (r+1)*B)``.

    Each bucket's tail (``len(bucket) % G`` sequences) does not fill a global group:

    * ``drop_last=True`` (default): the tails are not used this epoch (up to
      ``num_buckets * (G - 1)`` sequences; which ones changes every epoch with the shuffle);
    * ``drop_last=False``: the tails are pooled (bucket by bucket, each in its shuffled order) and
      cut into final *mixed* global batches of up to G sequences placed after all bucketed steps.
      The last of them may hold ``m < G`` sequences; it is split as evenly as possible
      (``numpy.array_split``): the first ``m % num_ranks`` ranks get ``ceil(m / num_ranks)`` rows,
      the others ``floor(m / num_ranks)`` — possibly 0, so a rank can get an empty slice there.
      Every sequence is then seen exactly once per epoch.

    ``len()`` is the number of steps per epoch (the same on every rank); iteration yields this
    rank's int64 index slices. ``global_batches()`` gives the whole plan as (bucket, indices)
    pairs, bucket -1 for a mixed batch.
    """

    def __init__(self, lengths, batch_per_rank, num_ranks, rank, num_buckets=5, seed=0, drop_last=True,
                 bucket_width=None):
        fn = "DistributedBucketSampler"
        self.lengths = _lengths(lengths, fn)
        self.batch_per_rank = positive_int(batch_per_rank, "batch_per_rank", fn)
        self.num_ranks = positive_int(num_ranks, "num_ranks", fn)
        if not isinstance(rank, (int, np.integer)) or isinstance(rank, (bool, np.bool_)):
            raise TypeError(f"{fn}: rank must be an int, got {rank!r}")
        if not 0 <= rank < self.num_ranks:
            raise ValueError(f"{fn}: rank must be in [0, num_ranks) = [0, {self.num_ranks}), got {rank}")
        self.rank = int(rank)
        self.num_buckets = positive_int(num_buckets, "num_buckets", fn)
        self.seed = _seed(seed, fn)
        self.drop_last = flag(drop_last, "drop_last", fn)
        self.bucket_width = (_default_width(self.lengths, self.num_buckets) if bucket_width is None
                             else positive_int(bucket_width, "bucket_width", fn))
        self.bucket_of = _bucket_ids(self.lengths, self.num_buckets, self.bucket_width)
        self.global_batch = self.num_ranks * self.batch_per_rank
        self.epoch = 0

    def set_epoch(self, epoch):
        """Choose the epoch; all ranks must set the same one to stay in step."""
        self.epoch = _epoch(epoch, "DistributedBucketSampler.set_epoch")

    def global_batches(self):
        """The epoch plan shared by all ranks: a list of (bucket id or -1 if mixed, int64 indices)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        g = self.global_batch
        groups, tails = [], []
        for b in range(self.num_buckets):
            idx = rng.permutation(np.flatnonzero(self.bucket_of == b))
            full = len(idx) - len(idx) % g
            groups.extend((b, idx[i:i + g]) for i in range(0, full, g))
            tails.append(idx[full:])
        plan = [groups[i] for i in rng.permutation(len(groups))]
        if not self.drop_last:
            pool = np.concatenate(tails)
            plan.extend((-1, pool[i:i + g]) for i in range(0, len(pool), g))
        return plan

    def rank_slice(self, global_batch, rank=None):
        """Rank's rows of a global batch: [r*B, (r+1)*B) when full, an even split when not."""
        return shard(global_batch, self.num_ranks, self.rank if rank is None else rank)

    def __iter__(self):
        return iter([self.rank_slice(gb) for _, gb in self.global_batches()])

    def __len__(self):
        counts = np.bincount(self.bucket_of, minlength=self.num_buckets)
        steps = int((counts // self.global_batch).sum())
        if not self.drop_last:
            steps += -(-int((counts % self.global_batch).sum()) // self.global_batch)
        return steps


# ----------------------------------------------------------------------------------------------
# study

def _scheme_stats(name, lengths, steps):
    """steps: list of per-rank index slices (one list of num_ranks arrays per step)."""
    real = padded = 0
    ratios = []
    for slices in steps:
        plen = np.array([int(lengths[s].max()) if len(s) else 0 for s in slices], dtype=np.float64)
        r, p = _padding(lengths, slices)
        real += r
        padded += p
        ratios.append(plen.max() / plen.mean())
    return {
        "scheme": name,
        "steps": len(steps),
        "padding_waste": (padded - real) / padded if padded else 0.0,
        "imbalance_mean": float(np.mean(ratios)) if ratios else 1.0,
        "imbalance_max": float(np.max(ratios)) if ratios else 1.0,
        "tokens": int(real),
    }


def bucket_study(lengths, num_ranks=2, batch_per_rank=32, num_buckets=5, seed=0, bucket_width=None):
    """Padding waste and allreduce straggler factor of three data-parallel batching schemes.

    One epoch (epoch 0) of each scheme; every rank pads its own slice to the slice's maximum
    length (the cheaper option of §10.2); only complete steps are counted (every scheme drops what
    does not fill one). Schemes, in this order:

    * ``"naive"`` — one shared global shuffle cut into consecutive global batches of
      ``num_ranks * batch_per_rank``; rank r takes rows [r*B, (r+1)*B). No bucketing.
    * ``"per-rank"`` — the usual sharding (shared shuffle, rank r takes every num_ranks-th index)
      and then each rank buckets its own shard with ``BucketBatcher`` and its own seed
      (``seed + rank``, same bucket boundaries). Ranks step in lock-step, so the number of steps is
      the smallest rank's batch count; batches beyond it are not counted.
    * ``"load-balanced"`` — ``DistributedBucketSampler`` (drop_last=True).

    Returned numbers, one dict per scheme:

    * ``steps`` — synchronous training steps (allreduces) in the epoch.
    * ``padding_waste`` — padded-but-empty tokens / all tokens computed, over all ranks and steps
      (a token = one time step of one sequence; a rank computes rows x its slice max).
    * ``imbalance_mean`` / ``imbalance_max`` — per step, max over ranks of the rank's padded length
      (its slice's maximum sequence length, i.e. the time steps it must run) divided by the mean
      over ranks of it; then the mean and the max over steps. 1.0 means every rank arrives at the
      allreduce together; 1.5 means the slowest rank runs 1.5x the average rank's time steps, with
      RNN step time taken as proportional to padded length at equal rows per rank.
    * ``tokens`` — real (unpadded) tokens processed in the epoch.

    bucket_width: the buckets' width in tokens (default ceil(max length / num_buckets), TF-NMT's;
    one very long sentence then puts nearly everything into bucket 0 — pass a width, such as the
    99th percentile / num_buckets, for such data).
    """
    fn = "bucket_study"
    lengths = _lengths(lengths, fn)
    num_ranks = positive_int(num_ranks, "num_ranks", fn)
    batch_per_rank = positive_int(batch_per_rank, "batch_per_rank", fn)
    num_buckets = positive_int(num_buckets, "num_buckets", fn)
    seed = _seed(seed, fn)
    g = num_ranks * batch_per_rank
    if len(lengths) < g:
        raise ValueError(f"{fn}: need at least num_ranks * batch_per_rank = {g} sequences, got {len(lengths)}")

    perm = np.random.default_rng([seed, 0]).permutation(len(lengths))
    naive = [np.array_split(perm[i:i + g], num_ranks) for i in range(0, len(perm) - g + 1, g)]

    width = _default_width(lengths, num_buckets) if bucket_width is None else positive_int(
        bucket_width, "bucket_width", fn)
    per_rank = []
    for r in range(num_ranks):
        shard = perm[r::num_ranks]
        bb = BucketBatcher(lengths[shard], batch_per_rank, num_buckets=num_buckets, bucket_width=width,
                           seed=seed + r, drop_last=True)
        per_rank.append([shard[b] for b in bb.batches()])
    n_steps = min(len(b) for b in per_rank)
    per_rank_steps = [[per_rank[r][k] for r in range(num_ranks)] for k in range(n_steps)]

    samplers = [DistributedBucketSampler(lengths, batch_per_rank, num_ranks, r, num_buckets=num_buckets,
                                         seed=seed, drop_last=True, bucket_width=width) for r in range(num_ranks)]
    balanced = [list(step) for step in zip(*(list(s) for s in samplers))]

    return [_scheme_stats("naive", lengths, naive),
            _scheme_stats("per-rank", lengths, per_rank_steps),
            _scheme_stats("load-balanced", lengths, balanced)]


# ----------------------------------------------------------------------------------------------
# length lists

def bucket_width_for(lengths, num_buckets, rule="auto"):
    """A bucket width for `lengths`: 'max' = ceil(longest / num_buckets) (TF-NMT's rule), 'auto' =
    ceil(99th percentile / num_buckets) (one very long sentence does not squeeze everything into
    bucket 0), or a positive int taken as it is."""
    fn = "bucket_width_for"
    lengths = _lengths(lengths, fn)
    num_buckets = positive_int(num_buckets, "num_buckets", fn)
    if rule == "max":
        return _default_width(lengths, num_buckets)
    if rule == "auto":
        return max(1, math.ceil(float(np.percentile(lengths, 99)) / num_buckets))
    return positive_int(int(rule), "bucket width", fn)


def synthetic_lengths(n=20000, mean=25.0, sigma=0.6, max_len=200, seed=0):
    """n log-normal sentence lengths: int64, rounded, clipped to [1, max_len].

    ``mean`` is the mean of the (unclipped) distribution, so mu = ln(mean) - sigma**2 / 2;
    ``sigma`` is the standard deviation of ln(length).
    """
    fn = "synthetic_lengths"
    n = positive_int(n, "n", fn)
    max_len = positive_int(max_len, "max_len", fn)
    seed = _seed(seed, fn)
    for name, v in (("mean", mean), ("sigma", sigma)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{fn}: {name} must be a number, got {v!r}")
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{fn}: {name} must be finite and > 0, got {v}")
    mu = math.log(mean) - sigma ** 2 / 2
    x = np.random.default_rng(seed).lognormal(mu, sigma, size=n)
    return np.clip(np.rint(x), 1, max_len).astype(np.int64)


_UNDERLINE = re.compile(r"^[*=\-~^#+]{3,}$")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
_MARKER = re.compile(r"^(?:[*-]|\d+\.|\[\d+\])\s+")
_WORD = re.compile(r"[A-Za-z0-9]")


def text_sentence_lengths():
    """(name, lengths): words per sentence of the Python reference help text in ``pydoc_data.topics``.

    The text ships with CPython (it is what ``help("if")`` prints), so nothing is downloaded.
    Rule, applied to every topic in sorted order:

    1. split into paragraphs at blank lines;
    2. drop code-like paragraphs: first line indented by 3+ spaces (examples, grammar, tables)
       unless it is a bullet ("* ", "- "), or any line containing ">>>", "::=" or "...";
       drop headings (a paragraph ending in an underline of * = - ~ ^ # +);
       drop labels: a one-line paragraph not ending in '.', '?' or '!' ("Note:", signatures);
    3. remove list markers at the start of a line ("* ", "- ", "1. ", "[1] "), join the lines
       with spaces and split into sentences after '.', '?' or '!' followed by whitespace;
    4. a word is a whitespace-separated token containing a letter or digit; sentences with no
       word are dropped.

    Abbreviations such as "e.g. " also end a sentence under this rule; that is accepted.
    """
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            lines = [ln.rstrip() for ln in para.split("\n") if ln.strip()]
            if not lines or _UNDERLINE.match(lines[-1].strip()):
                continue
            first = lines[0]
            indent = len(first) - len(first.lstrip())
            if indent >= 3 and not first.lstrip().startswith(("* ", "- ")):
                continue
            if any(">>>" in ln or "::=" in ln or "..." in ln for ln in lines):
                continue
            if len(lines) == 1 and not lines[0].endswith((".", "?", "!")):
                continue
            text = " ".join(_MARKER.sub("", ln.strip()) for ln in lines)
            for sentence in _SENTENCE_END.split(text):
                words = sum(1 for tok in sentence.split() if _WORD.search(tok))
                if words:
                    out.append(words)
    name = f"pydoc_data.topics (Python {platform.python_version()} language reference help text)"
    return name, np.asarray(out, dtype=np.int64)
