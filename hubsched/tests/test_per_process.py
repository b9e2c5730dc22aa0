"""PerProcess: one object per process, and a forked child makes its own."""

from __future__ import annotations

import os

from hubsched.per_process import PerProcess


def test_it_makes_the_object_once_and_a_forked_child_makes_its_own():
    made = []
    holder = PerProcess(lambda: made.append(os.getpid()) or object())
    assert holder.peek() is None
    first = holder.get()
    assert holder.get() is first and made == [os.getpid()]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: must not see the parent's object
        fresh = holder.peek() is None and holder.get() is not first
        os.write(write, b"1" if fresh else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert holder.get() is first  # the parent keeps its own
