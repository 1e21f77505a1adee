// Interop client for tests/test_interop.py, using Node's `ws` package.
// usage: node client.mjs URL EXPECTED_MESSAGES
// Prints one JSON object per line: open, pong, message (x EXPECTED_MESSAGES), close.
// Sequence: open -> send "hello from node" -> ping -> (pong) -> wait for the
// broadcasts -> close(1000, "bye") -> exit 0 once the server answered the close.
import WebSocket from "ws";

const [url, expectedArg] = process.argv.slice(2);
const expected = Number(expectedArg);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const ws = new WebSocket(url);
let received = 0;
let ponged = false;

// The server may greet with a {"type": "hello", ...} control event (resume
// support); it is reported but not counted as one of the broadcasts.
function isHello(data, isBinary) {
  if (isBinary) return false;
  try {
    return JSON.parse(data.toString()).type === "hello";
  } catch {
    return false;
  }
}

function maybeClose() {
  if (ponged && received >= expected) ws.close(1000, "bye");
}

ws.on("open", () => {
  out({ type: "open", protocol: ws.protocol, extensions: ws.extensions });
  ws.send("hello from node");
  ws.ping(Buffer.from("node-ping"));
});
ws.on("pong", (data) => {
  out({ type: "pong", data: data.toString() });
  ponged = true;
  maybeClose();
});
ws.on("message", (data, isBinary) => {
  if (isHello(data, isBinary)) {
    out({ type: "hello", data: data.toString() });
    return;
  }
  received += 1;
  out({ type: "message", binary: isBinary, data: isBinary ? Buffer.from(data).toString("base64") : data.toString(), length: data.length });
  maybeClose();
});
// No process.exit(): stdout is a pipe and would lose unflushed lines; node
// exits by itself once the socket and the timer are gone.
const timer = setTimeout(() => {
  out({ type: "error", message: "timeout" });
  process.exitCode = 2;
  ws.terminate();
}, 15000);
ws.on("close", (code, reason) => {
  out({ type: "close", code, reason: reason.toString() });
  clearTimeout(timer);
});
ws.on("error", (err) => {
  out({ type: "error", message: String(err) });
  process.exitCode = 1;
  clearTimeout(timer);
});
