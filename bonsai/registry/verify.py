"""A version is immutable: its files are checked against the hashes recorded when it was written.

Once checked, the manifest's own account of the adapter (its content hash, name, rank) is trusted:
the files it was computed from are the files on disk, so the weights need not be read a second time.
"""

from __future__ import annotations

from pathlib import Path

from bonsai.errors import AdapterError
from bonsai.registry import peft
from bonsai.registry.hashing import file_sha256
from bonsai.registry.identity import AdapterRef, adapter_name
from bonsai.registry.manifest import MANIFEST_FILE, Manifest, read_manifest


def verify_version(path: Path) -> Manifest | None:
    """Check a version written by the registry against the file hashes it recorded; returns its manifest.

    Folders without recorded hashes (placed by hand) are not checked. Any file added, removed or
    changed since the version was written is refused: its name is a content hash, and serving other
    weights under it would poison every cache keyed by that name.
    """
    manifest = read_manifest(path)
    files = manifest.files if manifest else None
    if files is None:
        return manifest
    present = {p.name for p in path.iterdir() if p.is_file() and p.name != MANIFEST_FILE}
    problems = [f"{name} is missing" for name in sorted(set(files) - present)]
    problems += [f"{name} was added" for name in sorted(present - set(files))]
    problems += [f"{name} was modified" for name in sorted(set(files) & present) if file_sha256(path / name) != files[name]]
    recorded = manifest.version if manifest else None
    if recorded and recorded != path.name:
        problems.append(f"the folder was renamed from {recorded}")
    if problems:
        raise AdapterError(
            f"adapter {path.parent.name}@{path.name} was changed after it was written: {'; '.join(problems)}",
            "registry versions are immutable: roll back with `bonsai adapters rollback`, or retrain with `bonsai train`",
        )
    return manifest


def trusted_ref(path: Path, manifest: Manifest | None) -> AdapterRef | None:
    """The adapter as a checked manifest describes it, or ``None`` when it does not say enough (a folder
    placed by hand, an older manifest): then the caller hashes the weights itself.

    Only for a manifest that :func:`verify_version` has just checked against the files: its files'
    hashes cover the config and the weights the content hash was computed from.
    """
    if manifest is None or not manifest.files or peft.WEIGHTS_FILE not in manifest.files or peft.CONFIG_FILE not in manifest.files:
        return None
    digest, name, rank = manifest.adapter_hash, manifest.adapter_name, manifest.rank
    # one name per content hash: a manifest whose name is not the one its hash gives is not believed
    if not digest or name != adapter_name(digest) or rank is None or rank < 1 or manifest.target_modules is None:
        return None
    return AdapterRef(
        path=path.resolve(),
        content_hash=digest,
        name=name,
        rank=rank,
        target_modules=tuple(sorted(manifest.target_modules)),
        base_model=manifest.base_hash,
    )
