"""A stdio MCP server with one tool, `connect`, that opens a TCP connection to a loopback port
and says whether it could: what a sandbox without egress must refuse. Written by hand on
newline-delimited JSON-RPC so that it needs nothing but the standard library."""

import json
import socket
import sys


def answer(rid, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    message = json.loads(line)
    method, rid = message.get("method"), message.get("id")
    if rid is None:
        continue
    if method == "initialize":
        answer(rid, {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                     "serverInfo": {"name": "net-probe", "version": "1"}})
    elif method == "tools/list":
        answer(rid, {"tools": [{"name": "connect", "description": "connect to a loopback port",
                                "inputSchema": {"type": "object", "properties": {"port": {"type": "integer"}}}}]})
    elif method == "tools/call":
        port = message["params"]["arguments"]["port"]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                text = "connected"
        except OSError as e:
            text = f"refused: {e}"
        answer(rid, {"content": [{"type": "text", "text": text}]})
    else:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}}) + "\n")
        sys.stdout.flush()
