"""Checkpoint stores: where chunks and manifests live, and the local-filesystem one.

`CheckpointStore` is the protocol every store implements (local disk today,
remote or replicated stores later); `checkpoint.testing.check_store` is the
conformance suite that says what implementing it means. `FileSystemStore`
keeps one job's checkpoints under `root/<job_id>/`:

    root/<job_id>/chunks/<first 2 hex of digest>/<64 hex of digest>
    root/<job_id>/manifests/<checkpoint_id:020d>.json

Durability argument for `FileSystemStore` (the property: a manifest that a
reader can see, before or after a machine crash, names only chunks that are
complete and present):

1. Every object is written to a fresh temp file in its final directory, fsynced,
   then renamed into place, then the directory is fsynced: an object is either
   absent or complete, and it is on disk before the write call returns.
2. Checkpoint writers put every chunk (each durable as in 1) before the
   manifest, so a durable manifest only names durable chunks.
3. A manifest is linked into place without overwriting (`os.link`): a committed
   checkpoint id never changes meaning; writing identical bytes again succeeds.
4. Deleting a manifest fsyncs its directory before returning, so retention's
   "manifests first, then chunks" order survives a crash: a manifest whose
   chunks were deleted cannot come back.
5. Every read re-verifies sizes and sha256 (chunks) or the embedded checksum,
   job id and checkpoint id (manifests); names on disk are never trusted.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Final, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from checkpoint._errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointNotFound,
    InvalidStoreConfig,
    StoreWriteError,
)
from checkpoint._manifest import ChunkRef, Manifest, chunk_ref_of

__all__ = [
    "CheckpointStore",
    "FaultHook",
    "FileSystemStore",
    "SupportsGarbageCollection",
    "store_from_uri",
]

FaultHook = Callable[[str, int], None]
"""`fault_hook(path, nbytes)`: called before each object write; may raise OSError or sleep."""

TEMP_PREFIX: Final = ".tmp-"
_JOB_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
_FANOUT_RE: Final = re.compile(r"[0-9a-f]{2}")
_MANIFEST_NAME_RE: Final = re.compile(r"([0-9]{20})\.json")
_READ_BLOCK: Final = 1 << 20


@runtime_checkable
class CheckpointStore(Protocol):
    """Durable storage for one job's chunks and manifests.

    Contract (checked by `checkpoint.testing.check_store`):
    - chunks are content-addressed and immutable; `put_chunk` is idempotent and
      the chunk is durable when it returns;
    - `put_manifest` is atomic and durable: readers see the whole manifest or
      nothing; a manifest is never replaced by a different one;
    - every read verifies: a damaged object raises `CheckpointCorrupt` naming
      it, an absent one `CheckpointNotFound`; a failed write raises
      `StoreWriteError` and leaves nothing partial visible;
    - many writers (threads, processes) may put chunks concurrently.
    """

    @property
    def job_id(self) -> str:
        """The job whose checkpoints this store holds; manifests of other jobs are refused."""
        ...

    def describe(self) -> str:
        """Where the store lives (a path or URI), for messages and logs."""
        ...

    def put_chunk(self, data: bytes) -> ChunkRef:
        """Store `data` under its content address and return that address (durable on return)."""
        ...

    def get_chunk(self, ref: ChunkRef) -> bytes:
        """Return the chunk's bytes after checking size and sha256.

        Raises CheckpointNotFound if absent, CheckpointCorrupt (naming the chunk)
        if truncated or damaged.
        """
        ...

    def has_chunk(self, ref: ChunkRef) -> bool:
        """Whether the chunk is present with the right size (content is not re-hashed)."""
        ...

    def delete_chunk(self, ref: ChunkRef) -> None:
        """Remove the chunk; removing an absent chunk is not an error."""
        ...

    def list_chunks(self) -> list[ChunkRef]:
        """Every chunk present, ordered by digest; sizes are as stored, not as expected."""
        ...

    def put_manifest(self, manifest: Manifest) -> None:
        """Commit a checkpoint by writing its manifest, atomically and durably.

        Raises StoreWriteError if the write fails, if the manifest belongs to
        another job, or if a different manifest already holds that id.
        """
        ...

    def get_manifest(self, checkpoint_id: int) -> Manifest:
        """Return the verified manifest; CheckpointNotFound if absent, else CheckpointCorrupt."""
        ...

    def list_checkpoints(self) -> list[int]:
        """Ids of the manifests present, ascending, without reading the manifests."""
        ...

    def delete_manifest(self, checkpoint_id: int) -> None:
        """Remove a manifest durably; removing an absent one is not an error."""
        ...


@runtime_checkable
class SupportsGarbageCollection(Protocol):
    """Optional store capability that `collect_garbage` needs: object ages.

    A checkpoint in progress writes chunks no manifest references yet, so the
    collector only deletes unreferenced chunks older than a grace period; a
    store must be able to tell a chunk's age for that to be safe.
    """

    def chunk_mtime(self, ref: ChunkRef) -> float | None:
        """Unix time the chunk was last written or re-put, or None if absent."""
        ...

    def sweep_incomplete_writes(self, older_than: float) -> int:
        """Remove leftovers of writes that died midway, last touched before `older_than`.

        Returns how many were removed.
        """
        ...


class FileSystemStore:
    """A `CheckpointStore` on a local or shared POSIX filesystem.

    Guarantees: see the module docstring (write-fsync-rename-fsync for every
    object, no-overwrite manifests, durable manifest deletion, verified reads).
    Several processes may write chunks into the same store at once: content
    addressing plus atomic rename means racing writers of one chunk each install
    a complete, identical file.

    Re-putting an existing chunk skips the write when a file of the right size
    is already there. The size check catches truncation (a torn copy, a full
    disk during a manual restore), in which case the file is rewritten; it does
    not catch same-size bit rot, which every read detects (and
    `verify_checkpoint` reports). Pass `verify_existing=True` to re-hash the
    existing file instead, at the cost of reading it. A skipped write still
    fsyncs the directory (the file may have been renamed in by a concurrent
    writer a moment ago and not be durable yet) and refreshes the file's mtime,
    which is what protects a re-used chunk from `collect_garbage`.

    `fault_hook(path, nbytes)` runs for every object write, after the temp file
    is created and before its bytes are written, so an OSError it raises takes
    the same clean-up path as a real ENOSPC or EIO. An OSError there or anywhere
    in a write raises StoreWriteError naming the path and the errno; the temp
    file is removed and no partial object becomes visible.

    Directories are created on the first write, so a store over an existing,
    read-only tree can be read and verified.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        job_id: str,
        fault_hook: FaultHook | None = None,
        verify_existing: bool = False,
    ) -> None:
        if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
            raise InvalidStoreConfig(
                f"job id {job_id!r} cannot name a directory: use letters, digits, '.', '_' "
                "and '-', starting with a letter or digit, at most 200 characters"
            )
        self._root = Path(root).absolute()
        self._job_id = job_id
        self._job_dir = self._root / job_id
        self._chunks_dir = self._job_dir / "chunks"
        self._manifests_dir = self._job_dir / "manifests"
        self._fault_hook = fault_hook
        self._verify_existing = verify_existing
        # Directories whose own entry this process has fsynced in their parent.
        self._durable_dirs: set[Path] = set()

    def __repr__(self) -> str:
        return f"FileSystemStore({str(self._root)!r}, job_id={self._job_id!r})"

    @property
    def job_id(self) -> str:
        """The job whose checkpoints this store holds."""
        return self._job_id

    @property
    def root(self) -> Path:
        """The directory holding one subdirectory per job."""
        return self._root

    def describe(self) -> str:
        """The job's directory, as a path."""
        return str(self._job_dir)

    def chunk_path(self, ref: ChunkRef) -> Path:
        """Where the chunk lives on disk (for operators and test corruptors)."""
        return self._chunks_dir / ref.hex[:2] / ref.hex

    def manifest_path(self, checkpoint_id: int) -> Path:
        """Where the manifest of `checkpoint_id` lives on disk."""
        return self._manifests_dir / f"{checkpoint_id:020d}.json"

    # -- chunks -----------------------------------------------------------------

    def put_chunk(self, data: bytes) -> ChunkRef:
        """Store `data` under its content address; durable when it returns.

        Raises StoreWriteError (path and errno in the message) if it cannot.
        """
        ref = chunk_ref_of(data)
        path = self.chunk_path(ref)
        if self._existing_chunk_is_sound(path, ref):
            try:
                os.utime(path)
                _fsync_dir(path.parent)
            except FileNotFoundError:
                pass  # deleted by a collector since we looked: write it below
            except OSError as exc:
                raise StoreWriteError(_os_error_text("cannot refresh chunk", path, exc)) from exc
            else:
                return ref
        self._write_atomically(path, data, overwrite=True)
        return ref

    def get_chunk(self, ref: ChunkRef) -> bytes:
        """Return the chunk after verifying its size and sha256.

        Raises CheckpointNotFound if absent, CheckpointCorrupt naming the chunk
        and its path if truncated or damaged, CheckpointError if unreadable.
        """
        path = self.chunk_path(ref)
        try:
            with path.open("rb") as file:
                # One byte more than expected is enough to call it wrong; no need to read a
                # huge stray file into memory.
                data = file.read(ref.size + 1)
        except FileNotFoundError as exc:
            raise CheckpointNotFound(f"chunk {ref.digest} is not in {self.describe()}") from exc
        except OSError as exc:
            raise CheckpointError(_os_error_text("cannot read chunk", path, exc)) from exc
        what = f"chunk {ref.digest} at {path}"
        if len(data) < ref.size:
            raise CheckpointCorrupt(what, f"truncated: {len(data)} bytes, expected {ref.size}")
        if len(data) > ref.size:
            raise CheckpointCorrupt(what, f"longer than the expected {ref.size} bytes")
        actual = chunk_ref_of(data)
        if actual.digest != ref.digest:
            raise CheckpointCorrupt(what, f"content hashes to {actual.digest}")
        return data

    def has_chunk(self, ref: ChunkRef) -> bool:
        """Whether a file of the chunk's size is present; the content is not re-hashed."""
        try:
            st = os.stat(self.chunk_path(ref))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == ref.size

    def delete_chunk(self, ref: ChunkRef) -> None:
        """Remove the chunk if present.

        The directory is not fsynced: a deletion undone by a crash only brings
        back garbage, which the next collection removes.
        """
        path = self.chunk_path(ref)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreWriteError(_os_error_text("cannot delete chunk", path, exc)) from exc

    def list_chunks(self) -> list[ChunkRef]:
        """Every chunk file present, ordered by digest; temp files and strays are ignored."""
        refs: list[ChunkRef] = []
        for fanout in _scandir(self._chunks_dir):
            if not (_FANOUT_RE.fullmatch(fanout.name) and fanout.is_dir(follow_symlinks=False)):
                continue
            for entry in _scandir(Path(fanout.path)):
                name = entry.name
                if not (_HEX64_RE.fullmatch(name) and name.startswith(fanout.name)):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we listed
                if stat.S_ISREG(st.st_mode):
                    refs.append(ChunkRef(digest="sha256:" + name, size=st.st_size))
        refs.sort()
        return refs

    def chunk_mtime(self, ref: ChunkRef) -> float | None:
        """Unix time the chunk was last written or re-put, or None if absent."""
        try:
            return os.stat(self.chunk_path(ref)).st_mtime
        except FileNotFoundError:
            return None

    def sweep_incomplete_writes(self, older_than: float) -> int:
        """Remove temp files of writers that died midway, last modified before `older_than`.

        A live writer's temp file is younger than any sane grace period; if a
        write is slower than that, it fails cleanly with StoreWriteError.
        """
        removed = 0
        directories = [self._manifests_dir]
        directories += [
            Path(entry.path)
            for entry in _scandir(self._chunks_dir)
            if _FANOUT_RE.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)
        ]
        for directory in directories:
            for entry in _scandir(directory):
                if not entry.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < older_than:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # its writer finished or cleaned up meanwhile
        return removed

    # -- manifests --------------------------------------------------------------

    def put_manifest(self, manifest: Manifest) -> None:
        """Commit `manifest` atomically and durably; it never replaces a different one.

        Writing byte-identical content again succeeds (so a retry after an
        ambiguous failure is safe). Raises StoreWriteError if the manifest belongs
        to another job, if a different manifest already holds its id, or if the
        write fails; in every error case the manifest is not left visible, unless
        the message says the outcome is unknown (its removal failed too).
        """
        if manifest.job_id != self._job_id:
            raise StoreWriteError(
                f"refusing to write a manifest of job {manifest.job_id!r} into "
                f"{self.describe()}, which holds job {self._job_id!r}"
            )
        data = manifest.to_bytes()
        path = self.manifest_path(manifest.checkpoint_id)
        try:
            self._write_atomically(path, data, overwrite=False)
        except FileExistsError as exc:
            try:
                existing = path.read_bytes()
            except OSError as read_exc:
                raise StoreWriteError(
                    _os_error_text("cannot read existing manifest", path, read_exc)
                ) from read_exc
            if existing != data:
                raise StoreWriteError(
                    f"{path}: checkpoint {manifest.checkpoint_id} already exists with different "
                    "content; a committed checkpoint is never overwritten (delete it first if "
                    "it is known to be bad)"
                ) from exc
            try:
                _fsync_dir(path.parent)
            except OSError as sync_exc:
                raise StoreWriteError(
                    _os_error_text("cannot sync manifest directory", path.parent, sync_exc)
                ) from sync_exc

    def get_manifest(self, checkpoint_id: int) -> Manifest:
        """Return the verified manifest of `checkpoint_id`.

        Raises CheckpointNotFound if absent; CheckpointCorrupt if truncated,
        damaged, of another job, or holding another checkpoint id than its file
        name says; CheckpointError if unreadable.
        """
        path = self.manifest_path(checkpoint_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise CheckpointNotFound(
                f"checkpoint {checkpoint_id} is not in {self.describe()}"
            ) from exc
        except OSError as exc:
            raise CheckpointError(_os_error_text("cannot read manifest", path, exc)) from exc
        manifest = Manifest.from_bytes(data, source=str(path), expected_job_id=self._job_id)
        if manifest.checkpoint_id != checkpoint_id:
            raise CheckpointCorrupt(
                str(path),
                f"file is named for checkpoint {checkpoint_id} but holds checkpoint "
                f"{manifest.checkpoint_id}",
            )
        return manifest

    def list_checkpoints(self) -> list[int]:
        """Ids of the manifest files present, ascending; the files are not read."""
        ids = []
        for entry in _scandir(self._manifests_dir):
            match = _MANIFEST_NAME_RE.fullmatch(entry.name)
            if match:
                ids.append(int(match.group(1)))
        ids.sort()
        return ids

    def delete_manifest(self, checkpoint_id: int) -> None:
        """Remove the manifest and fsync its directory, so the removal survives a crash."""
        path = self.manifest_path(checkpoint_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreWriteError(_os_error_text("cannot delete manifest", path, exc)) from exc
        try:
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StoreWriteError(
                _os_error_text("cannot sync manifest directory", path.parent, exc)
            ) from exc

    # -- machinery --------------------------------------------------------------

    def _existing_chunk_is_sound(self, path: Path, ref: ChunkRef) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False  # absent or unreadable: (re)write it
        if not stat.S_ISREG(st.st_mode) or st.st_size != ref.size:
            return False
        if not self._verify_existing:
            return True
        digest = hashlib.sha256()
        try:
            with path.open("rb") as file:
                while block := file.read(_READ_BLOCK):
                    digest.update(block)
        except OSError:
            return False
        return "sha256:" + digest.hexdigest() == ref.digest

    def _write_atomically(self, path: Path, data: bytes, *, overwrite: bool) -> None:
        """Install `data` at `path` via temp file, fsync, rename/link, directory fsync.

        With overwrite=False an existing `path` raises FileExistsError (nothing
        else changes). Any OSError becomes StoreWriteError; the temp file is
        removed in every case.
        """
        directory = path.parent
        try:
            self._ensure_dir(directory)
        except OSError as exc:
            raise StoreWriteError(
                _os_error_text("cannot create directory", directory, exc)
            ) from exc
        temp = directory / f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(8)}"
        installed = False
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                if self._fault_hook is not None:
                    self._fault_hook(str(path), len(data))
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if overwrite:
                os.replace(temp, path)
            else:
                try:
                    # link() fails if `path` exists, where rename() would silently replace it.
                    os.link(temp, path)
                except FileExistsError as exc:
                    raise _AlreadyExists from exc
                with suppress(OSError):
                    os.unlink(temp)  # before the directory fsync, which then covers it too
            installed = True
            _fsync_dir(directory)
        except _AlreadyExists:
            raise FileExistsError(errno.EEXIST, "already exists", str(path)) from None
        except OSError as exc:
            if installed and not overwrite:
                # The manifest is complete but its directory entry may not be durable;
                # withdraw it so that "put_manifest raised" means "not committed".
                try:
                    path.unlink()
                except OSError:
                    raise StoreWriteError(
                        _os_error_text("cannot write (outcome unknown)", path, exc)
                    ) from exc
                with suppress(OSError):
                    _fsync_dir(directory)
            raise StoreWriteError(_os_error_text("cannot write", path, exc)) from exc
        finally:
            with suppress(OSError):
                os.unlink(temp)  # no-op after a rename; clean-up after a failure

    def _ensure_dir(self, directory: Path) -> None:
        """Create `directory` (and its parents up to the root) with durable entries."""
        if directory in self._durable_dirs:
            return
        assert directory == self._root or self._root in directory.parents, directory
        if directory == self._root:
            directory.mkdir(parents=True, exist_ok=True)
        else:
            self._ensure_dir(directory.parent)
            directory.mkdir(exist_ok=True)
        # Also when it already existed: its creator may have died before syncing the parent.
        _fsync_dir(directory.parent)
        self._durable_dirs.add(directory)


def store_from_uri(
    uri: str, *, job_id: str, fault_hook: FaultHook | None = None
) -> CheckpointStore:
    """Open the store a URI names: `file:///path` or a plain path gives a FileSystemStore.

    The seam for remote and replicated stores. `fault_hook` is passed to the
    store (see `FileSystemStore`). Raises InvalidStoreConfig (a
    ValueError) for an empty URI, an unknown scheme, or a `file://` URI with a
    remote host.
    """
    if not uri:
        raise InvalidStoreConfig("empty checkpoint store URI")
    parts = urlsplit(uri)
    if parts.scheme == "":
        return FileSystemStore(Path(uri), job_id=job_id, fault_hook=fault_hook)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidStoreConfig(
                f"{uri!r}: file URIs must name a local path (file:///path), "
                f"not host {parts.netloc!r}"
            )
        if not parts.path:
            raise InvalidStoreConfig(f"{uri!r}: file URI without a path")
        return FileSystemStore(Path(unquote(parts.path)), job_id=job_id, fault_hook=fault_hook)
    raise InvalidStoreConfig(
        f"unsupported checkpoint store URI scheme {parts.scheme!r} in {uri!r}; "
        "supported: file:///path or a plain path"
    )


class _AlreadyExists(Exception):
    """The no-overwrite link found the target present (kept apart from other EEXISTs)."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scandir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _os_error_text(action: str, path: Path, exc: OSError) -> str:
    code = exc.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else "no errno"
    text = exc.strerror or (os.strerror(code) if code is not None else str(exc))
    return f"{action} {path}: {text} [{name}]"
