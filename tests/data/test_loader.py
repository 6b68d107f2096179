"""Pretraining batches: a pure function of (seed, step, micro, rank); evaluation windows that
predict every token exactly once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit.data.loader import RandomWindows, read_windows, sequential_windows
from llmkit.errors import DataError

T = 8


def tokens(n: int = 500, seed: int = 0, high: int = 65535) -> np.ndarray:
    # values above 32767 catch a signed 16-bit conversion on the way to int64
    return np.random.default_rng(seed).integers(0, high, size=n, dtype=np.uint16)


def assert_batch_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() == {"input_ids", "labels"}
    for k in a:
        assert torch.equal(a[k], b[k]), k


def differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return not torch.equal(a["input_ids"], b["input_ids"])


# ---------------------------------------------------------------------------- RandomWindows


def test_batch_is_a_pure_function_of_seed_step_micro():
    data = tokens()
    a = RandomWindows(data, block_size=T, batch_size=4, seed=3)
    b = RandomWindows(data, block_size=T, batch_size=4, seed=3)
    first = a.batch(5, 1)
    a.batch(0, 0), a.batch(99, 0)  # other calls in between change nothing
    assert_batch_equal(a.batch(5, 1), first)
    assert_batch_equal(b.batch(5, 1), first)  # a new instance (a resumed run) sees the same batch
    assert differs(a.batch(6, 1), first)  # another step
    assert differs(a.batch(5, 0), first)  # another micro-batch
    assert differs(RandomWindows(data, block_size=T, batch_size=4, seed=4).batch(5, 1), first)  # another seed
    assert differs(a.batch(0), a.batch(1))


def test_windows_are_slices_of_the_token_array():
    data = tokens(300)
    windows = RandomWindows(data, block_size=T, batch_size=6, seed=1)
    for step in range(20):
        batch = windows.batch(step)
        x, y = batch["input_ids"], batch["labels"]
        assert x.shape == y.shape == (6, T)
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(y[:, :-1], x[:, 1:])
        for row, start in enumerate(windows.offsets(step, 0)):
            assert 0 <= start <= len(data) - T - 1
            want = torch.from_numpy(data[start : start + T + 1].astype(np.int64))
            assert torch.equal(x[row], want[:-1])
            assert torch.equal(y[row], want[1:])
    assert int(windows.batch(0)["input_ids"].max()) > 32767  # unsigned values kept


def test_windows_match_the_raw_array_without_offsets():
    """Independent of ``offsets``: every row of input_ids + last label occurs in the array."""
    data = tokens(200, seed=5)
    windows = RandomWindows(data, block_size=T, batch_size=8, seed=2)
    haystack = data.astype(np.int64)
    for step in range(5):
        batch = windows.batch(step)
        full = torch.cat([batch["input_ids"], batch["labels"][:, -1:]], dim=1).numpy()
        for row in full:
            hits = [s for s in range(len(haystack) - T) if np.array_equal(haystack[s : s + T + 1], row)]
            assert hits, row


def test_every_start_is_reachable_including_the_last():
    data = np.arange(T + 4, dtype=np.uint16)  # starts 0..3
    windows = RandomWindows(data, block_size=T, batch_size=64, seed=0)
    starts = {int(b["input_ids"][r, 0]) for s in range(4) for b in [windows.batch(s)] for r in range(64)}
    assert starts == {0, 1, 2, 3}


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_split_the_global_batch(world_size):
    data = tokens()
    B = 8
    whole = RandomWindows(data, block_size=T, batch_size=B, seed=9)
    parts = [
        RandomWindows(data, block_size=T, batch_size=B // world_size, seed=9, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for step, micro in [(0, 0), (7, 1), (123, 0)]:
        shards = [p.batch(step, micro) for p in parts]
        for k in ("input_ids", "labels"):
            assert torch.equal(torch.cat([s[k] for s in shards]), whole.batch(step, micro)[k])
        assert differs(shards[0], shards[1])  # ranks do not see the same rows
    for got, want in zip(zip(*(p.eval_batches(3) for p in parts)), whole.eval_batches(3)):
        assert torch.equal(torch.cat([g["input_ids"] for g in got]), want["input_ids"])


@pytest.mark.parametrize("n", [0, 1, T])
def test_too_short_split_is_a_data_error_naming_it(n):
    with pytest.raises(DataError, match="val split") as info:
        RandomWindows(tokens(n), block_size=T, batch_size=2, seed=0, name="val")
    assert str(n) in str(info.value)
    with pytest.raises(DataError, match="train split"):
        RandomWindows(tokens(n), block_size=T, batch_size=2, seed=0)


def test_exactly_one_window_is_enough():
    data = tokens(T + 1)
    windows = RandomWindows(data, block_size=T, batch_size=2, seed=0)
    batch = windows.batch(3)
    want = torch.from_numpy(data.astype(np.int64))
    assert torch.equal(batch["input_ids"], want[:-1].expand(2, T))
    assert torch.equal(batch["labels"], want[1:].expand(2, T))


def test_eval_batches_are_the_same_every_time():
    windows = RandomWindows(tokens(), block_size=T, batch_size=4, seed=2, name="val")
    first = list(windows.eval_batches(5))
    again = list(windows.eval_batches(5))
    assert len(first) == 5
    for a, b in zip(first, again):
        assert_batch_equal(a, b)
    for a, b in zip(first, RandomWindows(tokens(), block_size=T, batch_size=4, seed=2).eval_batches(5)):
        assert_batch_equal(a, b)
    assert differs(first[0], first[1])
    assert list(windows.eval_batches(3))[2]["input_ids"].equal(first[2]["input_ids"])  # a prefix of a longer run
    assert all(differs(e, windows.batch(i)) for i, e in enumerate(first))  # not the training draws


# ---------------------------------------------------------------------------- sequential_windows


def check_sequential(data: np.ndarray, block_size: int, batch_size: int) -> None:
    batches = list(sequential_windows(data, block_size=block_size, batch_size=batch_size))
    n_rows = -(-(len(data) - 1) // block_size) if len(data) > 1 else 0
    assert sum(b["input_ids"].shape[0] for b in batches) == n_rows
    inputs, labels = [], []
    for b in batches:
        x, y = b["input_ids"], b["labels"]
        assert x.shape == y.shape and x.shape[1] == block_size and 1 <= x.shape[0] <= batch_size
        assert x.dtype == y.dtype == torch.int64
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            keep = [i for i, v in enumerate(row_y) if v != -100]
            assert keep == list(range(len(keep))), "padding only at the end of a row"
            assert all(v == 0 for v in row_x[len(keep) :])
            # within a row each label is the next input (a contiguous window)
            assert row_x[1 : len(keep)] == row_y[: len(keep) - 1]
            inputs += row_x[: len(keep)]
            labels += row_y[: len(keep)]
    assert labels == data[1:].astype(np.int64).tolist()  # every token predicted exactly once, in order
    assert inputs == data[:-1].astype(np.int64).tolist()  # from the token right before it


def test_sequential_windows_small_example():
    data = np.arange(10, 31, dtype=np.uint16)  # 21 tokens -> 20 predictions
    batches = list(sequential_windows(data, block_size=8, batch_size=2))
    assert [b["input_ids"].shape for b in batches] == [(2, 8), (1, 8)]
    assert batches[1]["input_ids"].tolist() == [[26, 27, 28, 29, 0, 0, 0, 0]]
    assert batches[1]["labels"].tolist() == [[27, 28, 29, 30, -100, -100, -100, -100]]
    check_sequential(data, 8, 2)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=70),
    block_size=st.integers(min_value=1, max_value=12),
    batch_size=st.integers(min_value=1, max_value=5),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_sequential_windows_predict_every_token_once(n, block_size, batch_size, seed):
    check_sequential(tokens(n, seed=seed), block_size, batch_size)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_windows_read_from_a_memory_mapped_shard_equal_its_slices(tmp_path, dtype):
    path = tmp_path / "train.bin"
    np.random.default_rng(0).integers(0, 60000, size=5000).astype(dtype).tofile(path)
    tokens = np.memmap(path, dtype=dtype, mode="r")
    starts = np.array([0, 17, 4000, 5000 - 65])
    want = np.stack([np.asarray(tokens[s : s + 65]) for s in starts]).astype(np.int64)
    got = read_windows(tokens, starts, 65)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    view = tokens[100:]  # a slice of a map keeps its parent's file offset: read by slicing instead
    assert np.array_equal(read_windows(view, starts[:3], 65), np.stack([view[s : s + 65] for s in starts[:3]]))
    loader = RandomWindows(tokens, block_size=64, batch_size=4, seed=1)
    in_memory = RandomWindows(np.array(tokens), block_size=64, batch_size=4, seed=1)
    assert torch.equal(loader.batch(3)["input_ids"], in_memory.batch(3)["input_ids"])


def test_a_shard_shorter_than_its_map_is_a_data_error(tmp_path):
    path = tmp_path / "train.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    with open(path, "r+b") as f:
        f.truncate(1000)  # the file lost half its tokens after it was opened
    with pytest.raises(DataError, match="train.bin"):
        read_windows(tokens, np.array([900]), 65)
