"""``parley replica ...`` against a real replica store."""


import numpy as np
from PIL import Image

from services.cli.main import main


def test_build_rejects_a_photo_without_a_face(replica_store, tmp_path, capsys):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(path)
    code = main(["replica", "--replica-dir", str(replica_store.root), "build", "--photo", str(path)])
    assert code == 2
    assert "no face" in capsys.readouterr().err.lower()


def test_build_rejects_an_unreadable_file(replica_store, tmp_path, capsys):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(b"not an image" * 10)
    assert main(["replica", "--replica-dir", str(replica_store.root), "build", "--photo", str(path)]) == 2
    assert "error" in capsys.readouterr().err.lower()


def test_list_and_delete(astronaut_replica, replica_store, capsys):
    assert main(["replica", "--replica-dir", str(replica_store.root), "list"]) == 0
    assert astronaut_replica.replica_id in capsys.readouterr().out.split()
    assert main(["replica", "--replica-dir", str(replica_store.root), "delete", "no-such-replica"]) == 1
    assert "no replica" in capsys.readouterr().err


