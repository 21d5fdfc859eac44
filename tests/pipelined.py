"""Messages sent on several sockets without waiting for their acks, and the answers read back."""

import uuid

from probes.chat import ChatSocket


def pipeline(sockets: dict[str, ChatSocket], per_socket: int) -> dict[str, list[str]]:
    """Send ``per_socket`` messages on every socket without waiting for an ack, the sockets'
    frames interleaved so that all are busy at once; the client_ids each sent, in order."""
    tag = uuid.uuid4().hex[:8]
    sent = {name: [f"{name}-{tag}-{n}" for n in range(per_socket)] for name in sockets}
    resend(sockets, sent)
    return sent


def resend(sockets: dict[str, ChatSocket], sent: dict[str, list[str]]) -> None:
    """Send these client_ids on their sockets (again), interleaved, without waiting."""
    for n in range(max(map(len, sent.values()))):
        for name, socket in sockets.items():
            if n < len(sent[name]):
                text = f"message {n} from {name}"
                socket.send({"type": "message", "text": text, "client_id": sent[name][n]})


def answers(socket: ChatSocket, count: int) -> list[dict]:
    """The next ``count`` acks and errors on the socket, in the order they came (broadcasts skipped)."""
    frames = []
    while len(frames) < count:
        frame = socket.receive()
        if frame["type"] in ("ack", "error"):
            frames.append(frame)
    return frames


def acks_in_order(sockets: dict[str, ChatSocket], sent: dict[str, list[str]]) -> dict[str, list[int]]:
    """Read every socket's answers to what it ``sent``: each must be the ack of its message, in
    the order sent, with ids increasing (each committed before the next began). The ids, per socket."""
    acked = {}
    for name, socket in sockets.items():
        frames = answers(socket, len(sent[name]))
        assert [(frame["type"], frame.get("client_id")) for frame in frames] == [
            ("ack", c) for c in sent[name]
        ], frames
        acked[name] = [frame["id"] for frame in frames]
        assert acked[name] == sorted(set(acked[name]))
    return acked
