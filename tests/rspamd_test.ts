/**
 * rspamd as the content filter, against a real rspamd 3.4 started once for
 * this file (tests/_rspamd.ts): its actions by score, GTUBE, the Junk folder
 * read back by Dovecot, and rspamd down or slow under both failure policies.
 */

import { type Dovecot, imapFolders, startDovecot } from "./_dovecot.ts";
import { startRspamd } from "./_rspamd.ts";
import { freePort, newFiles, readMessages, startServer, TestClient } from "./_server.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./_assert.ts";

// Stopped, with its workers, when the file's tests are done (tests/_rspamd.ts).
const rspamd = await startRspamd();

const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

function message(subject: string, extra = "", body = "Hello, an ordinary short message."): string {
  return `From: alice@sender.test\r\nTo: test@mx.test\r\nSubject: ${subject}\r\n` +
    `Message-ID: <${crypto.randomUUID()}@sender.test>\r\n${extra}\r\n${body}\r\n`;
}

/** Sends one message; returns the reply to its end of data, e.g. "250 2.0.0 ...". */
async function deliver(port: number, text: string): Promise<string> {
  const client = await TestClient.connect(port);
  try {
    await client.reply();
    await client.command("EHLO client.sender.test");
    await client.command("MAIL FROM:<alice@sender.test>");
    await client.command("RCPT TO:<test@mx.test>");
    await client.command("DATA");
    await client.send(text.replace(/\r\n\./g, "\r\n..") + ".\r\n");
    const reply = await client.reply(30_000);
    await client.command("QUIT");
    return reply.lines.join(" ");
  } finally {
    client.close();
  }
}

async function withServer(
  args: string[],
  test: (server: Awaited<ReturnType<typeof startServer>>, maildir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-rspamd-test-" });
  const server = await startServer(
    ["--maildir", `${dir}/Maildir`, "--no-tls", ...args],
    { maildir: dir, useTestCert: false },
  );
  try {
    await test(server, `${dir}/Maildir`);
  } finally {
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

function field(stored: string, name: string): string | undefined {
  return stored.split(/\n(?![ \t])/).find((line) => line.toLowerCase().startsWith(`${name}:`));
}

Deno.test("GTUBE is refused with rspamd's 550 and nothing is stored", async () => {
  await withServer(["--rspamd", rspamd.url], async (server, maildir) => {
    const reply = await deliver(server.port, message("gtube", "", `spam ${GTUBE} spam`));
    assertMatch(reply, /^550 5\.7\.1 Gtube pattern/);
    assertEquals(await readMessages(maildir), []);
    const line = server.logs.find((record) => String(record.message).includes("refused"));
    assertStringIncludes(String(line?.message), "rspamd action=reject score=15.00");
  });
});

Deno.test("a plain message goes to the inbox with its score; the sender's X-Spam fields are gone", async () => {
  await withServer(["--rspamd", rspamd.url], async (server, maildir) => {
    const text = message(
      "plain",
      "X-Spam: No\r\nX-Spam-Score: -100\r\nX-Rspamd-Server: forged\r\n",
    );
    assertMatch(await deliver(server.port, text), /^250 /);
    const [stored] = await readMessages(maildir);
    assertMatch(
      field(stored, "x-spam-status")!,
      /^X-Spam-Status: No, score=-?\d+\.\d\d required=15\.00 action=no action$/,
    );
    assertMatch(field(stored, "x-spam-score")!, /^X-Spam-Score: -?\d+\.\d\d$/);
    assertStringIncludes(field(stored, "x-spamd-result")!, "default: False [");
    assertEquals(field(stored, "x-spam"), undefined, "no X-Spam: No from the sender");
    // The field, not just its value: the random Message-ID may hold "-100".
    assert(!stored.includes("X-Spam-Score: -100"), "the sender's score is gone");
    // The headers rspamd asks for (milter.add_headers) are applied; the forged one is not kept.
    assert(!stored.includes("X-Rspamd-Server: forged"));
    assertMatch(field(stored, "x-rspamd-queue-id")!, /^X-Rspamd-Queue-Id: \w+/);
  });
});

Deno.test("'add header' and 'rewrite subject' go to Junk, which Dovecot shows as folder Junk", async () => {
  let dovecot: Dovecot | undefined;
  await withServer(
    ["--rspamd", rspamd.url, "--metrics", "127.0.0.1:0"],
    async (server, maildir) => {
      assertMatch(
        await deliver(server.port, message("likely spam", "X-Spam: No\r\nX-Test-Score: 6.4\r\n")),
        /^250 /,
      );
      assertMatch(
        await deliver(server.port, message("Hello there", "X-Test-Score: 8.4\r\n")),
        /^250 /,
      );
      assertMatch(await deliver(server.port, message("ham")), /^250 /);
      assertEquals((await newFiles(`${maildir}/.Junk`)).length, 2);
      const junk = await readMessages(`${maildir}/.Junk`);
      const flagged = junk.find((text) => text.includes("likely spam"))!;
      assertEquals(field(flagged, "x-spam"), "X-Spam: Yes", "ours, and only ours");
      assertMatch(
        field(flagged, "x-spam-status")!,
        /^X-Spam-Status: Yes, score=[67]\.\d\d required=15\.00 action=add header$/,
      );
      const rewritten = junk.find((text) => text.includes("X-Test-Score: 8.4"))!;
      assertMatch(field(rewritten, "subject")!, /^Subject: \[SPAM \d+\.\d\d\] Hello there$/);
      assertEquals(rewritten.split("\nSubject:").length, 2, "one Subject only");
      try {
        dovecot = await startDovecot(server.maildir, maildir);
        const folders = await imapFolders(dovecot.port);
        assertEquals(folders.Junk.sort(), [field(rewritten, "subject")!.slice(9), "likely spam"]);
        assertEquals(folders.INBOX, ["ham"]);
      } finally {
        await dovecot?.stop();
      }
      const address = server.logs.find((record) => String(record.message).startsWith("Metrics on"));
      const url = String(address?.message).match(/http:\/\/\S+\/metrics/)![0].replaceAll('"', "");
      const metrics = await (await fetch(url)).text();
      assertStringIncludes(metrics, 'letterbox_rspamd_actions_total{action="add header"} 1');
      assertStringIncludes(metrics, 'letterbox_rspamd_actions_total{action="rewrite subject"} 1');
      assertStringIncludes(metrics, 'letterbox_rspamd_actions_total{action="no action"} 1');
    },
  );
});

Deno.test("'greylist' and 'soft reject' are 451 4.7.1: the sender retries, nothing is stored", async () => {
  await withServer(["--rspamd", rspamd.url], async (server, maildir) => {
    assertMatch(
      await deliver(server.port, message("grey", "X-Test-Score: 4.4\r\n")),
      /^451 4\.7\.1 /,
    );
    assertMatch(
      await deliver(server.port, message("soft", "X-Test-Score: 12.4\r\n")),
      /^451 4\.7\.1 /,
    );
    assertEquals(await readMessages(maildir), []);
  });
});

Deno.test("rspamd down or silent: open delivers marked unchecked, tempfail answers 451, both in time", async () => {
  // Down: nothing listens. Silent: a server that accepts and never answers.
  const closed = `http://127.0.0.1:${freePort()}`;
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  (async () => {
    for await (const conn of silent) held.push(conn);
  })();
  const silentUrl = `http://127.0.0.1:${(silent.addr as Deno.NetAddr).port}`;
  try {
    for (const url of [closed, silentUrl]) {
      for (const policy of ["open", "tempfail"]) {
        await withServer(
          ["--rspamd", url, "--rspamd-fail", policy, "--rspamd-timeout", "1"],
          async (server, maildir) => {
            const started = Date.now();
            const reply = await deliver(server.port, message(`${policy} ${url}`));
            const took = Date.now() - started;
            assert(took < 5_000, `took ${took} ms`);
            const stored = await readMessages(maildir);
            if (policy === "open") {
              assertMatch(reply, /^250 /);
              assertEquals(stored.length, 1);
              assertMatch(field(stored[0], "x-spam-status")!, /^X-Spam-Status: unchecked \(/);
              assert(
                server.logs.some((record) =>
                  String(record.level).toLowerCase().startsWith("warn") &&
                  String(record.message).includes("rspamd did not check")
                ),
                JSON.stringify(server.logs.slice(-3)),
              );
            } else {
              assertMatch(reply, /^451 4\.7\.1 Spam filter unavailable/);
              assertEquals(stored, []);
            }
          },
        );
      }
    }
  } finally {
    silent.close();
    for (const conn of held) conn.close();
  }
});

Deno.test("a message over --rspamd-max-size is delivered unchecked without asking rspamd", async () => {
  await withServer(["--rspamd", rspamd.url, "--rspamd-max-size", "2K"], async (server, maildir) => {
    const big = message("big", "", `${GTUBE}\r\n${"x".repeat(76)}\r\n`.repeat(40));
    assertMatch(await deliver(server.port, big), /^250 /);
    const [stored] = await readMessages(maildir);
    assertMatch(
      field(stored, "x-spam-status")!,
      /^X-Spam-Status: unchecked \(larger than 2048 octets\)/,
    );
  });
});
