// The Node.js `ws` echo server of baton's echo figure: what a team would
// run instead. Echoes every data frame; prints `LISTENING <addr>` once it
// accepts (the bench harness reads that). Loopback only, an ephemeral port.
"use strict";
const { WebSocketServer } = require("ws");

const server = new WebSocketServer({
  host: "127.0.0.1",
  port: 0,
  perMessageDeflate: false,
  maxPayload: 1 << 20,
});
server.on("listening", () => {
  const { address, port } = server.address();
  console.log(`LISTENING ${address}:${port}`);
});
server.on("connection", (socket) => {
  socket._socket.setNoDelay(true);
  socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }));
});
