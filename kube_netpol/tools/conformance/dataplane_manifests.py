"""The manifests folder the lab's agent reads (``kube-netpol run --manifests DIR``).

The folder holds one file with the whole object set. Each write replaces it
atomically (a hidden temporary file, then rename), so the agent never reads
half a file, and returns the revision the agent reports on /statusz once it
has applied exactly that content.

The agent notices a change by the file's (mtime, size). Two writes within one
clock tick with the same size would look unchanged, so every write gets an
mtime strictly later than the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from kube_netpol.sources.manifests import objects_revision
from kube_netpol.sources.manifests import read_manifest_file

#: The file holding the objects; the agent skips names starting with "." (the temporary file).
FILE_NAME = "cluster.json"
_TEMPORARY_NAME = ".cluster.json.tmp"


class ManifestFolder:
    """A temporary folder of manifests; ``write`` replaces its content, ``remove`` deletes it."""

    def __init__(self, parent: str | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="kube-netpol-manifests-", dir=parent))
        self._last_mtime_ns = 0

    @property
    def file(self) -> Path:
        return self.path / FILE_NAME

    def write(self, objects: Iterable[Mapping[str, Any]]) -> str:
        """Replace the folder's objects; returns the revision the agent will report for them."""
        document = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        temporary = self.path / _TEMPORARY_NAME
        # default=str: a YAML scalar such as a date must not stop the write; the revision
        # below is computed from what was written, so it still matches the agent's.
        temporary.write_text(json.dumps(document, default=str, sort_keys=True), encoding="utf-8")
        mtime_ns = max(time.time_ns(), self._last_mtime_ns + 1_000_000)
        os.utime(temporary, ns=(mtime_ns, mtime_ns))
        self._last_mtime_ns = mtime_ns
        os.replace(temporary, self.file)
        return objects_revision(read_manifest_file(self.file))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
