"""Generated request ids: unique within a process and across a fork."""

from __future__ import annotations

import os

from api.middleware import _request_ids


def test_ids_are_distinct_32_hex_characters() -> None:
    ids = [_request_ids.next() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running the parent's cleanup
        os.close(read)
        os.write(write, " ".join(_request_ids.next() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {_request_ids.next() for _ in range(5)}
    assert len(child) == 5
    assert not child & parent
    assert {i[:16] for i in child}.isdisjoint({i[:16] for i in parent})
