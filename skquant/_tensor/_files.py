"""Files written whole or not at all: a temporary file in the target's folder,
then moved in place (``os.replace``)."""

import os
import secrets
import stat

from .._common._checks import check_path


def check_target(path, name):
    """The folder of the file ``path`` is to be written to (a ``ValueError``
    naming parameter ``name`` when ``path`` is a folder or its folder is not
    there: said before any work, not when the file is moved in place)."""
    path = check_path(path, name)
    seps = tuple({os.sep, os.altsep or os.sep, "/"})
    if not path or os.path.isdir(path) or path.endswith(seps):
        raise ValueError(
            f"{name}={path!r} is a folder (or empty); give the path of the file "
            "to write."
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise ValueError(f"{name}={path!r}: its folder {folder!r} {what}.")
    return folder


def create_temp(folder, readable=False):
    """``(fd, path)`` of a new empty file in ``folder``, with the mode a new file
    gets: ``0o666`` less the umask (the OS applies it, and default ACLs)."""
    flags = (
        (os.O_RDWR if readable else os.O_WRONLY)
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_BINARY", 0)
        | getattr(os, "O_NOFOLLOW", 0)
    )
    for _ in range(100):
        tmp = os.path.join(folder, f".skquant-{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 2**64 names
            continue
    raise FileExistsError(  # pragma: no cover
        f"no unused temporary file name in {folder!s}."
    )


def replace_file(path, emit):
    """``emit(f)`` into a temporary file next to ``path``, then move it there."""
    path = check_path(path)
    check_target(path, "path")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ValueError(  # (a device or a pipe became a regular file)
            f"path={path!r} exists and is not a regular file; give a file's path."
        )
    path = os.path.realpath(path)  # (a link's target is replaced, the link kept)
    folder = check_target(path, "path")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:  # no file there yet (or none we may read): umask applies
        mode = None
    fd, tmp = create_temp(folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.chmod(tmp, mode)
            emit(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
