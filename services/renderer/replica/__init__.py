"""Replicas: Gaussian faces bound to a landmark rig (format, building from a photo, storage).

See ``format.py`` for the file format, ``build.py`` for building from one photo and ``rig_design.py``
for the control bases.
"""

from services.renderer.replica.format import FORMAT_VERSION, Replica, basis_coefficients
from services.renderer.replica.store import DEFAULT_REPLICA_ID, ReplicaStore, load_default_replica


def build_replica(*args, **kwargs):
    """See :func:`services.renderer.replica.build.build_replica` (imported lazily: it pulls torch)."""
    from services.renderer.replica.build import build_replica as _build

    return _build(*args, **kwargs)


__all__ = [
    "DEFAULT_REPLICA_ID",
    "FORMAT_VERSION",
    "Replica",
    "ReplicaStore",
    "basis_coefficients",
    "build_replica",
    "load_default_replica",
]
