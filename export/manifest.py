"""``MANIFEST.json``: the SHA-256 of every file of a model repository and the run it came from.

The manifest ties the backbone, the curves and the SVM to one training run. ``smr export`` writes
it last; ``smr export --check``, the ``smr serve`` launcher and the python models (at load) verify
it and refuse a repository whose files do not match, naming the file.

It covers everything Triton could load or run: every folder at the top of the repository must be
one of the manifest's ``models`` (an extra model folder is refused), every file below them must be
listed (an extra file is refused), and Python byte code (``__pycache__``, ``*.pyc``) is refused
even when listed: Python runs a ``__pycache__/model.cpython-3XX.pyc`` instead of the ``model.py``
beside it, so byte code would bypass the source's checksum. The repository's own ``README.md`` is
the one file outside the models that is allowed.

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
    "BYTECODE_DIR",
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
# the one file at the top of a repository, beside MANIFEST.json, that is not an artifact
IGNORED_NAMES = ("README.md",)
BYTECODE_DIR = "__pycache__"
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A repository whose files do not match its manifest (or that has no readable manifest)."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_bytecode(rel: str) -> bool:
    parts = rel.split("/")
    return BYTECODE_DIR in parts or rel.endswith((".pyc", ".pyo"))


def repository_files(repo: str | os.PathLike, models: list[str] | tuple[str, ...]) -> list[str]:
    """Relative paths (``/``-separated, sorted) of every file in the given model folders.

    Nothing is skipped: hidden files and byte code are files Triton's python backend could load.
    """
    out = []
    for model in models:
        top = os.path.join(repo, model)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), repo)
                out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def _unlisted_entries(repo: str | os.PathLike, doc: dict) -> list[str]:
    """Folders and files beside the manifest's model folders (the repository's top level)."""
    problems = []
    models = set(doc["models"])
    for name in sorted(os.listdir(repo)):
        path = os.path.join(repo, name)
        if name in models:
            continue
        if os.path.isdir(path):
            problems.append(
                f"{name}/: model folder not listed in {MANIFEST_FILE} (Triton would load it); remove it, "
                "or export the repository again"
            )
        elif name not in (MANIFEST_FILE, *IGNORED_NAMES):
            problems.append(f"{name}: not listed in {MANIFEST_FILE} (added after export?); remove it")
    return problems


def build_manifest(repo: str | os.PathLike, models: list[str] | tuple[str, ...], **info) -> dict:
    """The manifest document for the files now in ``models``; ``info`` adds run, export, versions.

    Raises ``ManifestError`` when a model folder holds Python byte code, which is never listed."""
    rels = repository_files(repo, models)
    bytecode = [rel for rel in rels if _is_bytecode(rel)]
    if bytecode:
        raise ManifestError(f"{', '.join(bytecode)}: Python byte code is not an artifact; remove it")
    files = {
        rel: {
            "sha256": sha256_file(os.path.join(repo, rel)),
            "bytes": os.path.getsize(os.path.join(repo, rel)),
        }
        for rel in rels
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


def manifest_problems(
    repo: str | os.PathLike, manifest: dict | None = None, *, allow: tuple[str, ...] = ()
) -> list[str]:
    """Every disagreement between the repository and its manifest, one message per file.

    ``allow``: relative paths of byte-code files to accept (a python model accepts the cache of its
    own ``model.py`` that the python backend stub wrote when it imported it, see postprocess.py).
    """
    try:
        doc = read_manifest(repo) if manifest is None else manifest
    except ManifestError as exc:
        return [str(exc)]
    problems = _unlisted_entries(repo, doc)
    listed = doc["files"]
    for rel, entry in sorted(listed.items()):
        path = os.path.join(repo, rel)
        if _is_bytecode(rel):
            problems.append(f"{rel}: Python byte code listed in {MANIFEST_FILE}; byte code is never served")
            continue
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
        if rel in listed or rel in allow:
            continue
        if _is_bytecode(rel):
            problems.append(
                f"{rel}: Python byte code not listed in {MANIFEST_FILE} (Python would run it instead of "
                "the checked source); remove it"
            )
        else:
            problems.append(f"{rel}: not listed in {MANIFEST_FILE} (added after export?)")
    return problems


def verify_manifest(repo: str | os.PathLike, *, allow: tuple[str, ...] = ()) -> dict:
    """Return the manifest, or raise ``ManifestError`` naming every file that does not match it."""
    problems = manifest_problems(repo, allow=allow)
    if problems:
        raise ManifestError(
            f"model repository {os.fspath(repo)} does not match its {MANIFEST_FILE}: " + "; ".join(problems)
        )
    return read_manifest(repo)
