/**
 * A full disk: delivery answers 452 4.3.1, leaves nothing behind, keeps the
 * connection usable, and delivers again once space is freed. Needs root to
 * mount a small tmpfs; skipped, saying why, where that is not possible.
 */

import { newFiles, startServer, TestClient } from "./_server.ts";
import { assertEquals, assertMatch } from "./_assert.ts";

async function mountTmpfs(dir: string, size: string): Promise<string | undefined> {
  if (Deno.uid() !== 0) return "not root, so no tmpfs can be mounted";
  const result = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir],
    stderr: "piped",
  })
    .output();
  return result.code === 0
    ? undefined
    : `mount failed: ${new TextDecoder().decode(result.stderr).trim()}`;
}

const root = await Deno.makeTempDir({ prefix: "letterbox-full-" });
const cannotMount = await mountTmpfs(root, "2m");
if (cannotMount) {
  // deno-lint-ignore no-console
  console.log(`disk_full_test: skipped: ${cannotMount}`);
  await Deno.remove(root, { recursive: true });
}

Deno.test({
  name:
    "a full disk gives 452 4.3.1, leaves nothing in new/ or tmp/, and delivery resumes once space is freed",
  ignore: cannotMount !== undefined,
  fn: async () => {
    const maildir = `${root}/Maildir`;
    const server = await startServer(["--maildir", maildir, "--no-tls"], {
      maildir: root,
      useTestCert: false,
    });
    const client = await TestClient.connect(server.port);
    try {
      await client.reply();
      // Leave about 200 KiB free, then send 1 MiB.
      await Deno.writeFile(`${root}/filler`, new Uint8Array(2 * 1024 * 1024 - 200 * 1024)).catch(
        () => {},
      );
      const body = ("x".repeat(1022) + "\r\n").repeat(1024);
      await client.startMessage("a@b.test", ["x@y.test"]);
      await client.send(`Subject: too big for the disk\r\n\r\n${body}.\r\n`);
      assertEquals(
        (await client.reply()).text,
        "452 4.3.1 Error: insufficient system storage, try again later\r\n",
      );
      assertEquals(await newFiles(maildir), []);
      assertEquals([...Deno.readDirSync(`${maildir}/tmp`)], []);
      assertEquals((await client.command("NOOP")).code, 250);

      await Deno.remove(`${root}/filler`);
      await client.startMessage("a@b.test", ["x@y.test"], { ehlo: false });
      await client.send(`Subject: fits now\r\n\r\n${body}.\r\n`);
      assertMatch((await client.reply()).text, /^250 2\.0\.0 Ok: queued as /);
      assertEquals((await newFiles(maildir)).length, 1);
      assertEquals([...Deno.readDirSync(`${maildir}/tmp`)], []);
    } finally {
      client.close();
      await server.stop();
      await new Deno.Command("umount", { args: [root] }).output();
      await Deno.remove(root, { recursive: true });
    }
  },
});
