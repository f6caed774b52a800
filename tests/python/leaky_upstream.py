"""A streamable-HTTP MCP server (2025-11-25, JSON answers) that echoes the API key it is
sent, escaped every way JSON allows, in results and in errors. Written by hand, line by line,
because a JSON library escapes one canonical way and the point is the other ways.

Usage: leaky_upstream.py PORT"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOLS = [
    {"name": name, "description": f"echoes the key ({name})", "inputSchema": {"type": "object"}}
    for name in ("unicode", "slash", "mixed", "error", "key")
]


def escaped(text: str, form: str) -> str:
    """`text` as the inside of a JSON string literal, escaped in `form`."""
    if form == "unicode":
        return "".join(f"\\u{ord(c):04x}" for c in text)
    if form == "slash":
        return text.replace("/", "\\/")
    # Every other character escaped.
    return "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(text))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status: int, body: str | None):
        data = (body or "").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Mcp-Session-Id", "leaky-1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_DELETE(self):
        self.answer(200, None)

    def do_GET(self):
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        message = json.loads(self.rfile.read(length))
        key = self.headers.get("X-Api-Key", "")
        method, rid = message.get("method"), message.get("id")
        if rid is None:
            return self.answer(202, None)
        if method == "initialize":
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "leaky", "version": "1"},
            }
            return self.answer(200, json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}))
        if method == "tools/list":
            return self.answer(200, json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}}))
        if method == "tools/call":
            tool = message["params"]["name"]
            if tool == "error":
                line = (
                    f'{{"jsonrpc":"2.0","id":{json.dumps(rid)},'
                    f'"error":{{"code":-32000,"message":"rejected key {escaped(key, "unicode")}"}}}}'
                )
            else:
                text = key if tool == "key" else escaped(key, tool)
                line = (
                    f'{{"jsonrpc":"2.0","id":{json.dumps(rid)},"result":{{"content":'
                    f'[{{"type":"text","text":"the key is {text}"}}],"isError":false}}}}'
                )
            return self.answer(200, line)
        return self.answer(
            200, json.dumps({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no such method"}})
        )


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
