/**
 * Slowloris: 500 connections that send one byte every two seconds neither
 * stop an honest client from delivering in normal time nor outlive the
 * command timeout.
 */

import { startServer } from "./_server.ts";
import { type LoadMessage, sendMessages } from "./_load.ts";
import { assert, assertEquals } from "./_assert.ts";

const SLOW_CLIENTS = 500;
const COMMAND_TIMEOUT_S = 4;
const BYTE_INTERVAL_MS = 2_000;

async function slowClient(port: number): Promise<{ transcript: string; closedAfter: number }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const opened = performance.now();
  let transcript = "";
  let closed = false;
  const reading = (async () => {
    const buffer = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buffer).catch(() => null);
      if (n === null) break;
      transcript += new TextDecoder().decode(buffer.subarray(0, n));
    }
    closed = true;
  })();
  // One byte at a time, never finishing a line.
  const bytes = new TextEncoder().encode("EHLO slowloris.example.com and more and more");
  for (let i = 0; !closed && i < bytes.length; i++) {
    await conn.write(bytes.subarray(i, i + 1)).catch(() => {});
    await Promise.race([reading, new Promise((resolve) => setTimeout(resolve, BYTE_INTERVAL_MS))]);
  }
  await reading;
  const closedAfter = (performance.now() - opened) / 1000;
  conn.close();
  return { transcript, closedAfter };
}

Deno.test("500 slow clients do not delay an honest one, and the command timeout closes them all", async () => {
  const server = await startServer([
    "--max-connections-per-ip",
    "1000",
    "--command-timeout",
    String(COMMAND_TIMEOUT_S),
  ]);
  try {
    const slow = Promise.all(Array.from({ length: SLOW_CLIENTS }, () => slowClient(server.port)));
    await new Promise((resolve) => setTimeout(resolve, 1_000));

    // The honest client, one message per connection, while all 500 are open.
    const latencies: number[] = [];
    for (let i = 0; i < 20; i++) {
      const message: LoadMessage[] = [{
        id: `h${i}`,
        from: "a@b.test",
        to: "x@example.com",
        content: `Subject: ${i}\r\n\r\nhi\r\n`,
      }];
      const began = performance.now();
      assertEquals(await sendMessages(server.port, () => message.shift(), () => {}), 1);
      latencies.push(performance.now() - began);
    }
    const results = await slow;
    const worst = Math.max(...latencies);
    const closedAfter = results.map((r) => r.closedAfter);
    // deno-lint-ignore no-console
    console.log(
      `slow clients: ${SLOW_CLIENTS} open; honest connect+EHLO+MAIL+RCPT+DATA+QUIT median ` +
        `${latencies.sort((a, b) => a - b)[10].toFixed(1)} ms, worst ${worst.toFixed(1)} ms; ` +
        `slow ones closed after ${Math.min(...closedAfter).toFixed(1)}-${
          Math.max(...closedAfter).toFixed(1)
        } s`,
    );
    assert(worst < 1_000, `an honest delivery took ${worst} ms`);
    for (const { transcript, closedAfter } of results) {
      assertEquals(
        transcript,
        "220 mx.test ESMTP Letterbox\r\n421 4.4.2 Error: timeout exceeded, closing connection\r\n",
      );
      assert(closedAfter < COMMAND_TIMEOUT_S + 3, `closed only after ${closedAfter} s`);
    }
  } finally {
    await server.stop();
  }
});
