"""SHA-256 of files and ``SHA256SUMS`` manifests (the format ``sha256sum -c`` reads)."""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from t2i.utils.atomic import atomic_write_text

MANIFEST = "SHA256SUMS"
EXCLUDED = (MANIFEST, "provenance.json")  # top-level files a manifest never lists
_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")  # text or binary mode line of sha256sum


class ChecksumError(RuntimeError):
    """Files that do not match their manifest."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _listed_files(root: Path, include: Iterable[str] | None) -> list[str]:
    tops = [root / name for name in include] if include is not None else [root]
    files = []
    for top in tops:
        candidates = [top] if top.is_file() else (p for p in top.rglob("*") if p.is_file())
        files += [p.relative_to(root).as_posix() for p in candidates]
    return sorted(f for f in set(files) if f not in EXCLUDED)


def write_sha256sums(directory: str | os.PathLike, include: Iterable[str] | None = None) -> Path:
    """Write ``directory/SHA256SUMS`` over every file below it (sorted by path).

    ``include`` restricts the manifest to these top-level entries (files or folders).
    The manifest itself and ``provenance.json`` are never listed.
    """
    root = Path(directory)
    lines = "".join(f"{sha256_file(root / rel)}  {rel}\n" for rel in _listed_files(root, include))
    atomic_write_text(root / MANIFEST, lines)
    return root / MANIFEST


def verify_sha256sums(directory: str | os.PathLike) -> int:
    """Check every file listed in ``directory/SHA256SUMS``; return how many were checked.

    Raises ``ChecksumError`` naming each missing or changed file.
    """
    root = Path(directory)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise ChecksumError(f"{manifest}: missing")
    problems, count = [], 0
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise ChecksumError(f"{manifest}:{number}: not a sha256sum line: {line!r}")
        expected, rel = match.group(1).lower(), match.group(2)
        count += 1
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif (actual := sha256_file(path)) != expected:
            problems.append(f"{rel}: expected {expected}, got {actual}")
    if problems:
        raise ChecksumError(f"{manifest}: {len(problems)} of {count} files do not match: " + "; ".join(problems))
    return count
