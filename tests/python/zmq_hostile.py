"""Hostile and crowded clients of steadytextd's SteadyText listener, with pyzmq and raw sockets:
a greeting of another protocol, a READY of the wrong socket type, a frame announcing 2^40 bytes,
a client that sends and never reads, 250 REQ connections against a cap of 220, a stream left for
another request, a body that is not JSON; an honest ping after each must be answered.

Usage: zmq_hostile.py PORT. Prints one JSON object; tests/compat.rs checks it.
"""

import json
import socket
import sys
import time

import zmq

port = int(sys.argv[1])
context = zmq.Context()
out = {}


def req():
    s = context.socket(zmq.REQ)
    s.setsockopt(zmq.RCVTIMEO, 60000)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://127.0.0.1:{port}")
    return s


def call(s, method, params=None):
    s.send_string(json.dumps({"method": method, "params": params or {}, "id": "t"}))
    return json.loads(s.recv())


def honest():
    s = req()
    answer = call(s, "ping")
    s.close()
    return answer == {"id": "t", "result": "pong", "error": None}


def greeting():
    return bytes([0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 1]) + b"NULL".ljust(20, b"\0") + bytes(32)


def ready(socket_type):
    body = b"\x05READY" + b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    return bytes([0x04, len(body)]) + body


def closed_after(sent):
    """What the daemon sends back before it closes, and whether it closed within 10 s."""
    raw = socket.create_connection(("127.0.0.1", port))
    raw.settimeout(10)
    raw.sendall(sent)
    got = b""
    try:
        while chunk := raw.recv(65536):
            got += chunk
        return [len(got), True]
    except (socket.timeout, ConnectionResetError):
        return [len(got), False]
    finally:
        raw.close()


out["http_greeting"] = closed_after(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(64))
out["http_then_honest"] = honest()
out["pub_socket"] = closed_after(greeting() + ready(b"PUB"))
out["huge_frame"] = closed_after(greeting() + ready(b"REQ") + bytes([0x02]) + (1 << 40).to_bytes(8, "big"))
out["huge_then_honest"] = honest()

lazy = req()
lazy.send_string(json.dumps({"method": "generate", "params": {"prompt": "Tell me a story.", "max_new_tokens": 64},
                             "id": "lazy"}))
out["lazy_then_honest"] = honest()

crowd = [req() for _ in range(250)]
for s in crowd:
    s.send_string(json.dumps({"method": "ping", "params": {}, "id": "c"}))
answers = [json.loads(s.recv()) for s in crowd]
out["crowd_pongs"] = sum(a["result"] == "pong" for a in answers)
refusals = [a["error"] for a in answers if a["error"]]
out["crowd_refused"] = len(refusals)
out["crowd_refusal"] = refusals[0] if refusals else None
for s in crowd:
    s.close()
time.sleep(0.5)
out["crowd_then_honest"] = honest()

# A stream left for another request: the message that is not ACK is answered as a request.
dealer = context.socket(zmq.DEALER)
dealer.setsockopt(zmq.RCVTIMEO, 60000)
dealer.setsockopt(zmq.LINGER, 0)
dealer.connect(f"tcp://127.0.0.1:{port}")
dealer.send_multipart([b"", json.dumps({"method": "generate_iter", "id": "it",
                                        "params": {"prompt": "Count to twenty.", "max_new_tokens": 48}}).encode()])
first = json.loads(dealer.recv_multipart()[1])
dealer.send_multipart([b"", json.dumps({"method": "ping", "params": {}, "id": "p"}).encode()])
out["stream_left"] = [sorted(first["result"]), json.loads(dealer.recv_multipart()[1])]
dealer.close()

s = req()
s.send(b"not json")
out["not_json"] = json.loads(s.recv())
out["unknown"] = call(s, "status")
out["shutdown"] = call(s, "shutdown")
lazy.close()
json.dump(out, sys.stdout)
