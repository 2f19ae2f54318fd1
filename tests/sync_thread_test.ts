/**
 * Where a delivery's syncs run: on the main thread while the server holds one
 * connection (no trips to the blocking pool), on the pool as soon as a second
 * connection is open (so that no other session waits on the disk). Seen from
 * outside, with strace naming the thread of every fdatasync and fsync.
 */

import { newFiles, spawnServer, TestClient } from "./_server.ts";
import { assert, assertEquals } from "./_assert.ts";

interface Sync {
  thread: number;
  call: string;
}

/** Follows the syncs of `pid` and its threads into a file until stopped. */
async function traceSyncs(pid: number): Promise<{ stop(): Promise<Sync[]> }> {
  const output = await Deno.makeTempFile({ prefix: "letterbox-strace-" });
  const child = new Deno.Command("strace", {
    args: ["-f", "-q", "-e", "trace=fdatasync,fsync", "-o", output, "-p", String(pid)],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  // strace says nothing once attached with -q; the file appears when it is.
  const stderr = child.stderr.pipeThrough(new TextDecoderStream());
  const said = (async () => {
    let text = "";
    for await (const chunk of stderr) text += chunk;
    return text;
  })();
  await new Promise((resolve) => setTimeout(resolve, 500));
  return {
    async stop() {
      child.kill("SIGINT");
      const status = await child.status;
      const text = await Deno.readTextFile(output);
      await Deno.remove(output);
      assert(status.code === 0 || status.signal === "SIGINT", `strace failed: ${await said}`);
      return text.split("\n").flatMap((line) => {
        const match = /^(\d+)\s+(fdatasync|fsync)\(/.exec(line);
        return match ? [{ thread: Number(match[1]), call: match[2] }] : [];
      });
    },
  };
}

async function sendOne(client: TestClient, id: string): Promise<void> {
  await client.startMessage("a@sender.test", ["rcpt@example.com"], { ehlo: false });
  await client.send(`Subject: ${id}\r\n\r\n${id}\r\n.\r\n`);
  const reply = await client.reply();
  assertEquals(reply.code, 250, reply.text);
}

Deno.test({
  name: "one connection syncs on the main thread; with a second one open, on the blocking pool",
  ignore: !(await Deno.stat("/usr/bin/strace").then(() => true, () => false)),
  async fn() {
    const server = await spawnServer(["--no-tls"], { useTestCert: false });
    const main = server.process.pid;
    const first = await TestClient.connect(server.port);
    let second: TestClient | undefined;
    try {
      await first.reply();
      assertEquals((await first.command("EHLO client.test")).code, 250);

      let trace = await traceSyncs(main);
      await sendOne(first, "alone");
      const alone = await trace.stop();
      // The file's fdatasync and the fsync of new/, both by the main thread.
      assertEquals(alone.map((sync) => sync.call).sort(), ["fdatasync", "fsync"]);
      assert(alone.every((sync) => sync.thread === main), JSON.stringify({ main, alone }));

      second = await TestClient.connect(server.port);
      await second.reply();
      trace = await traceSyncs(main);
      await sendOne(first, "beside another");
      const shared = await trace.stop();
      assertEquals(shared.map((sync) => sync.call).sort(), ["fdatasync", "fsync"]);
      assert(shared.every((sync) => sync.thread !== main), JSON.stringify({ main, shared }));

      assertEquals((await newFiles(server.maildir)).length, 2);
    } finally {
      first.close();
      second?.close();
      await server.stop();
    }
  },
});
