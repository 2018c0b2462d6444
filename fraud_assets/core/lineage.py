"""Data versions: a snapshot's DVC hash (the MD5 of its bytes, as DVC 3 records it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """The MD5 of a file's bytes: DVC 3's hash of a file, and our data version for a snapshot."""
    h = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def dvc_pinned_hashes(dvc_file: str | Path, cache_dir: str | Path) -> dict[str, str]:
    """``{relative path: md5}`` that a directory ``.dvc`` file pins, read from DVC's cache manifest.

    Returns an empty mapping when the directory has not been added to DVC (or its manifest is not
    in the local cache, e.g. before ``dvc pull``).
    """
    dvc_path = Path(dvc_file)
    if not dvc_path.exists():
        return {}
    outs = (yaml.safe_load(dvc_path.read_text()) or {}).get("outs") or []
    if not outs or not str(outs[0].get("md5", "")).endswith(".dir"):
        return {}
    md5 = outs[0]["md5"].removesuffix(".dir")
    manifest = Path(cache_dir) / "files" / "md5" / md5[:2] / f"{md5[2:]}.dir"
    if not manifest.exists():
        return {}
    return {entry["relpath"]: entry["md5"] for entry in json.loads(manifest.read_text())}
