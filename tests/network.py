"""A network path to a real server that a test can cut and restore: a tracking-server outage without restarting the
server.

Stopping and starting `mlflow server` costs ~8 CPU-seconds (two Python processes importing MLflow) and the wait for
its health check. Seen from `hps`, a cut path is the same outage: new connections are refused and open ones are
dropped mid-request. tests/records/test_outage.py still restarts a real server (a reboot).
"""

from __future__ import annotations

import socket
import threading

from tests.conftest import free_port

ACCEPT_POLL_S = 0.1  # how soon a cut stops accepting


class CuttableLink:
    """A TCP forwarder on a free loopback port in front of ``127.0.0.1:target_port``; ``uri`` is the server's
    address through it. ``cut()`` refuses new connections and drops open ones; ``restore()`` forwards again on the
    same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.restore()

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def restore(self) -> None:
        if not self.is_cut:
            return
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        listener.settimeout(ACCEPT_POLL_S)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="link-accept").start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            dropped, self._open = self._open, set()
        for sock in dropped:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by cut()
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut() ran meanwhile: this connection is dropped too
                    _close(client)
                    _close(upstream)
                    return
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True, name="link-pump").start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open -= {source, sink}
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
