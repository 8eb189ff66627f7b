"""Session workspaces on disk: ``{root}/{user_id}/{session_id}``, mode 0700.

Everything below the root is reached through directory file descriptors opened with
``O_NOFOLLOW``, so a symlink planted at a user or session path is refused instead of followed,
and removal (``shutil.rmtree`` with ``dir_fd``, which never follows links) cannot delete
anything outside the workspace.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sessionadmin.validation import is_valid_id

WORKSPACE_MODE = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkspaceError(Exception):
    """A workspace could not be created or removed; the message says why."""


def workspace_path(root: Path | str, user_id: str, session_id: str) -> Path:
    return Path(root).resolve() / user_id / str(session_id)


def _check_components(user_id: str, session_id: str) -> None:
    # Ids are validated by the manager already; this guards the filesystem on its own terms.
    for part in (user_id, str(session_id)):
        if not is_valid_id(part):
            raise WorkspaceError(f"refusing unsafe path component {part[:40]!r}")


@contextmanager
def _open_dir(name: str | Path, *, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _chmod_dir_nofollow(name: str, dir_fd: int) -> None:
    """chmod a directory without following a symlink swapped in at ``name``: open it with
    O_PATH | O_NOFOLLOW | O_DIRECTORY (no read permission needed, a link fails with ENOTDIR or
    ELOOP) and chmod the opened inode through /proc, as glibc's fchmodat(AT_SYMLINK_NOFOLLOW)
    does. Linux has no lchmod."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.chmod(f"/proc/self/fd/{fd}", WORKSPACE_MODE)
    finally:
        os.close(fd)


def _ensure_user_dir(root_fd: int, user_id: str) -> None:
    try:
        os.mkdir(user_id, WORKSPACE_MODE, dir_fd=root_fd)
    except FileExistsError:
        pass
    st = os.stat(user_id, dir_fd=root_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise WorkspaceError(f"user directory {user_id!r} is a symlink; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise WorkspaceError(f"user path {user_id!r} exists and is not a directory")
    if stat.S_IMODE(st.st_mode) != WORKSPACE_MODE:
        # mkdir's mode is filtered by the umask; set it explicitly.
        _chmod_dir_nofollow(user_id, root_fd)


def _make_session_dir(root_fd: int, user_id: str, session_id: str) -> None:
    _ensure_user_dir(root_fd, user_id)
    with _open_dir(user_id, dir_fd=root_fd) as user_fd:
        os.mkdir(session_id, WORKSPACE_MODE, dir_fd=user_fd)
        try:
            _chmod_dir_nofollow(session_id, user_fd)
        except OSError:
            os.rmdir(session_id, dir_fd=user_fd)
            raise


def create_workspace(root: Path | str, user_id: str, session_id: str) -> Path:
    """Create the session's directory (and its user directory), both 0700 whatever the umask.

    Raises WorkspaceError, leaving no partial session directory behind.
    """
    _check_components(user_id, session_id)
    root_path = Path(root).resolve()
    try:
        root_path.mkdir(mode=WORKSPACE_MODE, parents=True, exist_ok=True)
        with _open_dir(root_path) as root_fd:
            try:
                _make_session_dir(root_fd, user_id, str(session_id))
            except FileNotFoundError:
                # The user directory was pruned (its last session ended) between our mkdir
                # and the session's: make it again, once.
                _make_session_dir(root_fd, user_id, str(session_id))
    except FileExistsError as exc:
        raise WorkspaceError(f"workspace path already exists (not reused or followed): {exc.filename or session_id}") from exc
    except WorkspaceError:
        raise
    except OSError as exc:
        raise WorkspaceError(f"cannot create workspace under {root_path}: {exc.strerror or exc}") from exc
    return root_path / user_id / str(session_id)


def remove_workspace(root: Path | str, user_id: str, session_id: str, *, prune_user_dir: bool = False) -> bool:
    """Remove the session's directory tree. True if something was removed, False if it was
    already gone (so a second call is a no-op). Never follows a symlink: a link planted at the
    session path is unlinked itself, links inside the tree are removed as links. Entries that
    vanish while the tree is walked (another worker removing the same tree) are not errors:
    absence is the goal. With ``prune_user_dir`` the user directory goes too once empty.

    Raises WorkspaceError with the first failure.
    """
    _check_components(user_id, session_id)
    root_path = Path(root).resolve()
    sid = str(session_id)
    try:
        with _open_dir(root_path) as root_fd:
            try:
                user_fd = os.open(user_id, _DIR_FLAGS, dir_fd=root_fd)
            except FileNotFoundError:
                return False
            try:
                removed = _remove_entry(sid, user_fd)
            finally:
                os.close(user_fd)
            if prune_user_dir:
                _rmdir_if_empty(user_id, root_fd)
            return removed
    except FileNotFoundError as exc:
        if exc.filename in (None, str(root_path)):
            return False
        raise WorkspaceError(f"cannot remove workspace {root_path / user_id / sid}: {exc.strerror}") from exc
    except OSError as exc:
        where = exc.filename or (root_path / user_id / sid)
        raise WorkspaceError(f"cannot remove workspace {root_path / user_id / sid}: {exc.strerror or exc} ({where})") from exc


def _remove_entry(name: str, dir_fd: int) -> bool:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd, onerror=_ignore_vanished)
        else:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _ignore_vanished(function: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def _rmdir_if_empty(name: str, dir_fd: int) -> None:
    # A create for the same user may be filling it again right now: rmdir refuses a non-empty
    # directory, and create_workspace retries once if the directory vanished under it.
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError:
        pass


def remove_session_workspace(path: Path | str, *, user_id: str, session_id: str) -> bool:
    """Remove a session's workspace at the path stored on the session (not rebuilt from the
    current root, which may have changed since). The path must be the session's own
    ``{root}/{user_id}/{session_id}``: anything else is refused rather than removed. The
    user directory is removed too once it is empty."""
    stored = Path(path)
    if not stored.is_absolute() or stored.name != str(session_id) or stored.parent.name != user_id:
        raise WorkspaceError(f"refusing to remove {str(path)[:300]!r}: not the workspace of session {session_id} of {user_id!r}")
    return remove_workspace(stored.parent.parent, user_id, str(session_id), prune_user_dir=True)


@dataclass(frozen=True)
class WorkspaceInfo:
    """What the dashboard shows about a workspace. ``size``/``files`` are lower bounds when
    ``truncated`` (the walk stopped at its entry or time budget)."""

    exists: bool
    is_dir: bool = False
    is_symlink: bool = False
    mode: int | None = None
    size: int = 0
    files: int = 0
    truncated: bool = False
    error: str = ""

    @property
    def mode_ok(self) -> bool:
        return self.mode == WORKSPACE_MODE

    @property
    def mode_octal(self) -> str:
        return "" if self.mode is None else f"{self.mode:04o}"


def inspect_workspace(path: Path | str, *, max_entries: int = 10_000, max_seconds: float = 0.5) -> WorkspaceInfo:
    """Existence, mode, total size and file count of a workspace, without following symlinks.

    The walk is bounded by ``max_entries`` and ``max_seconds`` so a huge tree never blocks a
    page: past either budget it stops and reports ``truncated`` ("more than N files")."""
    import time

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return WorkspaceInfo(exists=False)
    except OSError as exc:
        return WorkspaceInfo(exists=False, error=exc.strerror or str(exc))
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return WorkspaceInfo(exists=True, is_symlink=True, mode=mode, error="the workspace path is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        return WorkspaceInfo(exists=True, mode=mode, size=st.st_size, error="the workspace path is not a directory")
    deadline = time.monotonic() + max_seconds
    size = files = entries = 0
    truncated = False
    error = ""
    stack = [str(path)]
    while stack and not truncated:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    entries += 1
                    if entries > max_entries or (entries % 256 == 0 and time.monotonic() > deadline):
                        truncated = True
                        break
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            files += 1
                            size += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError as exc:
            error = error or f"cannot read {current}: {exc.strerror or exc}"
    return WorkspaceInfo(exists=True, is_dir=True, mode=mode, size=size, files=files, truncated=truncated, error=error)


# --- reconciliation helpers (maintenance.py) ---------------------------------------------------


@dataclass(frozen=True)
class RootEntry:
    """One entry of the workspace root: a user level entry (``name`` None) or a session level
    entry below a user directory. ``kind`` is "dir", "symlink", "file" or "other" (lstat)."""

    user: str
    name: str | None
    kind: str
    mode: int
    mtime: float


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def scan_root(root: Path | str) -> Iterator[RootEntry]:
    """Every entry at the two levels of the root, read with lstat through O_NOFOLLOW directory
    descriptors: a symlink is reported as such, never entered. A missing root is empty."""
    root_path = Path(root).resolve()
    try:
        root_fd = os.open(root_path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise WorkspaceError(f"cannot open workspace root {root_path}: {exc.strerror or exc}") from exc
    try:
        with os.scandir(root_fd) as users:
            user_entries = [(e.name, e.stat(follow_symlinks=False)) for e in users]
        for user, st in user_entries:
            yield RootEntry(user, None, _kind(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime)
            if not stat.S_ISDIR(st.st_mode):
                continue
            try:
                user_fd = os.open(user, _DIR_FLAGS, dir_fd=root_fd)
            except OSError:
                continue  # replaced or removed since the listing
            try:
                with os.scandir(user_fd) as sessions:
                    for e in sessions:
                        sst = e.stat(follow_symlinks=False)
                        yield RootEntry(user, e.name, _kind(sst.st_mode), stat.S_IMODE(sst.st_mode), sst.st_mtime)
            finally:
                os.close(user_fd)
    finally:
        os.close(root_fd)


def fix_mode(root: Path | str, user: str, name: str | None = None) -> None:
    """chmod 0700 a user directory or a session directory, through O_NOFOLLOW descriptors (a
    symlink in the path is refused, so nothing outside the root changes mode)."""
    root_path = Path(root).resolve()
    try:
        with _open_dir(root_path) as root_fd, _open_dir(user, dir_fd=root_fd) as user_fd:
            if name is None:
                os.fchmod(user_fd, WORKSPACE_MODE)
            else:
                with _open_dir(name, dir_fd=user_fd) as fd:
                    os.fchmod(fd, WORKSPACE_MODE)
    except OSError as exc:
        raise WorkspaceError(f"cannot fix the mode of {root_path / user / (name or '')}: {exc.strerror or exc}") from exc


def remove_empty_user_dir(root: Path | str, user: str) -> bool:
    """rmdir a user directory if it is (still) empty; False otherwise."""
    try:
        with _open_dir(Path(root).resolve()) as root_fd:
            os.rmdir(user, dir_fd=root_fd)
        return True
    except OSError:
        return False
