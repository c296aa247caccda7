"""The join handshake (parallel/join.py) over real sockets on loopback: who knows the secret joins, who does not is
refused and logged, and a joiner checks rank 0 as well."""

import logging
import threading

import pytest

from deeproots.errors import RequestError
from deeproots.parallel.join import JoinRefused, admit, knock, listening_socket, read_secret

SECRET = b"0123456789abcdef-shared"


def test_a_joiner_with_the_wrong_secret_is_refused_and_logged_and_the_rightful_one_joins(caplog):
    door = listening_socket("127.0.0.1", 0)
    port = door.getsockname()[1]
    errors = []

    def join(secret, rank):
        try:
            knock("127.0.0.1", port, secret, rank, timeout_s=10)
        except JoinRefused as error:
            errors.append(error)

    with caplog.at_level(logging.INFO, logger="deeproots.parallel"):
        rank_zero = threading.Thread(target=admit, args=(door, SECRET, 2), kwargs={"timeout_s": 10})
        rank_zero.start()
        join(b"not-the-secret-at-all", 1)  # first, so the door is still waiting for rank 1 when it is refused
        join(SECRET, 1)
        rank_zero.join(timeout=10)
    door.close()
    assert len(errors) == 1 and "closed the connection" in str(errors[0])  # the impostor: refused
    refused = [r.getMessage() for r in caplog.records if "refused a joiner from 127.0.0.1" in r.getMessage()]
    assert refused and "wrong secret" in refused[0]
    assert any("rank 1 joined from 127.0.0.1" in r.getMessage() for r in caplog.records)


def test_a_joiner_refuses_a_rank_zero_that_does_not_know_the_secret():
    door = listening_socket("127.0.0.1", 0)
    port = door.getsockname()[1]
    outcome = []

    def rank_zero():
        try:
            admit(door, b"another-secret-entirely", 2, timeout_s=0.5)
        except JoinRefused as error:  # no rightful joiner came: it gives up
            outcome.append(error)

    thread = threading.Thread(target=rank_zero)
    thread.start()
    with pytest.raises(JoinRefused):
        knock("127.0.0.1", port, SECRET, 1, timeout_s=5)
    thread.join(timeout=10)
    door.close()
    assert outcome


def test_rank_zero_gives_up_when_the_ranks_do_not_join_in_time():
    with listening_socket("127.0.0.1", 0) as door, pytest.raises(JoinRefused, match="only ranks"):
        admit(door, SECRET, 3, timeout_s=0.3)


def test_a_short_secret_is_refused(tmp_path):
    (tmp_path / "secret").write_text("short\n")
    with pytest.raises(RequestError, match="at least 16"):
        read_secret(tmp_path / "secret")
