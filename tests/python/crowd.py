"""Holds connections open to a loopback port until its standard input closes (bounded: it
never holds more than it was asked for, and ends with its parent). Prints how many it opened.

Usage: crowd.py PORT COUNT idle|slow-headers|slow-body"""

import socket
import sys

port, count, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = []
for _ in range(count):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        if mode == "slow-headers":
            s.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        elif mode == "slow-body":
            s.sendall(
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{\"jsonrpc\":"
            )
        held.append(s)
    except OSError:
        s.close()
print(len(held), flush=True)
sys.stdin.read()
