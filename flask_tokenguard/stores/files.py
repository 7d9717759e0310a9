"""Owner-only files for the stores that keep their data in a local SQLite file.

A store file holds client secret hashes, password hashes and private signing keys, so
its folder is created ``0700`` and the file ``0600`` before the first connection: SQLite
gives the ``-wal`` and ``-shm`` files it creates beside the database the same mode as
the database file. An existing file that group or others may read or write is refused
with the command that fixes it, rather than used as it is.
"""

from __future__ import annotations

import os
import stat

from ..errors import ConfigurationError
from ..errors import StoreError

#: Files that SQLite keeps beside the database in WAL mode.
_SIDE_FILES = ("-wal", "-shm")


def prepare_private_file(path: str) -> None:
    """Create ``path``'s folder (0700) and the empty file (0600) if missing; check it.

    :raises StoreError: the folder or file cannot be created.
    :raises ConfigurationError: the file, or its ``-wal``/``-shm``, is open to group or others.
    """
    folder = os.path.dirname(path)
    try:
        if folder and not os.path.isdir(folder):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        # O_EXCL: the file is ours only if we create it; then it is born 0600, and no
        # other user can open it between its creation and a chmod.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create the store file {path}: {exc}", exc) from exc
    else:
        os.close(fd)
    if os.name == "nt":  # pragma: no cover - Windows has ACLs, not mode bits
        return
    for name in (path, *(path + suffix for suffix in _SIDE_FILES)):
        try:
            mode = os.stat(name).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"cannot read the mode of {name}: {exc}", exc) from exc
        if stat.S_IMODE(mode) & 0o077:
            raise ConfigurationError(
                f"the store file {name} is open to group or others"
                f" (mode {stat.S_IMODE(mode):04o}); run: chmod 600 {name}"
            )
