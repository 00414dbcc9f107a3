"""What the server may see: only images under its document root, and no command line holding
the API key.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import Server, invoke, write_image
from ls_review import review_ws, server_tasks

from sslall._fsutil import sha256_file
from sslall.store._pools import PoolStore
from sslall.store._records import Move, NewSample

pytestmark = pytest.mark.labelstudio


def test_review_images_outside_the_document_root_are_refused(ls: Server, tmp_path: Path,
                                                             runner) -> None:
    import tempfile

    ws, _ = review_ws(tmp_path, ls, n=1)
    outside = Path(tempfile.mkdtemp(prefix="sslall-outside-"))
    try:
        path = write_image(outside / "sub" / "x.png", 4321, size=20)
        with PoolStore(ws / "pools" / "pools.db") as store:
            store.add_samples([NewSample(sha256_file(path), str(path), "unlabeled")])
            store.apply_moves([Move(sha256_file(path), "review", from_pool="unlabeled",
                                    prediction="L1", confidence=0.5)], round_no=1)
        result = invoke(runner, "label", "push", "-w", ws)
        assert result.exit_code == 2
        assert "not inside a sub-folder of labelstudio.document_root" in result.stderr
        assert server_tasks(ls, ws) == []
    finally:
        shutil.rmtree(outside)


def test_no_process_has_the_api_key_in_its_arguments(ls: Server) -> None:
    """The server was started by `labelstudio_server.start`: the key went through its
    environment; no command line on this machine (which any user may read) holds it."""
    key = ls.key.encode()
    assert key in Path(f"/proc/{ls.proc.pid}/environ").read_bytes()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert key not in cmdline.read_bytes(), cmdline
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
