"""A runner serving several peers (the supervisor and HTTP workers): each reply reaches the peer
that asked, request ids of different peers never meet, and a vanished peer's requests are
cancelled instead of holding their slots."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import zmq

from runner.process.peers import Peers
from shared import protocol as p

ROOT = Path(__file__).resolve().parent.parent


def test_the_same_id_from_two_peers_is_two_requests() -> None:
    peers = Peers()
    a, b = peers.admit(b"A", 1), peers.admit(b"B", 1)
    assert a != b
    out = peers.route([p.Chunk(a, "x"), p.Chunk(b, "y"), p.Done(b, "stop", 1, 1, 1, 1)])
    assert [(m.text, m.id) for m in out[b"A"]] == [("x", 1)]  # type: ignore[union-attr]
    assert [type(m).__name__ for m in out[b"B"]] == ["Chunk", "Done"]
    assert all(m.id == 1 for m in out[b"B"])  # type: ignore[union-attr]
    assert peers.find(b"B", 1) is None  # Done ended it
    assert peers.find(b"A", 1) == a and len(peers) == 1


def test_replies_for_forgotten_requests_are_dropped() -> None:
    peers = Peers()
    inner = peers.admit(b"A", 5)
    peers.forget(inner)  # cancelled
    assert peers.route([p.Chunk(inner, "late"), p.Done(inner, "stop", 0, 0, 0, 0)]) == {}


def test_a_peers_open_requests() -> None:
    peers = Peers()
    mine = [peers.admit(b"A", i) for i in (1, 2)]
    other = peers.admit(b"B", 1)
    assert sorted(peers.of_peer(b"A")) == mine and peers.of_peer(b"B") == [other]
    peers.route([p.Error(mine[0], "boom")])
    assert peers.of_peer(b"A") == [mine[1]]


def _dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(endpoint)
    return sock


def _until_done(sock: zmq.Socket) -> list[p.Message]:
    got: list[p.Message] = []
    while not any(isinstance(m, p.Done) for m in got):
        got.extend(p.decode_many(sock.recv()))
    return got


def test_runner_routes_each_reply_to_its_peer(tmp_path: Path) -> None:
    """The real worker loop (the benchmark's stand-in engine, no model): two peers both use
    request id 1; each gets its own stream. A peer that goes away mid-stream has its sequence
    cancelled, so the runner goes idle while the other peer is still served."""
    endpoint = f"ipc://{tmp_path}/runner.sock"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CORRAL_STANDIN_STEP_MS": "5"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.bench.standin_runner",
                             "--socket", endpoint], cwd=ROOT, env=env)
    ctx = zmq.Context()
    try:
        first, second = _dealer(ctx, endpoint), _dealer(ctx, endpoint)
        first.send(p.encode(p.Load("none", 512, parallel=4)))
        assert isinstance(p.decode(first.recv()), p.Ready)
        first.send(p.encode(p.Generate(1, "a", options={"num_predict": 3})))
        second.send(p.encode(p.Generate(1, "b", options={"num_predict": 5})))
        for sock, count in ((first, 3), (second, 5)):
            got = _until_done(sock)
            assert {p.request_id(m) for m in got} == {1}
            assert sum(isinstance(m, p.Chunk) for m in got) == count
        # A peer that vanishes: its endless generation must not keep the runner busy.
        gone = _dealer(ctx, endpoint)
        gone.send(p.encode(p.Generate(7, "c", options={"num_predict": 100_000})))
        gone.recv()  # it is generating
        gone.close()
        deadline = time.monotonic() + 10
        while True:
            first.send(p.encode(p.Health(9)))
            reply = p.decode(first.recv())
            assert isinstance(reply, p.HealthReply) and reply.id == 9
            if reply.active == 0:
                break
            assert time.monotonic() < deadline, "the vanished peer's sequence still runs"
            time.sleep(0.05)
        # Cancel by the peer's own id still works.
        second.send(p.encode(p.Generate(2, "d", options={"num_predict": 100_000})))
        second.recv()
        second.send(p.encode(p.Cancel(2)))
        first.send(p.encode(p.Health(10)))
        while (reply := p.decode(first.recv())).active:  # type: ignore[union-attr]
            time.sleep(0.05)
            first.send(p.encode(p.Health(10)))
    finally:
        ctx.destroy(linger=0)
        proc.terminate()
        proc.wait(10)
