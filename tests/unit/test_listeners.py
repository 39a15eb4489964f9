"""Who a new REST connection displaces (controller/listeners.py): never a connection in the middle
of a request, first the crowding client's own connection waiting longest, and a newcomer is
refused only when every connection is busy."""

from __future__ import annotations

import errno

import pytest

from controller import listeners
from controller.listeners import Connection, ConnectionTable, Limits


def _open(table: ConnectionTable, client: str, now: float) -> Connection:
    admitted, displaced = table.admit(client)
    assert admitted
    for victim in displaced:
        table.remove(victim)
    conn = Connection(client, None, now)
    table.add(conn)
    return conn


def test_a_client_at_its_cap_loses_its_own_longest_waiting_connection_not_someone_elses():
    table = ConnectionTable(Limits(connections=100, per_client=3))
    other = _open(table, "10.0.0.9", 0.0)
    a1, a2, a3 = (_open(table, "10.0.0.1", t) for t in (1.0, 2.0, 3.0))
    table.working(a1)  # in the middle of a request: never displaced
    admitted, displaced = table.admit("10.0.0.1")
    assert admitted and displaced == [a2]
    assert other not in displaced


def test_a_client_whose_connections_are_all_busy_is_refused():
    table = ConnectionTable(Limits(connections=100, per_client=2))
    for conn in (_open(table, "10.0.0.1", 1.0), _open(table, "10.0.0.1", 2.0)):
        table.working(conn)
    assert table.admit("10.0.0.1") == (False, [])
    assert table.admit("10.0.0.2") == (True, [])


def test_when_all_are_full_the_busiest_client_gives_way_and_a_lone_keepalive_survives():
    table = ConnectionTable(Limits(connections=6, per_client=5))
    lone = _open(table, "10.0.0.3", 0.0)  # the oldest waiting connection of all
    flood = [_open(table, "10.0.0.2", 1.0 + i) for i in range(5)]
    admitted, displaced = table.admit("10.0.0.4")
    assert admitted and displaced == [flood[0]]
    assert table.longest_waiting() is lone  # by age alone it would have been the lone one


def test_a_connection_back_to_waiting_queues_behind_the_others():
    table = ConnectionTable(Limits(connections=100, per_client=2))
    first = _open(table, "10.0.0.1", 1.0)
    second = _open(table, "10.0.0.1", 2.0)
    table.working(first)
    table.waiting(first, 3.0)  # answered; now idle on keep-alive
    assert table.admit("10.0.0.1") == (True, [second])


def test_removal_is_idempotent_and_counts_stay_true():
    table = ConnectionTable(Limits(connections=10, per_client=10))
    conns = [_open(table, f"10.0.0.{i % 3}", float(i)) for i in range(9)]
    for conn in conns[::2]:
        table.remove(conn)
        table.remove(conn)
    assert table.count == 4
    assert sum(table.holding(f"10.0.0.{i}") for i in range(3)) == 4
    table.waiting(conns[0], 99.0)  # a removed connection stays removed
    assert table.count == 4 and conns[0] not in [table.longest_waiting()]


def test_limits_refuse_nonsense():
    with pytest.raises(ValueError):
        Limits(per_client=0)
    with pytest.raises(ValueError):
        Limits(request_seconds=0)
    assert Limits.from_env({"GOLDILOCKS_REST_CONNECTIONS_PER_CLIENT": "7"}).per_client == 7


class _Listening:
    """A listening socket whose accept() fails as scripted, then stops the loop."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = errors
        self.accepted = 0

    def accept(self):
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, "scripted")
        if self.accepted:
            raise KeyboardInterrupt  # end of the script
        self.accepted += 1
        return object(), ("127.0.0.1", 1)


def test_the_accept_loop_outlives_running_out_of_descriptors_and_closes_the_longest_waiter(monkeypatch):
    monkeypatch.setattr(listeners.eventlet, "sleep", lambda s: None)
    closed = []
    monkeypatch.setattr(listeners, "ROOM_MAKERS", {
        "mine": lambda: (5.0, lambda: closed.append("mine")),  # just accepted: a health check, say
        "other": lambda: (1.0, lambda: closed.append("other")),  # waiting since long before
        "empty": lambda: None,
    })  # fmt: skip
    served = []
    sock = _Listening([errno.EMFILE, errno.ENFILE, errno.ECONNABORTED, errno.EINVAL])
    with pytest.raises(KeyboardInterrupt):
        listeners.accept_forever(sock.accept, lambda c, a: served.append(a), "mine")
    assert served == [("127.0.0.1", 1)], "it accepted after every error"
    assert closed == ["other", "other"], "out of descriptors, the connection waiting longest was closed"
