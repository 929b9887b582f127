"""``MANIFEST.json``: the SHA-256 of every file of a model repository and the run it came from.

The manifest ties the backbone, the curves and the SVM to one training run. ``smr export`` writes
it last; ``smr export --check``, the ``smr serve`` launcher and the ``smr_postprocess`` model (at
load) verify it and refuse a repository whose files do not match, naming the file.

This module uses the standard library only: export copies it next to the Triton python model
(as ``smr_manifest.py``), where the ``smr`` package is not installed.
"""

from __future__ import annotations

import hashlib
import json
import os

__all__ = [
    "MANIFEST_FILE",
    "SCHEMA",
    "VERSION",
    "IGNORED_NAMES",
    "ManifestError",
    "sha256_file",
    "repository_files",
    "build_manifest",
    "write_manifest",
    "read_manifest",
    "manifest_problems",
    "verify_manifest",
]

MANIFEST_FILE = "MANIFEST.json"
SCHEMA = "smr.manifest"
VERSION = 1
# not artifacts: the repository's own README, and the byte code Python writes beside model.py
IGNORED_NAMES = ("README.md",)
_IGNORED_DIRS = ("__pycache__",)
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A repository whose files do not match its manifest (or that has no readable manifest)."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def repository_files(repo: str | os.PathLike, models: list[str] | tuple[str, ...]) -> list[str]:
    """Relative paths (``/``-separated, sorted) of every file in the given model folders."""
    out = []
    for model in models:
        top = os.path.join(repo, model)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS and not d.startswith("."))
            for name in filenames:
                if name.endswith(".pyc") or name.startswith("."):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), repo)
                out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def build_manifest(repo: str | os.PathLike, models: list[str] | tuple[str, ...], **info) -> dict:
    """The manifest document for the files now in ``models``; ``info`` adds run, export, versions."""
    files = {
        rel: {
            "sha256": sha256_file(os.path.join(repo, rel)),
            "bytes": os.path.getsize(os.path.join(repo, rel)),
        }
        for rel in repository_files(repo, models)
    }
    return {"schema": SCHEMA, "version": VERSION, "models": list(models), **info, "files": files}


def write_manifest(repo: str | os.PathLike, manifest: dict) -> str:
    path = os.path.join(repo, MANIFEST_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def read_manifest(repo: str | os.PathLike) -> dict:
    path = os.path.join(repo, MANIFEST_FILE)
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: missing; export the repository with `smr export`")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ManifestError(f"{path}: not an SMR manifest (schema {SCHEMA!r} expected)")
    if doc.get("version") != VERSION:
        raise ManifestError(
            f"{path}: manifest version {doc.get('version')!r}; this SMR reads version {VERSION}"
        )
    if not isinstance(doc.get("files"), dict) or not isinstance(doc.get("models"), list):
        raise ManifestError(f"{path}: missing 'files' or 'models'")
    return doc


def manifest_problems(repo: str | os.PathLike, manifest: dict | None = None) -> list[str]:
    """Every disagreement between the repository and its manifest, one message per file."""
    try:
        doc = read_manifest(repo) if manifest is None else manifest
    except ManifestError as exc:
        return [str(exc)]
    problems = []
    listed = doc["files"]
    for rel, entry in sorted(listed.items()):
        path = os.path.join(repo, rel)
        if not os.path.isfile(path):
            problems.append(f"{rel}: listed in {MANIFEST_FILE} but missing")
            continue
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        actual = sha256_file(path)
        if actual != expected:
            problems.append(
                f"{rel}: contents changed since export (sha256 {actual[:12]}..., {MANIFEST_FILE} says "
                f"{str(expected)[:12]}...)"
            )
    for rel in repository_files(repo, doc["models"]):
        if rel not in listed:
            problems.append(f"{rel}: not listed in {MANIFEST_FILE} (added after export?)")
    return problems


def verify_manifest(repo: str | os.PathLike) -> dict:
    """Return the manifest, or raise ``ManifestError`` naming every file that does not match it."""
    problems = manifest_problems(repo)
    if problems:
        raise ManifestError(
            f"model repository {os.fspath(repo)} does not match its {MANIFEST_FILE}: " + "; ".join(problems)
        )
    return read_manifest(repo)
