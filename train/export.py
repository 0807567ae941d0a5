"""Publishing the run's ``adapter/`` so that a kill at any instant leaves a loadable adapter there (old or new).

:func:`fusion.block.adapter.export_adapter` writes a complete directory; here it writes to ``.adapter-staging``
beside the target, which then takes the target's place in one step: ``renameat2(RENAME_EXCHANGE)`` on Linux (the
old and the new directory swap names atomically, then the old one is deleted). Where the kernel or file system
lacks it, two renames (``adapter`` -> ``adapter.old``, staging -> ``adapter``) leave an instant without
``adapter/``; :func:`recover` (called when a run starts) puts ``adapter.old`` back if a kill fell there.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from pathlib import Path

from fusion.crash_points import crash_point

STAGING = ".adapter-staging"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> bool:
    """Swap the names of the existing paths ``a`` and ``b`` atomically; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # kernel or file system without it
        return False
    raise OSError(code, os.strerror(code), f"{a} <-> {b}")


def _old(target: Path) -> Path:
    return target.with_name(target.name + ".old")


def replace_dir(new: Path, target: Path, swap=exchange) -> None:
    """Make the complete directory ``new`` be ``target`` (replacing an existing one); ``new`` is gone afterwards."""
    if not target.exists():
        new.rename(target)  # one rename: atomic
        return
    if swap(new, target):
        shutil.rmtree(new)  # now holds the previous adapter
        return
    old = _old(target)
    shutil.rmtree(old, ignore_errors=True)
    target.rename(old)
    new.rename(target)  # a kill between the two renames is undone by recover()
    shutil.rmtree(old)


def recover(target: Path) -> None:
    """Undo what a kill inside :func:`replace_dir` or :func:`export_run_adapter` left: the previous adapter goes
    back to ``target`` if it was moved aside; the staging and ``.old`` leftovers are deleted."""
    old = _old(target)
    if old.is_dir() and not target.exists():
        old.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    staging = target.with_name(STAGING)
    for leftover in (staging, staging.with_name(STAGING + ".tmp"), staging.with_name(STAGING + ".old")):
        shutil.rmtree(leftover, ignore_errors=True)


def export_run_adapter(peft_model, target: str | Path, state_dict: dict | None = None) -> Path:
    """``export_adapter`` into a staging directory beside ``target``, then :func:`replace_dir` it into place."""
    from fusion.block.adapter import export_adapter

    target = Path(target)
    recover(target)
    staging = export_adapter(peft_model, target.with_name(STAGING), state_dict)
    crash_point("adapter-save")
    replace_dir(staging, target)
    return target
