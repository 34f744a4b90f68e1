import struct
import zlib

import pytest

from cluster.core.storage.keys import (
    decode_counter,
    decode_float,
    encode_counter,
    encode_value,
    row_key,
    split_column,
)


def test_row_key_exact_bytes():
    # crc32(b"u000001") % 16 computed independently of the implementation's formatting
    bucket = zlib.crc32(b"u000001") % 16
    assert row_key("u000001", 16) == bytes(f"{bucket:02x}", "ascii") + b"|u000001"
    assert row_key("u000001", 1) == b"00|u000001"
    assert row_key("用户", 256)[2:] == "|用户".encode()


def test_row_keys_spread_sequential_ids():
    buckets = {row_key(f"u{i:06d}", 16)[:2] for i in range(200)}
    assert len(buckets) == 16


@pytest.mark.parametrize("bad", [0, 257])
def test_row_key_rejects_bucket_counts(bad):
    with pytest.raises(ValueError):
        row_key("u1", bad)


def test_row_key_rejects_empty_id():
    with pytest.raises(ValueError):
        row_key("", 16)


@pytest.mark.parametrize(
    "value, raw",
    [(True, b"1"), (False, b"0"), (42, b"42"), (-3, b"-3"), (0.1, b"0.1"), (1234.5, b"1234.5"), ("北京", "北京".encode())],
)
def test_encode_value_exact(value, raw):
    assert encode_value(value) == raw


def test_encode_rejects_non_finite_and_objects():
    with pytest.raises(ValueError):
        encode_value(float("nan"))
    with pytest.raises(TypeError):
        encode_value([1, 2])


def test_counter_is_hbase_long():
    assert encode_counter(5) == b"\x00\x00\x00\x00\x00\x00\x00\x05"
    assert encode_counter(-1) == b"\xff" * 8
    assert decode_counter(struct.pack(">q", 123456789012)) == 123456789012


def test_float_round_trip():
    assert decode_float(encode_value(653.01)) == 653.01


def test_split_column():
    assert split_column("f:rfm_frequency") == ("f", "rfm_frequency")
    for bad in ("rfm", "x:y", "f:", ":q"):
        with pytest.raises(ValueError):
            split_column(bad)
