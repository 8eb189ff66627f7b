"""The sandbox of stdio MCP servers: the bubblewrap (``bwrap``) command line that runs one
(pure: builds argv and environment, checks paths; imports neither Django nor the MCP SDK).

A sandboxed server gets its own PID, IPC, UTS, mount, user and (unless its catalog entry turns
``network`` on) network namespaces, and sees only:

- the system directories read-only (``/usr``, ``/bin``, ``/sbin``, ``/lib*``; on a merged-usr
  system the top-level ones are the same symlinks as on the host);
- the few files of ``/etc`` a program needs to run, resolve names and verify TLS
  (``ETC_FILES``), never all of ``/etc``: the server runs as root outside its user namespace,
  so a read-only ``/etc`` would still expose ``/etc/shadow`` and ``/etc/ssl/private``;
- its catalog entry's ``read_only_paths`` (a venv, a ``node_modules``, and for a Python venv
  the base interpreter it links to, ``sys.base_prefix``);
- the session's workspace read-write at ``/workspace``, its working directory and ``HOME``;
- a fresh ``/proc`` of its own PID namespace, a minimal ``/dev``, a private ``/tmp``.

Nothing of the dashboard's environment reaches it: bwrap is started with exactly the
environment of ``environment()``, which it hands down (not with ``--clearenv`` plus
``--setenv``: those would put the catalog's secret values on bwrap's command line, which every
user of the host can read in ``/proc/<pid>/cmdline``).

Lifetime: the sandbox's init (bwrap's pid 1 of the new PID namespace) exits when the server
does, or when the bwrap process the client started dies (``--die-with-parent``), or when it is
killed; as it exits, the kernel kills every process of the namespace, detached and
SIGTERM-ignoring grandchildren included, and reaps them before the init's own exit completes.
(The outer bwrap may exit a moment before that, so the client waits for the init itself.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

BWRAP = "/usr/bin/bwrap"
WORKSPACE = "/workspace"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Inside its user namespace the server is root (uid 0 maps to our uid, so files it writes in the
# workspace belong to the dashboard's user) but holds no capability at all.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/ld.so.cache",  # the dynamic linker's library index
    "/etc/passwd",  # name lookups (getpwuid); no password hashes: those live in /etc/shadow
    "/etc/group",
    "/etc/nsswitch.conf",  # how names are looked up
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/resolv.conf",  # DNS, for servers with network
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/localtime",
    "/etc/ssl/certs",  # the CA bundle (not /etc/ssl/private)
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates.conf",
    "/etc/alternatives",  # Debian's /usr/bin symlinks (java, editor, ...) point here
    "/etc/mime.types",
)
# A read-only path may not be, contain or lie inside these trees...
FORBIDDEN_TREES = ("/etc", "/proc", "/sys", "/dev", "/boot", "/run", "/var/run")
# ...nor be or contain a whole home folder (a venv or interpreter inside one is fine).
FORBIDDEN_WHOLE = ("/root", "/home")


class SandboxUnavailable(Exception):
    """bwrap is missing or cannot run here."""


class SandboxPathError(ValueError):
    """A read-only path that cannot be given to a sandbox."""


def bwrap_path() -> str:
    """The bwrap executable, or SandboxUnavailable saying how to get it."""
    if os.access(BWRAP, os.X_OK):
        return BWRAP
    found = shutil.which("bwrap")
    if found:
        return found
    raise SandboxUnavailable(
        f"{BWRAP} not found: install Debian's bubblewrap (apt-get install bubblewrap), "
        "or set SESSIONADMIN_STDIO_SANDBOX=off to run stdio servers unisolated"
    )


def environment(catalog_env: Mapping[str, str], *, lang: str = "C.UTF-8") -> dict[str, str]:
    """The whole environment of a sandboxed server: PATH, HOME (the workspace), LANG, and the
    catalog entry's own values (which may override PATH or LANG)."""
    return {"PATH": SANDBOX_PATH, "HOME": WORKSPACE, "LANG": lang} | dict(catalog_env)


def check_read_only_paths(
    paths: Iterable[str], *, forbidden: Iterable[str | Path] = (), forbidden_whole: Iterable[str | Path] = ()
) -> list[str]:
    """Validate a catalog entry's read-only paths: absolute, existing, neither being, inside
    nor containing a forbidden tree (``FORBIDDEN_TREES`` plus ``forbidden``: the dashboard's
    var/ folder, database file, workspaces root), and neither being nor containing a place of
    ``FORBIDDEN_WHOLE`` plus ``forbidden_whole`` (a home folder, the repository: a venv inside
    one is fine). Returns them normalized; raises SandboxPathError."""
    trees = [Path(p).resolve() for p in (*FORBIDDEN_TREES, *forbidden)]
    wholes = [Path(p).resolve() for p in (*FORBIDDEN_WHOLE, *forbidden_whole)]
    out: list[str] = []
    for raw in paths:
        text = str(raw).strip()
        if not text:
            continue
        if not os.path.isabs(text):
            raise SandboxPathError(f"{text}: a read-only path must be absolute")
        path = Path(os.path.normpath(text))
        if not path.exists():
            raise SandboxPathError(f"{path}: no such file or folder")
        real = path.resolve()
        for place in trees:
            if real == place or place in real.parents or real in place.parents:
                raise SandboxPathError(f"{path}: may not be, contain or lie inside {place}")
        for place in wholes:
            if real == place or real in place.parents:
                raise SandboxPathError(f"{path}: may not be or contain {place}")
        if str(path) not in out:
            out.append(str(path))
    return out


def _visible(path: str, read_only_paths: Sequence[str]) -> bool:
    roots = [*SYSTEM_DIRS, *read_only_paths]
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def check_command(command: str, read_only_paths: Sequence[str]) -> None:
    """A command the sandbox can start: an existing absolute path which, with the file its
    symlinks lead to, lies in a system directory or a read-only path. FileNotFoundError or
    SandboxPathError otherwise (with what to add)."""
    if not os.path.isabs(command):
        raise SandboxPathError(f"{command}: a sandboxed command must be an absolute path")
    if not os.path.exists(command):
        raise FileNotFoundError(2, "No such file or directory", command)
    for path in dict.fromkeys((os.path.normpath(command), os.path.realpath(command))):
        if not _visible(path, read_only_paths):
            raise SandboxPathError(f"{path} is outside the sandbox: add its folder to the catalog entry's read-only paths")


def command(
    argv: Sequence[str],
    *,
    workspace: str,
    read_only_paths: Sequence[str] = (),
    network: bool = False,
    bwrap: str = BWRAP,
    info_fd: int | None = None,
) -> list[str]:
    """The bwrap command line that runs ``argv`` in a sandbox (see the module docstring).
    ``read_only_paths`` are expected validated (``check_read_only_paths``). With ``info_fd``,
    bwrap writes there a JSON object whose ``child-pid`` is the host pid of the sandbox's init:
    the process whose end is the end of every process in the sandbox."""
    args = [
        bwrap,
        *(["--info-fd", str(info_fd)] if info_fd is not None else []),
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        *(["--share-net"] if network else ["--unshare-net"]),
        "--die-with-parent",
        "--new-session",  # no controlling terminal to push keystrokes into (TIOCSTI)
        "--cap-drop",
        "ALL",
        "--hostname",
        "mcp-sandbox",
    ]
    # /proc, /dev and the private /tmp first: a read-only path under /tmp (a checkout there)
    # bound before the tmpfs would be hidden by it.
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",  # noqa: S108 (a tmpfs of its own inside the sandbox)
    ]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    for path in read_only_paths:
        # The real location is bound at the given path, so a venv reached through a symlink
        # keeps the prefix its interpreter expects.
        args += ["--ro-bind", os.path.realpath(path), path]
    args += [
        "--bind",
        workspace,
        WORKSPACE,
        "--chdir",
        WORKSPACE,
        "--",
        *argv,
    ]
    return args
