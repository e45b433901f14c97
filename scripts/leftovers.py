#!/usr/bin/env python3
"""Runs a command and fails if it leaves processes running.

    python3 scripts/leftovers.py COMMAND [ARG...]

This process becomes a child subreaper (Linux, PR_SET_CHILD_SUBREAPER): whatever the command
starts and abandons (a broker whose starter was killed, a daemon that double-forked, a child of a
test binary that died) is re-parented here instead of to init, so when the command ends every
process it left behind is still in this process's tree. They are listed with their command lines,
stopped (SIGKILL), and the exit status is non-zero: scripts/test.sh runs under it, so a suite
that leaves tansu, noida-db, keyhole or a compiler child running fails and says which.

SIGINT, SIGTERM and SIGHUP are passed on to the command; what it leaves running after such a signal
is stopped the same way (and listed, but the status is then the command's).
"""
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
# A process the command stopped on its way out (tansu after the EXIT trap's SIGTERM) may take a
# moment to go: only what is still running after this grace period is a leftover.
GRACE_SECONDS = 10


def processes():
    """(pid, parent pid, state) of every process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold anything: the fields follow the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        found.append((int(entry), int(fields[1]), fields[0]))
    return found


def descendants(root):
    """The pids of `root`'s living descendants, zombies left out."""
    children = {}
    states = {}
    for pid, ppid, state in processes():
        children.setdefault(ppid, []).append(pid)
        states[pid] = state
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            stack.append(child)
            if states[child] != "Z":
                found.append(child)
    return found


def reap(spare=None):
    """Collects the exit status of this process's dead children (but `spare`'s, which Popen waits for)."""
    me = os.getpid()
    for pid, ppid, state in processes():
        if ppid == me and state == "Z" and pid != spare:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def describe(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat") as f:
            ppid = f.read().rsplit(")", 1)[1].split()[1]
    except OSError:
        return f"  pid {pid} (gone)"
    return f"  pid {pid} (parent {ppid}): {cmdline[:300]}"


def main():
    command = sys.argv[1:]
    if not command:
        sys.exit(__doc__)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"leftovers.py: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    child = subprocess.Popen(command)
    signalled = []

    def forward(signum, _frame):
        signalled.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    while child.poll() is None:
        reap(spare=child.pid)
        time.sleep(0.5)
    status = child.returncode if child.returncode >= 0 else 128 - child.returncode

    me = os.getpid()
    deadline = time.monotonic() + GRACE_SECONDS
    while descendants(me) and time.monotonic() < deadline:
        reap()
        time.sleep(0.2)
    left = descendants(me)
    if not left:
        return status
    name = " ".join(command)[:100]
    print(f"\n{name} left {len(left)} process(es) running {GRACE_SECONDS} s after it ended; stopping them:",
          file=sys.stderr)
    for pid in left:
        print(describe(pid), file=sys.stderr)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while descendants(me) and time.monotonic() < deadline:
        reap()
        time.sleep(0.1)
    if signalled or status != 0:
        return status
    print("Every process a test starts must be stopped on every path (a Drop guard, a trap, or "
          "tests/it/common's command_dying_with_the_test).", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
