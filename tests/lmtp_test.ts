/**
 * LMTP delivery into a real Dovecot (dovecot-lmtpd, dovecot-imapd,
 * dovecot-sieve): a private instance on loopback ports with passwd-file users
 * served as nobody, a Sieve script for one user and a tiny quota for two.
 * What Letterbox hands over is read back over IMAP.
 */

import {
  canRunLmtpDovecot,
  type LmtpDovecot as Dovecot,
  startLmtpDovecot,
} from "./_lmtp_dovecot.ts";
import { imapMessages } from "./_dovecot.ts";
import { startDns } from "./_dns.ts";
import { startServer, TestClient } from "./_server.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./_assert.ts";

function mailbox(dovecot: Dovecot, user: string): Promise<Record<string, string[]>> {
  return imapMessages(dovecot.imapPort, user);
}

async function withLetterbox(
  dovecot: Dovecot,
  args: string[],
  test: (server: Awaited<ReturnType<typeof startServer>>) => Promise<void>,
): Promise<void> {
  const server = await startServer([
    "--lmtp",
    `127.0.0.1:${dovecot.lmtpPort}`,
    "--lmtp-timeout",
    "5",
    "--no-tls",
    ...args,
  ], { useTestCert: false });
  try {
    await test(server);
  } finally {
    await server.stop();
  }
}

/** One SMTP transaction; returns every reply, RCPT by RCPT, and the end of data's. */
async function transaction(
  port: number,
  recipients: string[],
  text: string,
): Promise<{ rcpt: string[]; data?: string }> {
  const client = await TestClient.connect(port);
  try {
    await client.reply();
    await client.command("EHLO client.sender.test");
    await client.command("MAIL FROM:<carol@sender.test>");
    const rcpt: string[] = [];
    for (const recipient of recipients) {
      rcpt.push((await client.command(`RCPT TO:<${recipient}>`)).lines.join(" "));
    }
    if (!rcpt.some((reply) => reply.startsWith("250"))) return { rcpt };
    await client.command("DATA");
    await client.send(text.replace(/\r\n\./g, "\r\n..") + ".\r\n");
    const data = (await client.reply(30_000)).lines.join(" ");
    await client.command("QUIT");
    return { rcpt, data };
  } finally {
    client.close();
  }
}

const message = (subject: string, extra = "", body = "Hello over LMTP.\r\n.leading dot\r\n") =>
  `From: carol@sender.test\r\nTo: alice@example.com\r\nSubject: ${subject}\r\n` +
  `Message-ID: <${crypto.randomUUID()}@sender.test>\r\n${extra}\r\n${body}`;

Deno.test({
  name: "LMTP into Dovecot: read back over IMAP byte for byte, with our Received on top",
  ignore: !canRunLmtpDovecot,
  fn: async () => {
    await using dovecot = await startLmtpDovecot();
    await withLetterbox(dovecot, ["--metrics", "127.0.0.1:0"], async (server) => {
      const text = message("byte for byte", "X-Custom: kept\r\n");
      const { rcpt, data } = await transaction(server.port, ["alice@example.com"], text);
      assertEquals(rcpt, ["250 2.1.5 Ok"]);
      assertMatch(data!, /^250 2\.0\.0 Ok: queued as /);
      const { INBOX } = await mailbox(dovecot, "alice");
      assertEquals(INBOX.length, 1);
      // Dovecot adds Return-Path and Delivered-To; then ours; then exactly what was sent.
      assertMatch(
        INBOX[0],
        /^Return-Path: <carol@sender\.test>\r\nDelivered-To: alice@example\.com\r\n/,
      );
      assertStringIncludes(
        INBOX[0],
        "\r\nReceived: from client.sender.test (unknown [127.0.0.1])\r\n\tby mx.test (Letterbox)",
      );
      assert(INBOX[0].endsWith(text), INBOX[0]);
      const logged = server.logs.find((record) => /^LMTP .*Saved/.test(String(record.message)));
      assertMatch(
        String(logged?.message),
        /for "?alice@example\.com"? of "?\w+"?: "?250 2\.0\.0 <alice@example\.com> \S+ Saved/,
      );
      // One 250 for the RCPT, one after the data.
      const address = server.logs.find((record) => String(record.message).startsWith("Metrics on"));
      const url = String(address?.message).match(/http:\/\/\S+\/metrics/)![0].replaceAll('"', "");
      assertStringIncludes(
        await (await fetch(url)).text(),
        'letterbox_lmtp_replies_total{code="250"} 2',
      );
    });
  },
});

Deno.test({
  name:
    "LMTP: a user's Sieve script files the message; unknown user 550 5.1.1 and full mailbox 552 5.2.2 at RCPT",
  ignore: !canRunLmtpDovecot,
  fn: async () => {
    await using dovecot = await startLmtpDovecot();
    await withLetterbox(dovecot, [], async (server) => {
      const filed = await transaction(
        server.port,
        ["lists@example.com"],
        message("announcement", "List-Id: <announce.example.org>\r\n"),
      );
      assertMatch(filed.data!, /^250 /);
      const folders = await mailbox(dovecot, "lists");
      assertEquals(folders.Lists?.length, 1, JSON.stringify(Object.keys(folders)));
      assertEquals(folders.INBOX, []);
      const refused = await transaction(
        server.port,
        ["nobody-here@example.com", "full@example.com", "alice@example.com"],
        message("some refused"),
      );
      assertMatch(refused.rcpt[0], /^550 5\.1\.1 /);
      assertMatch(refused.rcpt[1], /^552 5\.2\.2 /);
      assertEquals(refused.rcpt[2], "250 2.1.5 Ok");
      assertMatch(refused.data!, /^250 /);
      assertEquals((await mailbox(dovecot, "alice")).INBOX.length, 1);
    });
  },
});

Deno.test({
  name:
    "LMTP: Dovecot stopped is 451 at RCPT, then delivered after it comes back; killed mid-transaction is 451",
  ignore: !canRunLmtpDovecot,
  fn: async () => {
    await using dovecot = await startLmtpDovecot();
    await withLetterbox(dovecot, [], async (server) => {
      await dovecot.stop();
      const down = await transaction(server.port, ["alice@example.com"], message("while down"));
      assertMatch(down.rcpt[0], /^451 4\.4\.1 /);
      await dovecot.start();
      const back = await transaction(server.port, ["alice@example.com"], message("after"));
      assertMatch(back.data!, /^250 /);
      // Killed between our RCPT and the end of data: nothing acknowledged.
      const client = await TestClient.connect(server.port);
      await client.reply();
      await client.command("EHLO client.sender.test");
      await client.command("MAIL FROM:<carol@sender.test>");
      assertEquals((await client.command("RCPT TO:<alice@example.com>")).code, 250);
      assertEquals((await client.command("DATA")).code, 354);
      await client.send(message("killed", "", "first half\r\n"));
      await dovecot.kill();
      await client.send("second half\r\n.\r\n");
      assertMatch((await client.reply(30_000)).lines.join(" "), /^451 4\.4\.1 /);
      // The session goes on.
      assertEquals((await client.command("RSET")).code, 250);
      client.close();
      await dovecot.start();
      const subjects = (await mailbox(dovecot, "alice")).INBOX.map((m) =>
        /Subject: (.*)\r\n/.exec(m)![1]
      );
      assertEquals(subjects, ["after"]);
    });
  },
});

Deno.test({
  name:
    "LMTP: one of several recipients failing after the data is 451, and the log names who has it",
  ignore: !canRunLmtpDovecot,
  fn: async () => {
    await using dovecot = await startLmtpDovecot();
    await withLetterbox(dovecot, [], async (server) => {
      const large = message("too large for small", "", `${"y".repeat(76)}\r\n`.repeat(60));
      const { rcpt, data } = await transaction(server.port, [
        "alice@example.com",
        "small@example.com",
      ], large);
      assertEquals(rcpt, ["250 2.1.5 Ok", "250 2.1.5 Ok"]);
      assertMatch(data!, /^451 4\.3\.0 /);
      const warning = server.logs.find((record) => String(record.message).includes("LMTP saved"));
      assertStringIncludes(String(warning?.message), "alice@example.com");
      assertStringIncludes(String(warning?.message), "small@example.com");
      assertEquals((await mailbox(dovecot, "alice")).INBOX.length, 1);
      assertEquals((await mailbox(dovecot, "small")).INBOX, []);
    });
  },
});

Deno.test({
  name: "LMTP with checks on: the message is held, then sent with their fields on top",
  ignore: !canRunLmtpDovecot,
  fn: async () => {
    await using dovecot = await startLmtpDovecot();
    // A DNS server that knows none of the names: every result is "none", at once.
    await using dns = await startDns({});
    await withLetterbox(
      dovecot,
      ["--authentication", "on", "--dns-server", `127.0.0.1:${dns.port}`],
      async (server) => {
        const forged = "Authentication-Results: mx.test; dmarc=pass\r\n";
        const large = `${"z".repeat(76)}\r\n`.repeat(5000); // past what is held in memory
        const { data } = await transaction(
          server.port,
          ["alice@example.com"],
          message("held", forged, large),
        );
        assertMatch(data!, /^250 /);
        const [stored] = (await mailbox(dovecot, "alice")).INBOX;
        assertMatch(
          stored,
          /\r\nAuthentication-Results: mx\.test;\r\n dkim=none [^]*\r\n spf=none/,
        );
        assert(!stored.includes("dmarc=pass"), "the forged field is gone");
        assert(stored.endsWith(large), "the body is whole");
      },
    );
  },
});

Deno.test({
  name:
    "LMTP with a hook: the hook gets the message from a copy kept for it, removed once it is done",
  ignore: !canRunLmtpDovecot,
  fn: async () => {
    await using dovecot = await startLmtpDovecot();
    const calls: { message: { subject: string; text: string } }[] = [];
    await using webhook = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      async (request) => {
        calls.push(await request.json());
        return new Response("ok");
      },
    );
    await withLetterbox(
      dovecot,
      ["--hook", `alice@example.com=http://127.0.0.1:${webhook.addr.port}/mail`],
      async (server) => {
        const { data } = await transaction(
          server.port,
          ["alice@example.com", "bob@example.com"],
          message("trigger"),
        );
        assertMatch(data!, /^250 /);
        const deadline = Date.now() + 10_000;
        while (calls.length === 0 && Date.now() < deadline) {
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        assertEquals(calls.length, 1);
        assertEquals(calls[0].message.subject, "trigger");
        assertStringIncludes(calls[0].message.text, "Hello over LMTP.");
        // Once the hook is done, the kept copy goes.
        const kept = `${server.maildir}/letterbox-hooks/messages/new`;
        for (let i = 0; i < 100 && [...Deno.readDirSync(kept)].length > 0; i++) {
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        assertEquals([...Deno.readDirSync(kept)], []);
        assertEquals((await mailbox(dovecot, "alice")).INBOX.length, 1);
        assertEquals((await mailbox(dovecot, "bob")).INBOX.length, 1);
      },
    );
  },
});
