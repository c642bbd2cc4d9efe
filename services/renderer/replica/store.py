"""On-disk replica store: one ``<replica_id>.npz`` file per replica under a root directory."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from parley.errors import InvalidInput, NotFound
from services.renderer.replica.format import Replica, load, save

DEFAULT_REPLICA_ID = "astronaut"
ENV_DIR = "PARLEY_REPLICA_DIR"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_build_lock = threading.Lock()


def default_root() -> Path:
    """``$PARLEY_REPLICA_DIR`` or ``~/.cache/parley/replicas``."""
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "parley" / "replicas"


def astronaut_photo():
    """The default replica's photo: ``skimage.data.astronaut()`` (NASA, public domain)."""
    import skimage.data

    return skimage.data.astronaut()


class ReplicaStore:
    """get / save / list / delete replicas by id; :meth:`default` builds the astronaut replica once."""

    def __init__(self, root_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root_dir).expanduser() if root_dir is not None else default_root()
        self._cache: dict[str, tuple[float, Replica]] = {}
        self._lock = threading.Lock()

    def path(self, replica_id: str) -> Path:
        if not isinstance(replica_id, str) or not _ID_RE.match(replica_id):
            raise InvalidInput(
                f"invalid replica id {replica_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return self.root / f"{replica_id}.npz"

    def exists(self, replica_id: str) -> bool:
        return self.path(replica_id).is_file()

    def get(self, replica_id: str) -> Replica:
        """The replica (cached in memory while the file is unchanged). NotFound / InvalidInput."""
        path = self.path(replica_id)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            raise NotFound(f"no replica {replica_id!r} in {self.root}") from None
        with self._lock:
            hit = self._cache.get(replica_id)
            if hit is not None and hit[0] == mtime:
                return hit[1]
        try:
            replica = load(path)
        except FileNotFoundError:
            raise NotFound(f"no replica {replica_id!r} in {self.root}") from None
        if replica.replica_id != replica_id:
            raise InvalidInput(f"{path}: file holds replica {replica.replica_id!r}, not {replica_id!r}")
        with self._lock:
            self._cache[replica_id] = (mtime, replica)
        return replica

    def save(self, replica: Replica) -> Path:
        path = save(replica, self.path(replica.replica_id))
        with self._lock:
            self._cache.pop(replica.replica_id, None)
        return path

    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.npz") if _ID_RE.match(p.stem))

    def delete(self, replica_id: str) -> None:
        path = self.path(replica_id)
        with self._lock:
            self._cache.pop(replica_id, None)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"no replica {replica_id!r} in {self.root}") from None

    def build(self, photo, replica_id: str, *, progress: Callable[[float, str], None] | None = None,
              source: str = "photo", **kwargs) -> Replica:
        """Build a replica from a photo (bytes or RGB array) and save it under ``replica_id``."""
        from services.renderer.replica.build import build_replica

        self.path(replica_id)  # validate the id before the expensive part
        replica = build_replica(photo, replica_id, progress=progress, source=source, **kwargs)
        self.save(replica)
        return replica

    def default(self, *, progress: Callable[[float, str], None] | None = None) -> Replica:
        """The astronaut replica: loaded from the store, or built from the photo on first use and saved.

        A cached file that is corrupt or of another format version is rebuilt.
        """
        with _build_lock:
            try:
                return self.get(DEFAULT_REPLICA_ID)
            except (NotFound, InvalidInput):
                pass
            return self.build(astronaut_photo(), DEFAULT_REPLICA_ID, progress=progress,
                              source="skimage.data.astronaut (NASA, public domain)")


def load_default_replica(root_dir: str | os.PathLike[str] | None = None, *,
                         progress: Callable[[float, str], None] | None = None) -> Replica:
    """The default (astronaut) replica from ``root_dir`` / ``$PARLEY_REPLICA_DIR`` / the user cache."""
    return ReplicaStore(root_dir).default(progress=progress)
