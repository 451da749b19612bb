"""Hashed train/test split: deterministic, about the asked fraction, complementary."""

import pytest

from ray_conductor.data.splits import select, split_of, unit_hash
from ray_conductor.errors import DataError


def test_unit_hash_is_the_first_8_bytes_of_sha256():
    # sha256("a") = ca978112ca1bbdca fac231b3... ; 0xca978112ca1bbdca / 2**64 = 0.79138...
    assert unit_hash("a") == pytest.approx(0xCA978112CA1BBDCA / 2**64)
    assert 0.7913 < unit_hash("a") < 0.7914
    assert split_of("a") == "train" and split_of("a", test_fraction=0.8) == "test"


def test_fraction_and_edges():
    ids = [f"mmlu_pro/{i}" for i in range(10_000)]
    share = sum(split_of(q) == "test" for q in ids) / len(ids)
    assert 0.19 < share < 0.21
    assert {split_of(q, 0.0) for q in ids[:100]} == {"train"}
    assert {split_of(q, 1.0) for q in ids[:100]} == {"test"}


def test_select_partitions_and_refuses_unknown_splits():
    ids = [f"routerbench/mbpp.dev.{i}" for i in range(500)]
    train, test, every = select("train"), select("test"), select("all")
    assert all(train(q) != test(q) for q in ids) and all(map(every, ids))
    assert [split_of(q) for q in ids] == [split_of(q) for q in ids]  # same answer every time
    with pytest.raises(DataError, match="unknown split 'dev': use one of train, test, all"):
        select("dev")
