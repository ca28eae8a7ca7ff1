"""The network guard itself: a connection to a non-loopback address is refused and recorded."""

import socket

import pytest

from . import conftest


def test_guard_refuses_and_records_non_loopback_connections():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(ConnectionRefusedError, match="non-loopback"):
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed
    finally:
        s.close()
    assert conftest._violations == ["('192.0.2.1', 9)"]
    del conftest._violations[:]  # this test provoked it on purpose


def test_guard_lets_loopback_through():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("127.0.0.1", 9))
    finally:
        s.close()
    assert conftest._violations == []
