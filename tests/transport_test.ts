/**
 * TLS is done by Deno's native layer over the connection's own descriptor
 * (src/net/transport.ts): the adoption of a `Deno.Conn` into a `node:net`
 * socket must keep working, or every TLS session silently falls back to the
 * slower JavaScript bridge.
 */

import tls from "node:tls";
import { ConnTransport, nativeSocket } from "../src/net/transport.ts";
import { CERTS } from "./_server.ts";
import { assertEquals } from "./_assert.ts";

/** The server's TLS context and an accepted loopback connection with its client end. */
async function loopbackPair(listener: Deno.TcpListener) {
  const context = tls.createSecureContext({
    cert: await Deno.readTextFile(CERTS.cert),
    key: await Deno.readTextFile(CERTS.key),
  });
  const connecting = Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const conn = await listener.accept();
  return { context, conn, client: await connecting };
}

Deno.test("a Deno.Conn is adopted as a node:net socket that TLS runs over, both ways", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { context, conn, client } = await loopbackPair(listener);
  try {
    const adopted = nativeSocket(conn);
    assertEquals(adopted !== undefined, true, "the connection could not be adopted");
    const secure = new tls.TLSSocket(adopted!.socket, { isServer: true, secureContext: context });
    const received = new Promise<string>((resolve) =>
      secure.once("data", (bytes: Uint8Array) => resolve(new TextDecoder().decode(bytes)))
    );
    const tlsClient = await Deno.startTls(client, {
      hostname: "localhost",
      caCerts: [await Deno.readTextFile(CERTS.ca)],
    });
    await tlsClient.write(new TextEncoder().encode("EHLO client.test\r\n"));
    assertEquals(await received, "EHLO client.test\r\n");
    await new Promise<void>((resolve) => secure.write("250 ok\r\n", () => resolve()));
    const buffer = new Uint8Array(64);
    const count = await tlsClient.read(buffer);
    assertEquals(new TextDecoder().decode(buffer.subarray(0, count ?? 0)), "250 ok\r\n");
    tlsClient.close();
    await new Promise<void>((resolve) => {
      secure.once("close", () => resolve());
      secure.destroy();
    });
  } finally {
    // The adopted socket does not own the descriptor: the Deno.Conn closes it.
    try {
      conn.close();
    } catch { /* closed */ }
  }
});

Deno.test("a TLS connection nobody reads from stops reading: a client that keeps sending is held back", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { context, conn, client } = await loopbackPair(listener);
  const transport = new ConnTransport(conn);
  const upgrading = transport.startTls(context, 5_000);
  const tlsClient = await Deno.startTls(client, {
    hostname: "localhost",
    caCerts: [await Deno.readTextFile(CERTS.ca)],
  });
  await upgrading;
  let sent = 0;
  const chunk = new Uint8Array(64 * 1024).fill(0x61);
  const sending = (async () => {
    try {
      for (;;) sent += await tlsClient.write(chunk);
    } catch { /* closed at the end */ }
  })();
  // One read lets the records flow; after it the server reads nothing more.
  transport.deadline = Date.now() + 5_000;
  assertEquals((await transport.read())!.length > 0, true);
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  const held = sent;
  transport.close();
  tlsClient.close();
  await sending;
  // The socket buffers of both ends and a few records take some MiB; reading
  // ahead without bound took over a GiB in the same time.
  assertEquals(held < 32 * 2 ** 20, true, `the client got ${held} bytes in`);
});
