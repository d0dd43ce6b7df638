"""The runner's waiting line: free slots go round-robin across tenants (API keys), not first come,
first served.

A key that sends a dozen requests at once must not delay another key's single request behind all
of them. Each tenant has its own first-in-first-out line; when a slot frees, the tenant served
least recently goes next (one that was never served first), so a newcomer waits for at most one
request of each other waiting tenant. Anonymous callers are one tenant. With fair sharing off the
gateway names every request's tenant "", and this is a single first-come-first-served line.

It offers the few deque operations the engine uses (append, popleft, extendleft, remove, len,
iteration), so the engine's admission code reads as before.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self, tenant_of: Callable[[T], str]) -> None:
        self._tenant_of = tenant_of
        self._lines: dict[str, deque[T]] = {}  # tenants with waiting items
        self._served: dict[str, int] = {}  # tenant -> turn at which it was last served
        self._turns = itertools.count(1)
        self._size = 0
        # The turn each recently popped item's tenant had before: an item put back (deferred)
        # gives its tenant that turn back. Only the latest pops matter (the engine puts items
        # back in the same admission pass), so this is cleared now and then.
        self._before: dict[int, tuple[str, int]] = {}

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        """Every waiting item (by tenant, each tenant's in order); do not change it meanwhile."""
        for line in self._lines.values():
            yield from line

    def append(self, item: T) -> None:
        self._lines.setdefault(self._tenant_of(item), deque()).append(item)
        self._size += 1

    def popleft(self) -> T:
        """The next item: the head of the line of the tenant served least recently."""
        if not self._size:
            raise IndexError("pop from an empty FairQueue")
        tenant = min(self._lines, key=lambda t: self._served.get(t, 0))
        line = self._lines[tenant]
        item = line.popleft()
        if not line:
            del self._lines[tenant]
        if len(self._before) > 256:
            self._before.clear()
        self._before[id(item)] = (tenant, self._served.get(tenant, 0))
        self._served[tenant] = next(self._turns)
        self._size -= 1
        return item

    def extendleft(self, items: Iterable[T]) -> None:
        """Put items back at the head of their tenants' lines (each one before the previous, as
        deque.extendleft does): the engine defers a sequence it popped but cannot admit yet.
        Its tenant gets back the turn that pop took."""
        for item in items:
            tenant = self._tenant_of(item)
            self._lines.setdefault(tenant, deque()).appendleft(item)
            self._size += 1
            before = self._before.pop(id(item), None)
            if before is not None and before[0] == tenant:
                self._served[tenant] = before[1]

    def remove(self, item: T) -> None:
        tenant = self._tenant_of(item)
        line = self._lines.get(tenant)
        if line is None:
            raise ValueError("item is not queued")
        line.remove(item)
        if not line:
            del self._lines[tenant]
        self._size -= 1
