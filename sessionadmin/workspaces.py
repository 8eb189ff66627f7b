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
        os.chmod(user_id, WORKSPACE_MODE, dir_fd=root_fd)


def create_workspace(root: Path | str, user_id: str, session_id: str) -> Path:
    """Create the session's directory (and its user directory), both 0700 whatever the umask.

    Raises WorkspaceError, leaving no partial session directory behind.
    """
    _check_components(user_id, session_id)
    root_path = Path(root).resolve()
    try:
        root_path.mkdir(mode=WORKSPACE_MODE, parents=True, exist_ok=True)
        with _open_dir(root_path) as root_fd:
            _ensure_user_dir(root_fd, user_id)
            with _open_dir(user_id, dir_fd=root_fd) as user_fd:
                os.mkdir(str(session_id), WORKSPACE_MODE, dir_fd=user_fd)
                try:
                    os.chmod(str(session_id), WORKSPACE_MODE, dir_fd=user_fd)
                except OSError:
                    os.rmdir(str(session_id), dir_fd=user_fd)
                    raise
    except FileExistsError as exc:
        raise WorkspaceError(f"workspace path already exists (not reused or followed): {exc.filename or session_id}") from exc
    except WorkspaceError:
        raise
    except OSError as exc:
        raise WorkspaceError(f"cannot create workspace under {root_path}: {exc.strerror or exc}") from exc
    return root_path / user_id / str(session_id)


def remove_workspace(root: Path | str, user_id: str, session_id: str) -> bool:
    """Remove the session's directory tree. True if something was removed, False if it was
    already gone (so a second call is a no-op). Never follows a symlink: a link planted at the
    session path is unlinked itself, links inside the tree are removed as links.

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
                try:
                    st = os.stat(sid, dir_fd=user_fd, follow_symlinks=False)
                except FileNotFoundError:
                    return False
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(sid, dir_fd=user_fd)
                else:
                    os.unlink(sid, dir_fd=user_fd)
                return True
            finally:
                os.close(user_fd)
    except FileNotFoundError as exc:
        if exc.filename in (None, str(root_path)):
            return False
        raise WorkspaceError(f"cannot remove workspace {root_path / user_id / sid}: {exc.strerror}") from exc
    except OSError as exc:
        where = exc.filename or (root_path / user_id / sid)
        raise WorkspaceError(f"cannot remove workspace {root_path / user_id / sid}: {exc.strerror or exc} ({where})") from exc
