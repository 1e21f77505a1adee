// permessage-deflate interop client for tests/test_compression.py, using Node's `ws` package.
// usage: node deflate_client.mjs URL EXPECTED_MESSAGES
// `ws` offers permessage-deflate by default (client_max_window_bits).  Prints one JSON
// object per line: open (with the negotiated extensions), hello, message (x EXPECTED),
// close.  Closes with 1000 once every expected message arrived.
import WebSocket from "ws";

const [url, expectedArg] = process.argv.slice(2);
const expected = Number(expectedArg);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const ws = new WebSocket(url, { perMessageDeflate: true });
let received = 0;

ws.on("open", () => {
  out({ type: "open", extensions: ws.extensions });
});
ws.on("message", (data, isBinary) => {
  const text = data.toString();
  if (!isBinary && text.startsWith('{"type":"hello"')) {
    out({ type: "hello" });
    return;
  }
  received += 1;
  out({ type: "message", binary: isBinary, data: text });
  if (received >= expected) ws.close(1000, "bye");
});
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
