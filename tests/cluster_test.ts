/**
 * Past one machine, on loopback: two Letterbox instances (equal MX hosts)
 * deliver by LMTP to a Dovecot proxy that routes each user to the backend
 * holding their mail (Dovecot's lmtp_proxy with proxy=y host= fields from
 * its passdb): alice on 127.0.0.2, bob on 127.0.0.3. Each user's mail is
 * read back over IMAP from their own backend.
 */

import { imapMessages } from "./_dovecot.ts";
import { startCluster } from "./_cluster.ts";
import { canRunLmtpDovecot } from "./_lmtp_dovecot.ts";
import { startServer, TestClient } from "./_server.ts";
import { assertEquals, assertMatch } from "./_assert.ts";

async function send(port: number, recipient: string, subject: string): Promise<string> {
  const client = await TestClient.connect(port);
  try {
    await client.reply();
    await client.command("EHLO client.sender.test");
    await client.command("MAIL FROM:<carol@sender.test>");
    const rcpt = await client.command(`RCPT TO:<${recipient}>`);
    if (rcpt.code !== 250) return rcpt.lines.join(" ");
    await client.command("DATA");
    await client.send(`From: carol@sender.test\r\nSubject: ${subject}\r\n\r\nHello.\r\n.\r\n`);
    return (await client.reply(30_000)).lines.join(" ");
  } finally {
    client.close();
  }
}

Deno.test({
  name:
    "two Letterbox MX hosts, one Dovecot LMTP proxy, two backends: each user's mail on their own backend",
  ignore: !canRunLmtpDovecot,
  fn: async () => {
    const cluster = await startCluster();
    const { proxyPort } = cluster;
    const [hostA, imapA] = cluster.backends.alice;
    const [hostB, imapB] = cluster.backends.bob;
    const mx: Awaited<ReturnType<typeof startServer>>[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        mx.push(
          await startServer(["--lmtp", `127.0.0.1:${proxyPort}`, "--no-tls"], {
            useTestCert: false,
          }),
        );
      }
      // Each MX host takes mail for both users, as equal-preference MX records spread it.
      for (const [i, server] of mx.entries()) {
        assertMatch(await send(server.port, "alice@example.com", `for alice via mx${i}`), /^250 /);
        assertMatch(await send(server.port, "bob@example.com", `for bob via mx${i}`), /^250 /);
      }
      // An unknown user is refused at RCPT by the proxy's passdb, through both hops.
      assertMatch(await send(mx[0].port, "nobody@example.com", "lost"), /^5\d\d /);
      const subjects = async (port: number, user: string) =>
        ((await imapMessages(port, user, hostA)).INBOX ?? []).map((m) =>
          /^Subject: ([^\r\n]*)/m.exec(m)?.[1]
        ).sort();
      assertEquals(await subjects(imapA, "alice"), ["for alice via mx0", "for alice via mx1"]);
      const bob = ((await imapMessages(imapB, "bob", hostB)).INBOX ?? []).map((m) =>
        /^Subject: ([^\r\n]*)/m.exec(m)?.[1]
      ).sort();
      assertEquals(bob, ["for bob via mx0", "for bob via mx1"]);
    } finally {
      for (const server of mx) await server.stop();
      await cluster.stop();
    }
  },
});
