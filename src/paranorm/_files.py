"""Atomic file writes: a temporary file beside the target, then a rename onto it.

An interrupted or failed write removes the temporary file and leaves the target as it was:
an exception (KeyboardInterrupt included), or SIGTERM/SIGHUP while the write runs in the main
thread (the temporary goes, then the signal is delivered again, so the process still ends as
the signal asks: status 128 + signal). A symlink is written through, as ``cp`` does: its target
is replaced and the link kept; a link to nowhere is refused. Only SIGKILL or a power loss can
leave a temporary, named ``.<name>.paranorm-<pid>-<host>.tmp``; the next write into that folder
removes those of this host whose process has ended.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from ._errors import ParanormError

__all__ = [
    "TEMPORARY_PATTERN",
    "atomic_write",
    "check_target",
    "file_kind",
    "os_error_message",
    "remove_stale_temporaries",
    "shell_quoted",
]

#: How a leftover temporary is named, for ``rm`` by hand (``rm <folder>/.*.paranorm-*.tmp``).
TEMPORARY_PATTERN = ".<name>.paranorm-<pid>-<host>.tmp"
_TEMPORARY = re.compile(r"\A\..*\.paranorm-(?P<pid>[0-9]{1,9})-(?P<host>[A-Za-z0-9._-]*)(?:~[0-9]+)?\.tmp\Z", re.S)
_NAME_MAX = 255
#: The signals whose default action (ending the process) would leave the temporary behind.
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_lock = threading.Lock()
_ours: set[str] = set()  # temporaries this process is writing now (never stale)


def shell_quoted(path: str | os.PathLike[str]) -> str:
    """``path`` as a shell word for a message; its repr when it holds unprintable characters."""
    text = os.fspath(path)
    quoted = shlex.quote(text)
    return quoted if quoted.isprintable() else repr(text)


def os_error_message(error: OSError, path: str | os.PathLike[str], action: str = "writing") -> str:
    """One line saying what ``error`` (raised while ``action`` ``path``) means and what to do."""
    shown = repr(os.fspath(path))
    folder = shell_quoted(Path(path).parent)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if error.errno == errno.ENOSPC else "disk quota exceeded"
        return (
            f"{what} {action} {shown}; the file is left as it was. Free some space (df -h {folder}) "
            "or write to another disk."
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied {action} {shown}; the file is left as it was. Choose a folder you "
            f"can write (ls -ld {folder})."
        )
    if error.errno == errno.EROFS:
        return f"{shown} is on a read-only file system; write to another disk."
    if error.errno == errno.EFBIG:
        return f"{shown} is larger than this file system allows; write to another disk."
    reason = error.strerror or type(error).__name__
    return f"{action} {shown} failed: {reason} (errno {error.errno}); the file is left as it was."


def file_kind(mode: int) -> str:
    """What ``mode`` (an ``st_mode``) says a path is, for a message: "folder", "FIFO (named pipe)", ..."""
    for test, name in (
        (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def check_target(
    path: str | os.PathLike[str], *, overwrite: bool = True, what: str = "the target",
    flag: str = "overwrite=True", error: type[ParanormError] = ParanormError,
) -> Path:
    """The file a write to ``path`` replaces (a symlink's target), once it may be replaced.

    Refused: a symlink to nowhere, a target that is not a regular file, an existing file unless
    ``overwrite``, a read-only file (even with ``overwrite``), a folder that does not exist.
    ``what`` names the path in messages ("OUT") and ``flag`` how to allow overwriting.
    """
    given = Path(path)
    shown = repr(str(given))
    real = Path(os.path.realpath(given))
    try:
        info = os.stat(given)
    except FileNotFoundError:
        info = None
        if given.is_symlink():
            raise error(
                f"{what} {shown} is a symlink to {str(real)!r}, which does not exist; paranorm "
                f"writes through a symlink only to an existing file. Remove the link, point it at "
                f"a file, or choose another {what}."
            ) from None
    except OSError as failure:
        raise error(f"{what} {shown} cannot be used: {failure.strerror}. Choose another {what}.") from None
    if info is None:
        if not real.parent.is_dir():
            raise error(
                f"the folder of {what} {shown} does not exist; create it "
                f"(mkdir -p {shell_quoted(real.parent)}) or choose another {what}."
            )
        return real
    if not stat.S_ISREG(info.st_mode):
        raise error(
            f"{what} {shown} is a {file_kind(info.st_mode)}, not a regular file; refusing to replace "
            f"it. Give {what} as a file path."
        )
    if not overwrite:
        raise error(f"{what} {shown} exists; refusing to replace it. Pass {flag} to replace it, or choose another {what}.")
    # The mode bits too: root may write anything, but a read-only file says "keep me".
    if not info.st_mode & 0o222 or not os.access(real, os.W_OK):
        raise error(
            f"{what} {shown} is read-only; refusing to replace it. Make it writable first "
            f"(chmod u+w {shell_quoted(real)}), or write elsewhere."
        )
    return real


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64]


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[str]:
    """Remove paranorm's temporaries in ``folder`` left by ended processes of this host.

    Only regular files of this user whose name has paranorm's pattern, whose host is this one
    and whose process no longer runs (or is this process, but not one of its writes in
    progress) go; a process on another host sharing the folder is never guessed dead.
    """
    removed: list[str] = []
    host, me, uid = _host(), os.getpid(), os.getuid() if hasattr(os, "getuid") else None
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or match["host"] != host:
            continue
        pid = int(match["pid"])
        with _lock:
            live = entry.path in _ours or (pid != me and (pid <= 0 or _pid_runs(pid)))
        try:
            info = entry.stat(follow_symlinks=False)
            if live or not stat.S_ISREG(info.st_mode) or (uid is not None and info.st_uid != uid):
                continue
            os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            continue  # best effort: gone already, or not ours to remove
    return removed


def _create_temporary(target: Path) -> tuple[int, str]:
    """Open a new temporary beside ``target``: (fd, path)."""
    suffix = f".paranorm-{os.getpid()}-{_host()}"
    name = target.name
    while len(f".{name}{suffix}~999.tmp".encode(errors="surrogateescape")) > _NAME_MAX and name:
        name = name[:-1]  # a long target name is shortened: a temporary needs room for its tag
    # A new file gets what open() gives (0o666 less the umask); an existing one keeps its mode.
    mode = 0o666
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for attempt in range(1000):
        tmp = str(target.parent / f".{name}{suffix}{'' if attempt == 0 else f'~{attempt}'}.tmp")
        with _lock:
            if tmp in _ours:
                continue
            try:
                fd = os.open(tmp, flags, mode)
            except FileExistsError:
                continue
            _ours.add(tmp)
            return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target))


class _Signalled(BaseException):
    """SIGTERM or SIGHUP arrived during a write: unwind to the cleanup, then end as asked."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _signals_unwind(received: list[int]) -> Iterator[None]:
    """While the body runs, SIGTERM/SIGHUP raise instead of ending the process at once.

    Only signals whose handler is the default (ending the process) are taken over, and only in
    the main thread (the only one Python delivers signals to): an ignored SIGHUP (nohup) stays
    ignored, and a program's own handler stays in charge. The handlers are restored after.
    """
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def handler(signum: int, frame: FrameType | None) -> None:
            if not received:  # a second signal during the cleanup must not cut it short
                received.append(signum)
                raise _Signalled(signum)

        for signum in _SIGNALS:
            if signal.getsignal(signum) is signal.SIG_DFL:
                previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _end_as_signalled(signum: int) -> None:
    """Deliver ``signum`` again under its default action: the process ends with 128 + signum."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    raise SystemExit(128 + signum)  # only if the signal is blocked in this thread


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: some systems cannot fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _place(tmp: str, target: Path, overwrite: bool, error: Callable[[str], ParanormError]) -> None:
    """Rename ``tmp`` onto ``target``; without ``overwrite``, never over a file that appeared."""
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # fails if target exists, unlike a rename
    except FileExistsError:
        raise error(
            f"{str(target)!r} appeared while it was being written; refusing to replace it. "
            "Choose another path, or allow overwriting."
        ) from None
    except OSError:  # a file system without hard links
        if os.path.lexists(target):
            raise error(f"{str(target)!r} appeared while it was being written; refusing to replace it.") from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], *, overwrite: bool = True,
    error: type[ParanormError] = ParanormError,
) -> Iterator[BinaryIO]:
    """Yield a binary file to write; on success it is fsynced and renamed onto ``path``.

    ``path`` is checked first (:func:`check_target`; a symlink is written through). Without
    ``overwrite`` an existing file is refused, also one created while the write ran.

    Raises:
        ParanormError (or ``error``): ``path`` may not be replaced, or writing it failed (the
            message names the file and the cause: no space left, permission denied, ...).

    Example:
        >>> import pathlib, tempfile
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.bin"
        >>> with atomic_write(target) as handle:
        ...     _ = handle.write(b"data")
        >>> target.read_bytes(), sorted(p.name for p in target.parent.iterdir())
        (b'data', ['out.bin'])
    """
    target = check_target(path, overwrite=overwrite, error=error)
    existing = target.stat().st_mode & 0o777 if target.exists() else None
    remove_stale_temporaries(target.parent)
    try:
        fd, tmp = _create_temporary(target)
    except OSError as failure:
        raise error(os_error_message(failure, path, "creating a file beside")) from None
    received: list[int] = []
    try:
        with _signals_unwind(received):
            try:
                with os.fdopen(fd, "wb") as handle:
                    yield handle
                    handle.flush()
                    if existing is not None:
                        os.fchmod(handle.fileno(), existing)  # the file it replaces keeps its mode
                    os.fsync(handle.fileno())
                if received:  # the signal's exception was swallowed inside the body
                    raise _Signalled(received[0])
                _place(tmp, target, overwrite, error)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                if received:  # whatever a library below made of the signal's exception
                    raise _Signalled(received[0]) from None
                raise
    except _Signalled as signalled:
        _end_as_signalled(signalled.signum)
    except OSError as failure:  # from the body or from the fsync, rename: no space left, ...
        raise error(os_error_message(failure, path)) from failure
    finally:
        with _lock:
            _ours.discard(tmp)
    _sync_folder(target.parent)
