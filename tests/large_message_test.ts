/**
 * DATA streams to disk: a 200 MB message must not raise the server's peak RSS
 * by more than 32 MB over an idle server, and arrives whole.
 */

import { newFiles, spawnServer, TestClient } from "./_server.ts";
import { assert, assertEquals, assertMatch } from "./_assert.ts";

/** Reads a field such as VmRSS or VmHWM (peak) from /proc, in bytes. */
export function memoryOf(pid: number, field: "VmRSS" | "VmHWM"): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
  if (!match) throw new Error(`No ${field} in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

const MESSAGE_BYTES = 200 * 1024 * 1024;
const MAX_GROWTH = 32 * 1024 * 1024;

Deno.test("a 200 MB message streams to disk with flat memory and arrives whole", async () => {
  const server = await spawnServer(["--max-message-size", "300M", "--no-tls"], {
    useTestCert: false,
  });
  const client = await TestClient.connect(server.port);
  try {
    await client.reply();
    // Warm up: one small message, so that code paths are compiled before the baseline.
    await client.startMessage("a@b.test", ["x@y.test"]);
    await client.send("Subject: warm-up\r\n\r\nhello\r\n.\r\n");
    assertEquals((await client.reply()).code, 250);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const idle = memoryOf(server.process.pid, "VmRSS");

    await client.startMessage("a@b.test", ["x@y.test"], { ehlo: false });
    const line = new TextEncoder().encode("y".repeat(1022) + "\r\n");
    const block = new Uint8Array(line.length * 64);
    for (let i = 0; i < 64; i++) block.set(line, i * line.length);
    await client.send("Subject: large\r\n\r\n");
    for (let sent = 0; sent < MESSAGE_BYTES; sent += block.length) await client.send(block);
    await client.send(".\r\n");
    assertMatch((await client.reply(120_000)).text, /^250 2\.0\.0 Ok: queued as /);
    const peak = memoryOf(server.process.pid, "VmHWM");
    const growth = peak - idle;
    // deno-lint-ignore no-console
    console.log(
      `large message: idle RSS ${(idle / 2 ** 20).toFixed(1)} MiB, peak ${
        (peak / 2 ** 20).toFixed(1)
      } MiB, growth ${(growth / 2 ** 20).toFixed(1)} MiB`,
    );
    assert(growth <= MAX_GROWTH, `peak RSS grew by ${growth} bytes`);

    const names = await newFiles(server.maildir);
    assertEquals(names.length, 2);
    const sizes = names.map((name) => Deno.statSync(`${server.maildir}/new/${name}`).size);
    const large = names[sizes.indexOf(Math.max(...sizes))];
    const path = `${server.maildir}/new/${large}`;
    // Stored with LF ends: each 1024-octet wire line is 1023 octets on disk.
    const lines = MESSAGE_BYTES / line.length;
    const stored = Deno.readFileSync(path);
    const text = new TextDecoder().decode(stored.subarray(0, 2048));
    const bodyStart = text.indexOf("Subject: large\n\n") + "Subject: large\n\n".length;
    assertEquals(stored.length - bodyStart, lines * (line.length - 1));
    assertEquals(
      new TextDecoder().decode(stored.subarray(stored.length - 1024)),
      "\n" + "y".repeat(1022) + "\n",
    );
    const newlines = stored.reduce((count, byte) => byte === 0x0a ? count + 1 : count, 0);
    assert(large.endsWith(`,S=${stored.length},W=${stored.length + newlines}`), large);
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("a 50 MB message in 1 MB BDAT chunks streams to disk with flat memory and arrives whole", async () => {
  const server = await spawnServer(["--max-message-size", "100M", "--no-tls"], {
    useTestCert: false,
  });
  const client = await TestClient.connect(server.port);
  try {
    await client.reply();
    await client.startMessage("a@b.test", ["x@y.test"], { dataCommand: false });
    await client.send("BDAT 20 LAST\r\nSubject: warm-up\r\n\r\n");
    assertEquals((await client.reply()).code, 250);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const idle = memoryOf(server.process.pid, "VmRSS");
    await client.command("MAIL FROM:<a@b.test>");
    await client.command("RCPT TO:<x@y.test>");
    const line = new TextEncoder().encode("z".repeat(1022) + "\r\n");
    const chunk = new Uint8Array(1024 * 1024);
    for (let i = 0; i < 1024; i++) chunk.set(line, i * line.length);
    await client.send("BDAT 20\r\nSubject: chunked\r\n\r\n");
    assertEquals((await client.reply()).code, 250);
    for (let i = 0; i < 50; i++) {
      await client.send(`BDAT ${chunk.length}${i === 49 ? " LAST" : ""}\r\n`);
      await client.send(chunk);
      const reply = await client.reply(60_000);
      if (i < 49) assertEquals(reply.text, `250 2.0.0 ${chunk.length} octets received\r\n`);
      else assertMatch(reply.text, /^250 2\.0\.0 Ok: queued as /);
    }
    const growth = memoryOf(server.process.pid, "VmHWM") - idle;
    // deno-lint-ignore no-console
    console.log(`50 MB by BDAT: peak RSS grew ${(growth / 2 ** 20).toFixed(1)} MiB`);
    assert(growth <= MAX_GROWTH, `peak RSS grew by ${growth} bytes`);
    const names = await newFiles(server.maildir);
    const sizes = names.map((name) => Deno.statSync(`${server.maildir}/new/${name}`).size);
    const stored = Deno.readFileSync(
      `${server.maildir}/new/${names[sizes.indexOf(Math.max(...sizes))]}`,
    );
    const text = new TextDecoder().decode(stored.subarray(0, 2048));
    const bodyStart = text.indexOf("Subject: chunked\n\n") + "Subject: chunked\n\n".length;
    // CRLF stored as LF: 1023 octets a line, 1024 lines a chunk, 50 chunks.
    assertEquals(stored.length - bodyStart, 50 * 1024 * 1023);
  } finally {
    client.close();
    await server.stop();
  }
});
