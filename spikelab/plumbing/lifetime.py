"""A stage process must not outlive its parent: `dvc repro` stopped means the training stops.

Without this, SIGTERM (or SIGKILL) to `dvc repro` leaves the train stage running on alone for the
rest of its epochs, writing outputs DVC will never record and holding the MLflow run RUNNING.
Linux's prctl(PR_SET_PDEATHSIG) has the kernel send the stage a signal when its parent exits;
the stage turns SIGTERM into a KILLED run with no outputs, as for any interruption.

DVC starts a stage through `$SHELL -c '<cmd>'`. Most shells exec a lone command, so the stage's
parent is DVC itself; a shell that forks instead stays between them and does not die with DVC,
so the parent-death signal never comes. For that case a watcher thread follows the chain of
shells up to the first process that is not one, and signals the stage when any link breaks.
Kept free of heavy imports: it runs first thing in the stage.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish", "ash", "busybox"})
WATCH_EVERY_S = 1.0


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses):
    [0] the state, [1] the parent pid, [19] the start time in clock ticks since boot; None when no
    such process exists (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _parent_of(pid: int) -> int | None:
    """The parent pid of a live process; None when it is gone or a zombie."""
    fields = stat_fields(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[1])


def _is_shell(pid: int) -> bool:
    """By the program it runs and by its argv[0]: a shell script run by its #! line names itself in
    /proc/<pid>/comm, but its argv[0] is the interpreter."""
    try:
        names = {os.path.basename(os.readlink(f"/proc/{pid}/exe"))}
        names.add(os.path.basename(open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()))
    except (OSError, UnicodeDecodeError):
        return False
    return not names.isdisjoint(SHELLS)


def shell_links(pid: int) -> list[tuple[int, int]]:
    """[(process, its parent)] from `pid` up through the shells above it, ending at the first
    ancestor that is not a shell: each link must hold for as long as that ancestor lives."""
    links = []
    while (parent := _parent_of(pid)) is not None:
        links.append((pid, parent))
        if parent <= 1 or not _is_shell(parent):
            break
        pid = parent
    return links


def _watch(links: list[tuple[int, int]], signum: int) -> None:
    while all(_parent_of(pid) == parent for pid, parent in links):
        time.sleep(WATCH_EVERY_S)
    os.kill(os.getpid(), signum)


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel for `signum` when the parent exits (and watch the launcher above a forking
    shell); False where prctl does not exist (not Linux).

    The request covers a parent that exits after it, so the parent is checked right after: if it
    is already gone (this process was re-parented), the signal is sent now.
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)
        return True
    links = shell_links(os.getpid())
    if len(links) > 1:  # a shell stands between this process and its launcher
        threading.Thread(target=_watch, args=(links, signum), name="die-with-launcher", daemon=True).start()
    return True
