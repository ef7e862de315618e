"""A tiny service in its own process for soak tests, optionally leaking per outage.

``python soak_service.py [--leak thread|socket]`` runs `drill_kit.FakeService`
(its "database" is a flag) and a control server; it prints both ports on one
line. ``POST /down`` takes the database away, ``POST /up`` brings it back.
With ``--leak thread`` every outage starts a thread that never ends (a
reconnect loop started per outage and never joined); with ``--leak socket``
every outage opens a socket that is never closed. That is the bug a soak
exists to catch. It stops when its stdin closes.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from drill_kit import FakeService  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--leak", choices=("none", "thread", "socket"), default="none")
    args = p.parse_args()
    forever = threading.Event()
    leaked: list[object] = []

    def leak() -> None:
        if args.leak == "thread":
            t = threading.Thread(target=forever.wait, daemon=True, name="reconnect")
            t.start()
            leaked.append(t)
        elif args.leak == "socket":
            leaked.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))

    with FakeService("good") as service:

        class Control(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                if self.path == "/down":
                    if not service.down:
                        leak()
                    service.down = True
                elif self.path == "/up":
                    service.down = False
                self.send_response(204)
                self.end_headers()

        control = ThreadingHTTPServer(("127.0.0.1", 0), Control)
        control.daemon_threads = True
        threading.Thread(target=control.serve_forever, daemon=True).start()
        print(service.server.server_address[1], control.server_address[1], flush=True)
        sys.stdin.read()  # until the test closes our stdin
        control.shutdown()
        forever.set()


if __name__ == "__main__":
    main()
