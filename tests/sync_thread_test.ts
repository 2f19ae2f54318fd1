/**
 * Where a delivery's syncs run: on the main thread when it is the only
 * message under way (no trips to the blocking pool), on the pool while
 * another message is arriving (so that no other session waits on the disk).
 * Seen from outside, with strace naming the thread of every fdatasync and
 * fsync.
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
    args: ["-f", "-e", "trace=fdatasync,fsync", "-o", output, "-p", String(pid)],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  // strace says "Process N attached with M threads" once it follows them all.
  const { promise: attached, resolve: onAttached } = Promise.withResolvers<void>();
  const stderr = child.stderr.pipeThrough(new TextDecoderStream());
  const said = (async () => {
    let text = "";
    for await (const chunk of stderr) {
      text += chunk;
      if (text.includes("attached")) onAttached();
    }
    onAttached();
    return text;
  })();
  await attached;
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
  name:
    "a message alone syncs on the main thread; beside another one arriving, on the blocking pool",
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

      // An idle connection beside it changes nothing.
      second = await TestClient.connect(server.port);
      await second.reply();
      trace = await traceSyncs(main);
      await sendOne(first, "beside an idle session");
      const idle = await trace.stop();
      assert(idle.length === 2 && idle.every((sync) => sync.thread === main), JSON.stringify(idle));

      // The second session's message is under way (after 354) while the first one's ends.
      await second.startMessage("b@sender.test", ["rcpt@example.com"]);
      await second.send("Subject: arriving\r\n\r\nfirst part\r\n");
      trace = await traceSyncs(main);
      await sendOne(first, "beside another");
      const shared = await trace.stop();
      assertEquals(shared.map((sync) => sync.call).sort(), ["fdatasync", "fsync"]);
      assert(shared.every((sync) => sync.thread !== main), JSON.stringify({ main, shared }));
      await second.send(".\r\n");
      assertEquals((await second.reply()).code, 250);

      // A message cut off in the middle no longer counts once its session is gone.
      await second.command("MAIL FROM:<c@sender.test>");
      await second.command("RCPT TO:<rcpt@example.com>");
      assertEquals((await second.command("DATA")).code, 354);
      await second.send("Subject: cut off\r\n\r\nhalf");
      second.close();
      await new Promise((resolve) => setTimeout(resolve, 300));
      trace = await traceSyncs(main);
      await sendOne(first, "after a cut-off one");
      const after = await trace.stop();
      assert(
        after.length === 2 && after.every((sync) => sync.thread === main),
        JSON.stringify(after),
      );

      assertEquals((await newFiles(server.maildir)).length, 5);
    } finally {
      first.close();
      second?.close();
      await server.stop();
    }
  },
});
