"""Reading the platform's secret files: API keys, PII keys, the registry key, Spark's secret.

One rule for all of them: the file must be a regular file that neither group nor others may
access (mode 0600 or stricter), checked on the file actually opened. Errors name the setting and
the path, never the content.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cluster.core.errors import ConfigError

__all__ = ["create_private_file", "read_private_file", "read_secret_file"]


def read_private_file(path: Path, field: str, *, missing_hint: str = "") -> str:
    """The text of the secret file ``path`` that the setting ``field`` names.

    Args:
        path: The file.
        field: The setting naming it (``registry.key_file``), for the error messages.
        missing_hint: Appended to the "does not exist" error (how to create the file).

    Raises:
        ConfigError: missing, unreadable, not a regular file, or group/other-accessible.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError(f"{field} {path} does not exist{'; ' + missing_hint if missing_hint else ''}",
                          field=field) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {field} {path}: {exc.strerror}", field=field) from None
    with os.fdopen(fd, "r", encoding="utf-8") as fh:
        st = os.fstat(fh.fileno())  # of the file actually opened, not of whatever the path names now
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{field} {path} is not a regular file", field=field)
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{field} {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others may access it; "
                f"run `chmod 600 {path}`",
                field=field,
            )
        return fh.read()


def read_secret_file(path: Path, field: str) -> str:
    """A file holding one secret (a token, Spark's shared secret): its text without surrounding
    white space.

    Raises:
        ConfigError: as :func:`read_private_file`, or the file is empty.
    """
    text = read_private_file(path, field).strip()
    if not text:
        raise ConfigError(f"{field} {path} is empty", field=field)
    return text


def create_private_file(path: Path, text: str) -> bool:
    """Create the secret file ``path`` holding ``text``, mode 0600 (folder 0700), unless it exists.

    The file appears atomically (written aside with O_EXCL, fsynced, then hard-linked into place),
    so two processes racing to create it end up sharing one content and nobody ever reads a
    partial or group-readable file.

    Returns:
        True if the file was created, False if it already existed (it is left as it is).
    """
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)
    return True
