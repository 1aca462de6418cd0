"""POSIX access ACLs on directories the daemon owns: grant one user or group traverse (``x``) and
nothing else, without widening the mode for anybody else.

The ACL is read and written as the ``system.posix_acl_access`` extended attribute (the kernel's
format: a version word, then ``(tag, perm, id)`` entries sorted by tag and id); no ``setfacl``
binary is needed. A directory without one behaves as the ACL its mode describes
(:func:`from_mode`). Adding a named entry recomputes the mask, which the kernel shows as the mode's
group bits: a 0700 directory with a traverse grant lists as 0710 while its owning group still has
no rights (:func:`effective_group_bits` says what the group really gets).

Blocking (a few syscalls): worker threads only.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import attrs

XATTR = "system.posix_acl_access"
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
R, W, X = 4, 2, 1

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


class AclUnsupported(OSError):
    """The file system does not take POSIX ACLs (mounted ``noacl``, or a type without them)."""


@attrs.frozen
class Entry:
    tag: int
    perm: int
    id: int = UNDEFINED_ID


def from_mode(mode: int) -> tuple[Entry, ...]:
    """The minimal ACL that ``mode``'s permission bits mean."""
    return (
        Entry(USER_OBJ, (mode >> 6) & 7),
        Entry(GROUP_OBJ, (mode >> 3) & 7),
        Entry(OTHER, mode & 7),
    )


def decode(data: bytes) -> tuple[Entry, ...]:
    """Entries of an xattr value; ``ValueError`` if it is not a version-2 ACL."""
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % _ENTRY.size:
        raise ValueError("not a POSIX ACL")
    (version,) = _HEADER.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"POSIX ACL version {version} is not supported")
    return tuple(Entry(*_ENTRY.unpack_from(data, off)) for off in range(_HEADER.size, len(data), _ENTRY.size))


def encode(entries: tuple[Entry, ...]) -> bytes:
    ordered = sorted(entries, key=lambda e: (e.tag, e.id))
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(e.tag, e.perm, e.id) for e in ordered)


def read(path: Path) -> tuple[Entry, ...]:
    """The access ACL of ``path`` (its mode's when it has none); the link itself is never followed."""
    try:
        return decode(os.getxattr(path, XATTR, follow_symlinks=False))
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise
    return from_mode(os.lstat(path).st_mode)


def with_entry(entries: tuple[Entry, ...], tag: int, ident: int, perm: int) -> tuple[Entry, ...]:
    """``entries`` with the named ``tag``/``ident`` entry granted ``perm`` (added to what it had),
    and the mask recomputed as the union of the group class (pure)."""
    kept: list[Entry] = []
    had = 0
    for e in entries:
        if e.tag == tag and e.id == ident:
            had = e.perm
        elif e.tag != MASK:
            kept.append(e)
    kept.append(Entry(tag, had | perm, ident))
    mask = 0
    for e in kept:
        if e.tag in (GROUP_OBJ, USER, GROUP):
            mask |= e.perm
    if any(e.tag in (USER, GROUP) for e in kept):
        kept.append(Entry(MASK, mask))
    return tuple(kept)


def grant(path: Path, tag: int, ident: int, perm: int = X) -> bool:
    """Give user (``tag=USER``) or group (``tag=GROUP``) ``ident`` the ``perm`` bits on ``path``
    (added to what it has); ``False`` when it already had them (nothing written).

    ``path`` must be a directory or file the daemon owns and that is not a symlink: a symlink is
    refused with ``ELOOP``. Raises :class:`AclUnsupported` when the file system takes no ACLs.
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, f"refusing to set an ACL through the symlink {path}")
    entries = read(path)
    if any(e.tag == tag and e.id == ident and e.perm & perm == perm for e in entries):
        mask = next((e.perm for e in entries if e.tag == MASK), 7)
        if mask & perm == perm:
            return False
    new = with_entry(entries, tag, ident, perm)
    try:
        os.setxattr(path, XATTR, encode(new), follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            raise AclUnsupported(exc.errno, f"{path}: the file system does not support POSIX ACLs") from None
        raise
    return True


def revoke(path: Path, tag: int, ident: int) -> bool:
    """Remove user (``tag=USER``) or group (``tag=GROUP``) ``ident``'s entry from ``path``'s ACL
    (the mask recomputed); ``False`` when it had none (nothing written). A symlink is refused
    (``ELOOP``); a file system without ACLs has nothing to revoke."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, f"refusing to change an ACL through the symlink {path}")
    entries = read(path)
    if not any(e.tag == tag and e.id == ident for e in entries):
        return False
    kept = [e for e in entries if not (e.tag == tag and e.id == ident) and e.tag != MASK]
    if any(e.tag in (USER, GROUP) for e in kept):
        mask = 0
        for e in kept:
            if e.tag in (GROUP_OBJ, USER, GROUP):
                mask |= e.perm
        kept.append(Entry(MASK, mask))
    os.setxattr(path, XATTR, encode(tuple(kept)), follow_symlinks=False)
    return True


def effective_group_bits(path: Path) -> int:
    """What the owning group really gets on ``path`` (0-7): the group entry, masked."""
    entries = read(path)
    group = next((e.perm for e in entries if e.tag == GROUP_OBJ), 0)
    mask = next((e.perm for e in entries if e.tag == MASK), 7)
    return group & mask


def effective_mode(path: Path) -> int:
    """``path``'s permission bits as they act: owner, the owning group's **effective** bits (its
    ACL entry under the mask, when there is an ACL) and others."""
    bits = stat.S_IMODE(os.lstat(path).st_mode)
    return (bits & ~0o070) | (effective_group_bits(path) << 3)


def set_mode(path: Path, mode: int) -> None:
    """Set ``path``'s owner, owning-group and other bits to ``mode``'s, keeping its named ACL
    entries (the traverse grants) effective; a plain ``chmod`` when it has none. (A ``chmod`` of a
    directory with an ACL would set the mask instead, taking every grant's bits off with the
    group's.)"""
    entries = read(path)
    named = [e for e in entries if e.tag in (USER, GROUP)]
    if not named:
        os.chmod(path, mode & 0o7777)
        return
    base = (
        Entry(USER_OBJ, (mode >> 6) & 7),
        Entry(GROUP_OBJ, (mode >> 3) & 7),
        Entry(OTHER, mode & 7),
        *named,
    )
    os.chmod(path, (stat.S_IMODE(os.lstat(path).st_mode) & 0o7000) | (mode & 0o777))
    os.setxattr(path, XATTR, encode(with_entry(base, named[0].tag, named[0].id, 0)), follow_symlinks=False)


def narrow(path: Path, mode: int) -> int | None:
    """Take the permission bits ``mode`` lacks off ``path`` while keeping its named entries (the
    traverse grants), and return the old effective mode when something changed, else ``None``."""
    current = effective_mode(path)
    wanted = current & mode
    if wanted == current:
        return None
    set_mode(path, wanted)
    return current
