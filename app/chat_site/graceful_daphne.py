"""Daphne, stopped gracefully: `python -m chat_site.graceful_daphne` takes Daphne's own arguments.

On SIGTERM stock Daphne (4.2) cancels every application at once: a message whose
INSERT is in flight is never acknowledged, no WebSocket gets a close frame
(clients see 1006), and the process accepts new connections until the very end.
This server, instead, in Twisted's "before shutdown" phase (where Daphne cancels):

1. stops listening, so the other processes on the shared socket take new clients;
2. sends every WebSocket application a ``{"type": "server.drain"}`` event. It is
   queued behind the frames already received, so the consumer answers those first;
   then it tells its client and closes with 1001 (chat/consumers.py);
3. waits, up to APP_DRAIN_SECONDS (10), until every WebSocket is closed and every
   HTTP request answered; then cancels what is left, closes what is still open with
   1001, and lets Twisted stop.

Autobahn's sendClose() lets a server send only 1000 or 3000-4999, so an application
closing with 1001 is sent through sendCloseFrame(), as Daphne itself sends 1011.
Autobahn gives a client 1 s to answer a close frame, then aborts the connection with
a TCP reset: a client on a busy machine that read its 1001 a moment late had its
answer refused, and saw a reset instead of a clean close. Here a client has as long
as the drain (APP_DRAIN_SECONDS) to answer.

supervisord's stopwaitsecs (app/supervisord.conf) must exceed the drain, plus a
statement still running on the database thread (statement_timeout).
"""

import asyncio
import logging
import os
import time

from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import defer, reactor, task

logger = logging.getLogger(__name__)

DRAIN_SECONDS = float(os.environ.get("APP_DRAIN_SECONDS", "10"))
GOING_AWAY = 1001
POLL_S = 0.05


class GoingAwayProtocol(WebSocketProtocol):
    def serverClose(self, code=None):
        if code == GOING_AWAY:
            self.sendCloseFrame(code=GOING_AWAY, reasonUtf8=b"server restarting")
        else:
            super().serverClose(code)


class DrainingServer(Server):
    def listen_success(self, port):
        # Daphne keeps only the listening Deferreds; the ports are needed to stop listening.
        self.__dict__.setdefault("ports", []).append(port)
        self.ws_factory.protocol = GoingAwayProtocol
        self.ws_factory.setProtocolOptions(closeHandshakeTimeout=DRAIN_SECONDS)
        return super().listen_success(port)

    def _drain_step(self, told: set) -> bool:
        """Tell each WebSocket application to drain (once); True while anything is unfinished."""
        busy = False
        for protocol, details in list(self.connections.items()):
            application = details.get("application_instance")
            running = application is not None and not application.done()
            if isinstance(protocol, WebSocketProtocol):
                if running and protocol not in told and hasattr(protocol, "application_queue"):
                    protocol.application_queue.put_nowait({"type": "server.drain"})
                    told.add(protocol)
                elif not running and protocol.state == protocol.STATE_OPEN:
                    protocol.sendCloseFrame(code=GOING_AWAY, reasonUtf8=b"server restarting")
                busy = busy or protocol.state != protocol.STATE_CLOSED
            else:
                busy = busy or running  # an HTTP request still being answered
        return busy

    @defer.inlineCallbacks
    def kill_all_applications(self):
        """Replaces Daphne's trigger, which cancels everything at once (see the module's docstring)."""
        started = time.monotonic()
        ports = getattr(self, "ports", [])
        yield defer.DeferredList([defer.maybeDeferred(port.stopListening) for port in ports])
        told: set = set()
        while self._drain_step(told) and time.monotonic() < started + DRAIN_SECONDS:
            yield task.deferLater(reactor, POLL_S, lambda: None)
        leftovers = [
            details["application_instance"]
            for details in self.connections.values()
            if details.get("application_instance") and not details["application_instance"].done()
        ]
        if leftovers:
            logger.warning(
                "drain: %d application(s) still running after %gs, cancelled", len(leftovers), DRAIN_SECONDS
            )
            for application in leftovers:
                application.cancel()
            gathered = defer.Deferred.fromFuture(asyncio.gather(*leftovers, return_exceptions=True))
            yield gathered.addTimeout(2, reactor).addErrback(lambda _: None)
            flush_until = time.monotonic() + 1.5  # the close frames of what was still open
            while self._drain_step(told) and time.monotonic() < flush_until:
                yield task.deferLater(reactor, POLL_S, lambda: None)
        logger.info("drained in %.2fs", time.monotonic() - started)


class DrainingCommandLineInterface(CommandLineInterface):
    server_class = DrainingServer


if __name__ == "__main__":
    DrainingCommandLineInterface.entrypoint()
