"""Joining a group: a rank proves it knows the shared secret before the process group forms.

Rank 0 listens at the rendezvous address only (never every interface), on the rendezvous port (the "door"). Each
joiner connects and they prove knowledge of the secret to each other with HMAC-SHA256 over fresh nonces: rank 0
sends a nonce, the joiner answers HMAC(secret, "join" | nonce | rank) with a nonce of its own, rank 0 answers
HMAC(secret, "accept" | that nonce). Only then does the joiner connect to the group's store (door + 1, bound to the
same address). A joiner that fails is refused, and rank 0's log names its address; the secret never crosses the
wire. This gates who joins; gloo's traffic afterwards is neither encrypted nor authenticated (docs/distributed.md).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import socket
import struct
import time
from pathlib import Path

from ..errors import DeeprootsError, RequestError

NONCE = 32
DIGEST = hashlib.sha256().digest_size
JOIN_TIMEOUT_S = 120.0  # how long rank 0 waits for every rank to join
log = logging.getLogger("deeproots.parallel")


class JoinRefused(DeeprootsError):
    """The other side did not prove it knows the shared secret (or the join timed out)."""


def read_secret(path) -> bytes:
    """The shared secret from a file (surrounding whitespace dropped): at least 16 bytes."""
    secret = Path(path).expanduser().read_bytes().strip()
    if len(secret) < 16:
        raise RequestError(f"the secret in {path} is {len(secret)} bytes; use at least 16 (e.g. `openssl rand -hex 32 "
                           f"> {path}`)")
    return secret


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"|".join(parts), hashlib.sha256).digest()


def _receive(connection: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = connection.recv(n - len(data))
        if not chunk:
            raise JoinRefused("the other side closed the connection during the join")
        data += chunk
    return data


def _admit_one(connection: socket.socket, secret: bytes, world_size: int, joined: set[int]) -> int:
    """One joiner's proof, checked; returns its rank or raises JoinRefused."""
    challenge = secrets.token_bytes(NONCE)
    connection.sendall(challenge)
    answer = _receive(connection, 4 + DIGEST + NONCE)
    rank = struct.unpack("!I", answer[:4])[0]
    proof, their_nonce = answer[4:4 + DIGEST], answer[4 + DIGEST:]
    if not hmac.compare_digest(proof, _mac(secret, b"join", challenge, answer[:4])):
        raise JoinRefused("wrong secret")
    if not 0 < rank < world_size or rank in joined:
        raise JoinRefused(f"rank {rank} is not a free rank of {world_size}")
    connection.sendall(_mac(secret, b"accept", their_nonce))
    return rank


def admit(door: socket.socket, secret: bytes, world_size: int, timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """Rank 0: accept joiners on the listening `door` until every other rank proved the secret; refuse the rest."""
    joined: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(joined) < world_size - 1:
        door.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            connection, peer = door.accept()
        except socket.timeout:
            raise JoinRefused(f"only ranks {sorted(joined)} of {world_size} joined within {timeout_s:.0f} s") from None
        with connection:
            connection.settimeout(10.0)
            try:
                rank = _admit_one(connection, secret, world_size, joined)
            except (JoinRefused, OSError) as error:
                log.warning("refused a joiner from %s:%d: %s", peer[0], peer[1], error)
                continue
        joined.add(rank)
        log.info("rank %d joined from %s", rank, peer[0])


def knock(address: str, port: int, secret: bytes, rank: int, timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """A rank > 0: prove the secret to rank 0 at address:port and check that rank 0 knows it too."""
    deadline = time.monotonic() + timeout_s
    while True:  # rank 0 may not be listening yet
        try:
            connection = socket.create_connection((address, port), timeout=10.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise JoinRefused(f"rank 0 at {address}:{port} did not answer within {timeout_s:.0f} s") from None
            time.sleep(0.2)
    with connection:
        challenge = _receive(connection, NONCE)
        nonce, packed_rank = secrets.token_bytes(NONCE), struct.pack("!I", rank)
        connection.sendall(packed_rank + _mac(secret, b"join", challenge, packed_rank) + nonce)
        if not hmac.compare_digest(_receive(connection, DIGEST), _mac(secret, b"accept", nonce)):
            raise JoinRefused(f"rank 0 at {address}:{port} does not know the secret")


def listening_socket(address: str, port: int) -> socket.socket:
    """A TCP socket listening at address:port only."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(64)
    return server
