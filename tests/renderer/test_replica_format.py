"""Replica file format and store: round trip, damaged files, versions, ids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parley.errors import InvalidInput, NotFound
from services.renderer.replica import FORMAT_VERSION, ReplicaStore
from services.renderer.replica.format import Replica, from_bytes, load, to_bytes


def test_round_trip_is_exact(astronaut_replica, tmp_path):
    store = ReplicaStore(tmp_path)
    path = store.save(astronaut_replica)
    assert path.name == "astronaut.npz"
    loaded = store.get("astronaut")
    assert loaded.equals(astronaut_replica)
    assert loaded.meta["version"] == FORMAT_VERSION
    assert loaded.meta["bases"] == astronaut_replica.meta["bases"]
    for name, arr in astronaut_replica.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name], arr, err_msg=name)
        assert loaded.arrays[name].dtype == arr.dtype


def test_store_list_delete_and_unknown_id(astronaut_replica, tmp_path):
    store = ReplicaStore(tmp_path)
    assert store.list() == []
    store.save(astronaut_replica)
    copy = Replica("copy-1", dict(astronaut_replica.arrays), dict(astronaut_replica.meta, replica_id="copy-1"))
    store.save(copy)
    assert store.list() == ["astronaut", "copy-1"]
    assert store.get("copy-1").replica_id == "copy-1"
    store.delete("copy-1")
    assert store.list() == ["astronaut"]
    with pytest.raises(NotFound, match="no replica 'copy-1'"):
        store.get("copy-1")
    with pytest.raises(NotFound):
        store.delete("copy-1")
    with pytest.raises(NotFound):
        store.get("nobody")


@pytest.mark.parametrize("bad_id", ["", "../etc/passwd", "a/b", ".hidden", "x" * 65, "sp ace"])
def test_invalid_ids_are_invalid_input(tmp_path, bad_id):
    with pytest.raises(InvalidInput, match="invalid replica id"):
        ReplicaStore(tmp_path).get(bad_id)


def test_truncated_file_is_invalid_input(astronaut_replica, tmp_path):
    data = to_bytes(astronaut_replica)
    for cut in (10, len(data) // 3, len(data) - 100):
        path = tmp_path / "astronaut.npz"
        path.write_bytes(data[:cut])
        with pytest.raises(InvalidInput, match="corrupt or truncated|not a Parley replica|lacks"):
            ReplicaStore(tmp_path).get("astronaut")


def test_corrupt_file_is_invalid_input(astronaut_replica, tmp_path):
    data = bytearray(to_bytes(astronaut_replica))
    # Flip bytes inside the array payload (not the zip directory): the CRC check must catch it.
    for off in range(len(data) // 2, len(data) // 2 + 64):
        data[off] ^= 0xFF
    path = tmp_path / "astronaut.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="corrupt"):
        load(path)
    with pytest.raises(InvalidInput):
        from_bytes(b"definitely not a zip archive" * 10)
    with pytest.raises(InvalidInput, match="empty"):
        from_bytes(b"")


def _rewrite_meta(replica: Replica, **changes) -> bytes:
    import io

    meta = dict(replica.meta, **changes)
    buf = io.BytesIO()
    payload = dict(replica.arrays)
    payload["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, **payload)
    return buf.getvalue()


def test_wrong_version_and_format_are_invalid_input(astronaut_replica):
    with pytest.raises(InvalidInput, match="version 99 is not supported"):
        from_bytes(_rewrite_meta(astronaut_replica, version=99))
    with pytest.raises(InvalidInput, match="not a Parley replica"):
        from_bytes(_rewrite_meta(astronaut_replica, format="something-else"))


def test_bad_arrays_are_invalid_input(astronaut_replica):
    arrays = dict(astronaut_replica.arrays)
    arrays["colors"] = arrays["colors"][:-1]
    with pytest.raises(InvalidInput, match="'colors' has shape"):
        Replica("x", arrays, dict(astronaut_replica.meta)).validate()
    arrays = dict(astronaut_replica.arrays)
    bad = arrays["colors"].copy()
    bad[0, 0] = np.nan
    arrays["colors"] = bad
    with pytest.raises(InvalidInput, match="non-finite"):
        Replica("x", arrays, dict(astronaut_replica.meta)).validate()
    arrays = dict(astronaut_replica.arrays)
    arrays["bind_idx"] = arrays["bind_idx"] + 10_000
    with pytest.raises(InvalidInput, match="out of range"):
        Replica("x", arrays, dict(astronaut_replica.meta)).validate()


def test_default_rebuilds_a_damaged_cache(astronaut_replica, tmp_path, monkeypatch):
    """default() returns the cached file; a damaged one is rebuilt (build stubbed to the fixture)."""
    store = ReplicaStore(tmp_path)
    store.save(astronaut_replica)
    assert store.default().equals(astronaut_replica)
    (tmp_path / "astronaut.npz").write_bytes(b"garbage")
    calls = []

    def fake_build(photo, replica_id, **kwargs):
        calls.append(replica_id)
        store.save(astronaut_replica)
        return astronaut_replica

    monkeypatch.setattr(store, "build", fake_build)
    assert store.default() is astronaut_replica
    assert calls == ["astronaut"]


def test_env_overrides_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PARLEY_REPLICA_DIR", str(tmp_path / "r"))
    assert ReplicaStore().root == tmp_path / "r"
    monkeypatch.delenv("PARLEY_REPLICA_DIR")
    assert str(ReplicaStore().root).endswith(".cache/parley/replicas")
