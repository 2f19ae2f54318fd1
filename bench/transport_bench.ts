// deno-lint-ignore-file no-console -- a command-line benchmark prints its results
/**
 * The quick measurement behind src/transport.ts: how fast a server reads a
 * stream of bytes from a loopback client, plain and after a server-side TLS
 * upgrade, with (a) `node:net` sockets and `node:tls` TLSSocket, and
 * (b) `Deno.listen` connections, bridged into a Duplex for the TLS upgrade.
 *
 * Run: deno run -A bench/transport_bench.ts [megabytes]
 *
 * @module
 */

import net from "node:net";
import tls from "node:tls";
import { Duplex } from "node:stream";

const MEGABYTES = Number(Deno.args[0] ?? 256);
const TOTAL = MEGABYTES * 1024 * 1024;
const CHUNK = new Uint8Array(64 * 1024).fill(0x61);
const root = new URL("..", import.meta.url).pathname;
const cert = await Deno.readTextFile(`${root}certs/leaf.pem`);
const key = await Deno.readTextFile(`${root}certs/leaf-key.pem`);
const ca = await Deno.readTextFile(`${root}certs/ca.pem`);
const context = tls.createSecureContext({ cert, key, minVersion: "TLSv1.2" });

/** Counts bytes from a node stream until TOTAL arrived; resolves then. */
function drain(stream: Duplex): Promise<void> {
  return new Promise((resolve) => {
    let seen = 0;
    stream.on("data", (chunk: Uint8Array) => {
      seen += chunk.length;
      if (seen >= TOTAL) resolve();
    });
  });
}

async function client(port: number, useTls: boolean): Promise<void> {
  let conn: Deno.Conn = await Deno.connect({ hostname: "127.0.0.1", port });
  if (useTls) {
    conn = await Deno.startTls(conn as Deno.TcpConn, { hostname: "localhost", caCerts: [ca] });
  }
  for (let sent = 0; sent < TOTAL; sent += CHUNK.length) {
    let offset = 0;
    while (offset < CHUNK.length) offset += await conn.write(CHUNK.subarray(offset));
  }
  return void setTimeout(() => conn.close(), 200);
}

async function nodeNet(useTls: boolean): Promise<number> {
  let done!: Promise<void>;
  const server = net.createServer((socket) => {
    const stream: Duplex = useTls
      ? new tls.TLSSocket(socket, { isServer: true, secureContext: context })
      : socket;
    done = drain(stream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const started = performance.now();
  await client(port, useTls);
  await done;
  const seconds = (performance.now() - started) / 1000;
  server.close();
  return MEGABYTES / seconds;
}

async function denoListen(useTls: boolean): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const started = performance.now();
  const sending = client(port, useTls);
  const conn = await listener.accept();
  if (useTls) {
    const bridge = Duplex.from({ readable: conn.readable, writable: conn.writable });
    await drain(
      new tls.TLSSocket(bridge as unknown as net.Socket, {
        isServer: true,
        secureContext: context,
      }),
    );
  } else {
    const buffer = new Uint8Array(64 * 1024);
    let seen = 0;
    while (seen < TOTAL) {
      const n = await conn.read(buffer);
      if (n === null) break;
      seen += n;
    }
  }
  await sending;
  const seconds = (performance.now() - started) / 1000;
  listener.close();
  return MEGABYTES / seconds;
}

const rows: [string, number][] = [];
for (let round = 0; round < 3; round++) {
  rows.push(["node:net plain", await nodeNet(false)]);
  rows.push(["Deno.listen plain", await denoListen(false)]);
  rows.push(["node:net + TLSSocket", await nodeNet(true)]);
  rows.push(["Deno.listen + Duplex bridge + TLSSocket", await denoListen(true)]);
}
const best = new Map<string, number>();
for (const [name, rate] of rows) best.set(name, Math.max(best.get(name) ?? 0, rate));
console.log(
  `Server read rate, ${MEGABYTES} MiB over loopback, best of 3 (Deno ${Deno.version.deno}):`,
);
for (const [name, rate] of best) {
  console.log(`  ${name.padEnd(42)} ${rate.toFixed(0).padStart(6)} MiB/s`);
}
Deno.exit(0);
