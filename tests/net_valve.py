"""A TCP relay between one SuperNode and the labs' entry that can stop a site's upload midway.

The site's TLS passes through untouched (the relay never sees a byte in clear); it only counts
bytes. Armed with ``cut_after(U)``, it lets U more bytes go up from the site and then holds
every further upstream byte until :meth:`release`: with U inside a reply's upload, the site is
frozen in the middle of uploading it, whatever the machine's speed, as a site whose link drops
mid-upload is. Downstream bytes keep flowing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class Valve:
    """One site's relay on 127.0.0.1 (module doc); the upstream address is looked up when the
    site connects, so the relay can be made before the entry it forwards to exists."""

    def __init__(self, upstream: Callable[[], str]) -> None:
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._lock = threading.Condition()
        self.up = self.down = 0  # bytes relayed each way since the start
        self._hold_from: int | None = None  # upstream byte count at which the hold starts
        self.held = threading.Event()  # the hold has engaged
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="valve-accept").start()

    # -- control -------------------------------------------------------------------------------

    def cut_after(self, up_bytes: int) -> None:
        with self._lock:
            self._hold_from = self.up + up_bytes
            self.held.clear()

    def release(self) -> None:
        with self._lock:
            self._hold_from = None
            self._lock.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        for sock in [self._server, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    # -- relaying ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            host, port = self.upstream().rsplit(":", 1)
            try:
                server = socket.create_connection((host, int(port)))
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _allowed(self, size: int) -> int:
        """How many of the next ``size`` upstream bytes may pass now (0: wait)."""
        if self._hold_from is None:
            return size
        allowed = max(self._hold_from - self.up, 0)
        if allowed < size:
            self.held.set()
        return min(size, allowed)

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while data:
                    with self._lock:
                        if upstream:
                            n = self._allowed(len(data))
                            while n == 0 and not self._closed:
                                self._lock.wait(0.5)
                                n = self._allowed(len(data))
                            if self._closed:
                                return
                            self.up += n
                        else:
                            n = len(data)
                            self.down += n
                    dst.sendall(data[:n])
                    data = data[n:]
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
