/**
 * The product promise end to end: a message sent over SMTP is read back over
 * IMAP by a real Dovecot serving the same Maildir.
 */

import { type Dovecot, IMAP_LOGIN, startDovecot } from "./_dovecot.ts";
import { run, startServer, TestClient } from "./_server.ts";
import { assert, assertEquals, assertStringIncludes } from "./_assert.ts";

/** Letterbox delivering into a fresh Maildir inside a folder Dovecot's set-up will use too. */
async function startLetterboxForDovecot() {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-dovecot-" });
  const maildir = `${dir}/Maildir`;
  await Deno.mkdir(maildir);
  const server = await startServer(["--maildir", maildir, "--no-tls"], {
    maildir: dir,
    useTestCert: false,
  });
  return { dir, maildir, server };
}

const IMAP_FETCH = `
import imaplib, sys, email, time
from email.header import decode_header, make_header
${IMAP_LOGIN}count = int(data[0])
typ, data = imap.fetch(str(count), "(RFC822)")
message = email.message_from_bytes(data[0][1])
print(count)
print(str(make_header(decode_header(message["Subject"]))))
print(message.get_payload(decode=True).decode("utf-8").strip())
imap.logout()
`;

Deno.test("a message sent over SMTP is read back over IMAP by Dovecot", async () => {
  const { dir, maildir, server } = await startLetterboxForDovecot();
  let dovecot: Dovecot | undefined;
  try {
    const client = await TestClient.connect(server.port);
    try {
      await client.reply();
      await client.command("EHLO client.test");
      await client.command("MAIL FROM:<bob@sender.test>");
      await client.command("RCPT TO:<test@example.com>");
      await client.command("DATA");
      await client.send(
        "From: bob@sender.test\r\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_from_Letterbox?=\r\n" +
          "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nHällo over IMAP.\r\n.\r\n",
      );
      assertEquals((await client.reply()).code, 250);
      await client.command("QUIT");
    } finally {
      client.close();
    }
    dovecot = await startDovecot(dir, maildir);
    const imap = await run("python3", ["-c", IMAP_FETCH, String(dovecot.port)]);
    const log = await Deno.readTextFile(`${dir}/dovecot.log`).catch(() => "");
    assertEquals(imap.stderr, "", log);
    assertEquals(imap.stdout.split("\n").slice(0, 3), [
      "1",
      "Grüße from Letterbox",
      "Hällo over IMAP.",
    ]);
  } finally {
    await dovecot?.stop();
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

const IMAP_SIZES = `
import imaplib, sys, time, json
${IMAP_LOGIN}results = []
for n in range(1, int(data[0]) + 1):
    typ, data = imap.fetch(str(n), "(RFC822.SIZE BODY.PEEK[] BODY.PEEK[HEADER.FIELDS (X-AFTER)])")
    size = int(data[0][0].split(b"RFC822.SIZE ")[1].split(b" ")[0])
    body = data[0][1]
    after = data[1][1].decode().strip()
    results.append({"size": size, "length": len(body), "after": after})
print(json.dumps(results))
imap.logout()
`;

Deno.test("bare CR and bare LF in header and body: Dovecot's sizes match the file name and the header ends where it did on the wire", async () => {
  const { dir, maildir, server } = await startLetterboxForDovecot();
  // Each has a field after the odd line: it must still be in the header.
  const messages = [
    "Subject: cr-only line\r\n\r\r\nX-After: yes\r\n\r\nbody\r\n",
    "Subject: cr before crlf\r\r\nX-After: yes\r\n\r\nline\r\r\nmid\rline\r\n",
    "Subject: bare lf\nX-After: yes\r\n\r\nbare\nlf\n\r\n",
    "Subject: stuffed cr\r\n.\r\r\nX-After: yes\r\n\r\n.\r\r\n\r\r\r\n",
  ];
  let dovecot: Dovecot | undefined;
  try {
    const client = await TestClient.connect(server.port);
    try {
      await client.reply();
      await client.command("EHLO client.test");
      for (const message of messages) {
        await client.command("MAIL FROM:<bob@sender.test>");
        await client.command("RCPT TO:<test@example.com>");
        await client.command("DATA");
        await client.send(`${message}.\r\n`);
        assertEquals((await client.reply()).code, 250);
      }
      await client.command("QUIT");
    } finally {
      client.close();
    }
    // What we stored: no CR before an LF, and W= is the size plus the LFs.
    for (const entry of Deno.readDirSync(`${maildir}/new`)) {
      const bytes = Deno.readFileSync(`${maildir}/new/${entry.name}`);
      assert(!bytes.some((byte, i) => byte === 0x0d && bytes[i + 1] === 0x0a), entry.name);
      const lines = bytes.filter((byte) => byte === 0x0a).length;
      assertStringIncludes(entry.name, `,S=${bytes.length},W=${bytes.length + lines}`);
    }
    dovecot = await startDovecot(dir, maildir);
    const imap = await run("python3", ["-c", IMAP_SIZES, String(dovecot.port)]);
    const log = await Deno.readTextFile(`${dir}/dovecot.log`).catch(() => "");
    assertEquals(imap.stderr, "", log);
    const results = JSON.parse(imap.stdout) as { size: number; length: number; after: string }[];
    assertEquals(results.length, messages.length);
    for (const result of results) {
      assertEquals(result.size, result.length, JSON.stringify(result));
      assertEquals(result.after, "X-After: yes");
    }
    assert(!/wrong W value|Broken virtual size|Broken physical size/.test(log), log);
  } finally {
    await dovecot?.stop();
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

const IMAP_COUNT = `
import imaplib, sys, time
${IMAP_LOGIN}
print(int(data[0]))
for n in range(1, int(data[0]) + 1):
    typ, fetched = imap.fetch(str(n), "(BODY[HEADER.FIELDS (SUBJECT)])")
    print(fetched[0][1].decode().strip())
imap.logout()
`;

Deno.test({
  name:
    "run as root, Letterbox gives its files to the Maildir root's owner, so Dovecot reads every message",
  // The README's quick start as root: the second message used to be root's, mode 0600.
  ignore: Deno.uid() !== 0,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "letterbox-dovecot-" });
    const maildir = `${dir}/Maildir`;
    await Deno.mkdir(maildir);
    assertEquals((await run("chown", ["nobody:nogroup", maildir])).code, 0);
    const server = await startServer(["--maildir", maildir, "--no-tls"], {
      maildir: dir,
      useTestCert: false,
    });
    let dovecot: Dovecot | undefined;
    const deliver = async (subject: string) => {
      const client = await TestClient.connect(server.port);
      try {
        await client.reply();
        await client.startMessage("bob@sender.test", ["test@example.com"]);
        await client.send(`Subject: ${subject}\r\n\r\nhi\r\n.\r\n`);
        assertEquals((await client.reply()).code, 250);
      } finally {
        client.close();
      }
    };
    try {
      await deliver("first");
      dovecot = await startDovecot(dir, maildir);
      await deliver("second"); // after Dovecot started: no chown in between
      const nobody = Number((await run("id", ["-u", "nobody"])).stdout.trim());
      for (const entry of Deno.readDirSync(`${maildir}/new`)) {
        assertEquals(Deno.statSync(`${maildir}/new/${entry.name}`).uid, nobody, entry.name);
      }
      const imap = await run("python3", ["-c", IMAP_COUNT, String(dovecot.port)]);
      const log = await Deno.readTextFile(`${dir}/dovecot.log`).catch(() => "");
      assertEquals(imap.stderr, "", log);
      assertEquals(imap.stdout.trim().split("\n"), ["2", "Subject: first", "Subject: second"]);
    } finally {
      await dovecot?.stop();
      await server.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
