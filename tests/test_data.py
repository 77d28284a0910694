"""dlcpu.data: single-process bucketing, the load-balanced multi-node sampler, the bucketing study."""
import json
import re

import numpy as np
import pytest

from dlcpu import data
from dlcpu.data import (
    BucketBatcher,
    DistributedBucketSampler,
    bucket_study,
    synthetic_lengths,
    text_sentence_lengths,
)


@pytest.fixture(scope="module")
def lengths():
    return synthetic_lengths(n=3001, seed=3)


def ranks_plan(lengths, num_ranks, batch_per_rank=8, seed=0, epoch=0, drop_last=True, num_buckets=5):
    samplers = [DistributedBucketSampler(lengths, batch_per_rank, num_ranks, r, num_buckets=num_buckets,
                                         seed=seed, drop_last=drop_last) for r in range(num_ranks)]
    for s in samplers:
        s.set_epoch(epoch)
    return samplers, [list(s) for s in samplers]


# ------------------------------------------------------------------ DistributedBucketSampler

@pytest.mark.parametrize("num_ranks", [2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_steps_one_bucket_disjoint_union(lengths, num_ranks, drop_last):
    samplers, per_rank = ranks_plan(lengths, num_ranks, drop_last=drop_last)
    plan = samplers[0].global_batches()
    assert all(len(s) == len(plan) == len(p) for s, p in zip(samplers, per_rank))
    width = samplers[0].bucket_width
    g = num_ranks * 8
    for k, (bucket, gb) in enumerate(plan):
        slices = [per_rank[r][k] for r in range(num_ranks)]
        if bucket >= 0:  # a bucketed step: full, every rank in the same bucket, rows [r*B, (r+1)*B)
            assert len(gb) == g
            for r, s in enumerate(slices):
                np.testing.assert_array_equal(s, gb[r * 8:(r + 1) * 8])
                assert set(np.minimum(lengths[s] // width, 4)) == {bucket}
        cat = np.concatenate(slices)
        assert len(np.unique(cat)) == len(cat)                 # disjoint
        np.testing.assert_array_equal(np.sort(cat), np.sort(gb))  # union is the global batch
    # every sampler agrees on the plan
    for s in samplers[1:]:
        for (b1, g1), (b2, g2) in zip(plan, s.global_batches()):
            assert b1 == b2 and np.array_equal(g1, g2)
    seen = np.concatenate([np.concatenate(p) for p in per_rank])
    counts = np.bincount(seen, minlength=len(lengths))
    if drop_last:
        assert counts.max() <= 1
        assert all(b >= 0 for b, _ in plan)
    else:
        assert np.all(counts == 1)


def test_sampler_mixed_tail_split_evenly():
    lengths = np.arange(1, 11)   # 10 sequences, 1 bucket, G = 3*3 = 9 -> one full step + a tail of 1
    s, per_rank = ranks_plan(lengths, 3, batch_per_rank=3, drop_last=False, num_buckets=1)
    assert len(s[0]) == 2
    assert [len(p[1]) for p in per_rank] == [1, 0, 0]
    s, per_rank = ranks_plan(lengths, 3, batch_per_rank=3, drop_last=True, num_buckets=1)
    assert len(s[0]) == 1 and [len(p[0]) for p in per_rank] == [3, 3, 3]


def test_sampler_len_matches_iteration(lengths):
    for drop_last in (True, False):
        for bpr in (1, 7, 64):
            s = DistributedBucketSampler(lengths, bpr, 3, 1, drop_last=drop_last)
            assert len(s) == len(list(s))


def test_sampler_deterministic_per_seed_and_epoch(lengths):
    _, a = ranks_plan(lengths, 2, seed=5, epoch=1)
    _, b = ranks_plan(lengths, 2, seed=5, epoch=1)
    _, c = ranks_plan(lengths, 2, seed=5, epoch=2)
    _, d = ranks_plan(lengths, 2, seed=6, epoch=1)
    same = all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert same
    assert not all(np.array_equal(x, y) for x, y in zip(a[0], c[0]))
    assert not all(np.array_equal(x, y) for x, y in zip(a[0], d[0]))


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"rank": 2, "num_ranks": 2}, ValueError, "rank must be in [0, num_ranks)"),
    ({"rank": -1, "num_ranks": 2}, ValueError, "rank must be in"),
    ({"rank": 0.0, "num_ranks": 2}, TypeError, "rank must be an int"),
    ({"rank": 0, "num_ranks": 0}, ValueError, "num_ranks must be >= 1"),
    ({"rank": 0, "num_ranks": 2, "batch_per_rank": 0}, ValueError, "batch_per_rank must be >= 1"),
    ({"rank": 0, "num_ranks": 2, "num_buckets": 0}, ValueError, "num_buckets must be >= 1"),
    ({"rank": 0, "num_ranks": 2, "drop_last": "no"}, TypeError, "drop_last must be True or False"),
])
def test_sampler_bad_inputs(kwargs, exc, words):
    args = {"lengths": [3, 4, 5], "batch_per_rank": 2}
    args.update(kwargs)
    with pytest.raises(exc, match=re.escape(words)):
        DistributedBucketSampler(**args)
    s = DistributedBucketSampler([3, 4], 1, 1, 0)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        s.set_epoch(-1)


# ------------------------------------------------------------------ BucketBatcher

@pytest.mark.parametrize("shuffle", [True, False])
def test_batcher_every_index_once_one_bucket_each(lengths, shuffle):
    bb = BucketBatcher(lengths, 32, num_buckets=5, shuffle=shuffle, seed=1)
    batches = list(bb)
    assert len(batches) == len(bb)
    seen = np.concatenate(batches)
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(lengths)))
    assert bb.bucket_width == int(np.ceil(lengths.max() / 5))
    for b in batches:
        assert 1 <= len(b) <= 32
        assert len(set(np.minimum(lengths[b] // bb.bucket_width, 4))) == 1


def test_batcher_drop_last_and_epochs(lengths):
    bb = BucketBatcher(lengths, 32, drop_last=True, seed=2)
    batches = list(bb)
    assert len(batches) == len(bb) and all(len(b) == 32 for b in batches)
    bb.set_epoch(1)
    assert not all(np.array_equal(x, y) for x, y in zip(batches, bb))
    bb.set_epoch(0)
    assert all(np.array_equal(x, y) for x, y in zip(batches, bb))


def test_batcher_padding_waste_hand_example():
    # width 3 (ceil(9/3)), buckets: [1,2] -> 0, [4,5] -> 1, [9] -> 2 (9//3 = 3, clipped to 2)
    bb = BucketBatcher([1, 2, 4, 5, 9], batch_size=2, num_buckets=3, shuffle=False)
    batches = [b.tolist() for b in bb]
    assert batches == [[0, 1], [2, 3], [4]]
    # padded: 2*2 + 2*5 + 1*9 = 23; real = 21 -> waste 2/23
    assert bb.padding_waste() == pytest.approx(2 / 23)
    assert bb.padded_length([2, 3]) == 5
    unbucketed = BucketBatcher([1, 2, 4, 5, 9], batch_size=2, num_buckets=1, shuffle=False)
    # one bucket, index order: the same three batches -> same waste; one batch of 5: 45 padded, 21 real
    assert BucketBatcher([1, 2, 4, 5, 9], 5, num_buckets=1).padding_waste() == pytest.approx(24 / 45)
    assert unbucketed.padding_waste() == pytest.approx(2 / 23)


def test_batcher_less_waste_than_unbucketed(lengths):
    bucketed = BucketBatcher(lengths, 64, num_buckets=5).padding_waste()
    unbucketed = BucketBatcher(lengths, 64, num_buckets=1).padding_waste()
    assert bucketed < 0.8 * unbucketed


def test_batcher_pad():
    out = BucketBatcher.pad([np.array([1, 2, 3]), np.array([4])], pad_value=-1)
    np.testing.assert_array_equal(out, [[1, 2, 3], [4, -1, -1]])


@pytest.mark.parametrize("lengths, kwargs, exc, words", [
    ([], {}, ValueError, "lengths must be non-empty"),
    ([[1, 2]], {}, ValueError, "lengths must be 1-D"),
    ([1.5, 2.0], {}, TypeError, "lengths must be integers"),
    ([True, False], {}, TypeError, "lengths must be integers"),
    ([3, 0, 2], {}, ValueError, r"lengths must be >= 1, got lengths\[1\] = 0"),
    ("abc", {}, TypeError, "lengths must be a 1-D sequence"),
    ([1, 2], {"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ([1, 2], {"batch_size": 2.0}, TypeError, "batch_size must be an int"),
    ([1, 2], {"num_buckets": 0}, ValueError, "num_buckets must be >= 1"),
    ([1, 2], {"seed": -1}, ValueError, "seed must be >= 0"),
])
def test_batcher_bad_inputs(lengths, kwargs, exc, words):
    args = {"batch_size": 2}
    args.update(kwargs)
    with pytest.raises(exc, match=words):
        BucketBatcher(lengths, **args)


# ------------------------------------------------------------------ study and length lists

def test_bucket_study_keys_order_and_balance():
    lengths = synthetic_lengths(n=8000, seed=0)
    for num_ranks in (2, 4):
        rows = bucket_study(lengths, num_ranks=num_ranks, batch_per_rank=32)
        assert [r["scheme"] for r in rows] == ["naive", "per-rank", "load-balanced"]
        for r in rows:
            assert set(r) == {"scheme", "steps", "padding_waste", "imbalance_mean", "imbalance_max", "tokens"}
            assert r["steps"] > 0 and 0 <= r["padding_waste"] < 1 and r["tokens"] > 0
            assert 1.0 <= r["imbalance_mean"] <= r["imbalance_max"]
        naive, per_rank, balanced = rows
        assert balanced["imbalance_max"] < 1.25
        assert balanced["imbalance_max"] < per_rank["imbalance_max"]
        assert balanced["imbalance_mean"] < per_rank["imbalance_mean"]
        assert balanced["padding_waste"] < naive["padding_waste"]
        assert naive["tokens"] <= int(lengths.sum())


def test_bucket_study_bad_inputs():
    with pytest.raises(ValueError, match="need at least num_ranks \\* batch_per_rank = 64"):
        bucket_study([3] * 10, num_ranks=2, batch_per_rank=32)
    with pytest.raises(ValueError, match="num_ranks must be >= 1"):
        bucket_study([3] * 10, num_ranks=0)


def test_synthetic_lengths():
    a = synthetic_lengths(n=5000, mean=25.0, sigma=0.6, max_len=200, seed=0)
    assert a.dtype == np.int64 and a.shape == (5000,) and a.min() >= 1 and a.max() <= 200
    assert 22 < a.mean() < 28
    np.testing.assert_array_equal(a, synthetic_lengths(n=5000, seed=0))
    assert synthetic_lengths(n=100, max_len=10).max() <= 10
    with pytest.raises(ValueError, match="mean must be finite and > 0"):
        synthetic_lengths(mean=-1.0)


def test_text_sentence_lengths():
    name, lengths = text_sentence_lengths()
    assert name.startswith("pydoc_data.topics (Python ") and "language reference" in name
    assert lengths.dtype == np.int64 and len(lengths) > 1000 and lengths.min() >= 1
    assert 8 < lengths.mean() < 35


# ------------------------------------------------------------------ bucket widths and the CLI
def test_bucket_width_rules():
    lengths = np.array([1] * 98 + [10, 1000])
    assert data.bucket_width_for(lengths, 5, "max") == 200
    assert data.bucket_width_for(lengths, 5, "auto") == 4          # the 99th percentile is 19.9
    assert data.bucket_width_for(lengths, 5, 7) == 7
    with pytest.raises(ValueError, match="bucket width"):
        data.bucket_width_for(lengths, 5, 0)


def test_scale_buckets_cli_json():
    from test_cli import run

    res = run("scale", "buckets", "--ranks", "2", "--batch-per-rank", "16", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]
    assert [r["scheme"] for r in rows] == ["naive", "per-rank", "load-balanced"] * 2
    assert rows[3]["lengths"].startswith("pydoc_data.topics")
    for a, b in ((rows[1], rows[2]), (rows[4], rows[5])):
        assert b["imbalance_mean"] < a["imbalance_mean"]     # load-balanced beats per-rank bucketing


@pytest.mark.parametrize("args, needle", [
    (["--ranks", "0"], "'--ranks'"), (["--ranks", "x"], "comma list"),
    (["--bucket-width", "wide"], "'--bucket-width'"), (["--bucket-width", "0"], "positive integer"),
])
def test_scale_buckets_bad_options(args, needle):
    from test_cli import assert_one_line_error, run

    assert_one_line_error(run("scale", "buckets", *args), 2, needle)
