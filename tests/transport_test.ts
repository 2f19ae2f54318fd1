/**
 * TLS is done by Deno's native layer over the connection's own descriptor
 * (src/net/transport.ts): the adoption of a `Deno.Conn` into a `node:net`
 * socket must keep working, or every TLS session silently falls back to the
 * slower JavaScript bridge.
 */

import tls from "node:tls";
import { nativeSocket } from "../src/net/transport.ts";
import { CERTS } from "./_server.ts";
import { assertEquals } from "./_assert.ts";

Deno.test("a Deno.Conn is adopted as a node:net socket that TLS runs over, both ways", async () => {
  const context = tls.createSecureContext({
    cert: await Deno.readTextFile(CERTS.cert),
    key: await Deno.readTextFile(CERTS.key),
  });
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const connecting = Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const conn = await listener.accept();
  const client = await connecting;
  try {
    const socket = nativeSocket(conn);
    assertEquals(socket !== undefined, true, "the connection could not be adopted");
    const secure = new tls.TLSSocket(socket!, { isServer: true, secureContext: context });
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
