/**
 * A delivery's syncs seen from outside, with strace naming the thread and
 * the file of every fdatasync and fsync: where they run (on the main thread
 * when the message is the only one under way, with no trips to the blocking
 * pool; on the pool while another message is arriving, so that no other
 * session waits on the disk), and that the directories made for a new
 * mailbox are synced before its first message is acknowledged.
 */

import { newFiles, spawnServer, TestClient } from "./_server.ts";
import { assert, assertEquals } from "./_assert.ts";

interface Sync {
  thread: number;
  call: string;
  /** The path of the file or directory synced. */
  path: string;
}

/** Follows the syncs of `pid` and its threads into a file until stopped. */
async function traceSyncs(pid: number): Promise<{ stop(): Promise<Sync[]> }> {
  const output = await Deno.makeTempFile({ prefix: "letterbox-strace-" });
  const child = new Deno.Command("strace", {
    args: ["-f", "-y", "-e", "trace=fdatasync,fsync", "-o", output, "-p", String(pid)],
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
        const match = /^(\d+)\s+(fdatasync|fsync)\(\d+<([^>]*)>/.exec(line);
        return match ? [{ thread: Number(match[1]), call: match[2], path: match[3] }] : [];
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

      // The first message makes the Maildir's folders (and syncs them too).
      await sendOne(first, "first");
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

      assertEquals((await newFiles(server.maildir)).length, 6);
    } finally {
      first.close();
      second?.close();
      await server.stop();
    }
  },
});

Deno.test({
  name:
    "the directories made for a new mailbox are synced before its first message is acknowledged",
  ignore: !(await Deno.stat("/usr/bin/strace").then(() => true, () => false)),
  async fn() {
    const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "letterbox-test-" }));
    const server = await spawnServer(["--no-tls", "--maildir", `${root}/{domain}/{user}`], {
      maildir: root,
      useTestCert: false,
    });
    const client = await TestClient.connect(server.port);
    try {
      await client.reply();
      assertEquals((await client.command("EHLO client.test")).code, 250);
      const trace = await traceSyncs(server.process.pid);
      await sendOne(client, "first");
      const syncs = await trace.stop();
      const directories = syncs.filter((sync) => sync.call === "fsync").map((sync) => sync.path);
      // example.com/ is new in the root, rcpt/ in example.com/, tmp/ new/ cur/ in rcpt/;
      // then new/ once more for the message itself.
      for (const dir of [root, `${root}/example.com`, `${root}/example.com/rcpt`]) {
        assert(directories.includes(dir), JSON.stringify({ dir, syncs }));
      }
      assertEquals(directories.at(-1), `${root}/example.com/rcpt/new`);
      assertEquals((await newFiles(`${root}/example.com/rcpt`)).length, 1);

      // The mailbox is there now: a second message syncs only its own file and new/.
      const again = await traceSyncs(server.process.pid);
      await sendOne(client, "second");
      const second = await again.stop();
      assertEquals(second.map((sync) => sync.call), ["fdatasync", "fsync"]);
      assert(second[0].path.startsWith(`${root}/example.com/rcpt/tmp/`), second[0].path);
      assertEquals(second[1].path, `${root}/example.com/rcpt/new`);
    } finally {
      client.close();
      await server.stop();
      await Deno.remove(root, { recursive: true });
    }
  },
});
