import PostalMime from "postal-mime";
import { headerBlock, inspectMessage, MessagePrefix } from "../src/pipeline/inspect.ts";
import { syncDirectoryShared } from "../src/maildir/maildir.ts";
import { assert, assertEquals } from "./_assert.ts";

const encode = (text: string) => new TextEncoder().encode(text);

Deno.test("inspectMessage() reads the summary of a plain message from its header", async () => {
  const raw = encode(
    `Message-ID: <a@b>\nSubject: =?UTF-8?Q?caf=C3=A9?=\nFrom: Bob <bob@b.test>\n\n${
      "text\n".repeat(20_000)
    }`,
  );
  assertEquals(await inspectMessage(raw, false), {
    messageId: "<a@b>",
    subject: "café",
    from: "bob@b.test",
    attachments: 0,
    truncated: false,
  });
});

Deno.test("inspectMessage() parses multipart messages whole and counts their attachments", async () => {
  const raw = encode(
    'Subject: files\nContent-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nhi\n' +
      '--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename="a.pdf"\n' +
      "Content-Transfer-Encoding: base64\n\nJVBERi0=\n--b\nContent-Type: image/png; name=x.png\n" +
      "Content-Transfer-Encoding: base64\n\niVBORw==\n--b--\n",
  );
  const summary = await inspectMessage(raw, false);
  assertEquals(summary.attachments, 2);
  assertEquals(summary.subject, "files");
});

Deno.test("inspectMessage() counts a single-part attachment from the header alone", async () => {
  const raw = encode(
    'Subject: one\nContent-Type: application/zip\nContent-Disposition: attachment; filename="z.zip"\n\nUEsDBA==\n',
  );
  assertEquals((await inspectMessage(raw, false)).attachments, 1);
});

Deno.test("inspectMessage() summarises single-part headers as postal-mime does", async () => {
  const headers = [
    "Subject: =?UTF-8?Q?caf=C3=A9?=\n =?UTF-8?B?IGJhcg==?=\nFrom: =?UTF-8?Q?B=C3=B6b?= <bob@b.test>\n",
    "Message-ID:\n <folded@b.test>\nFrom: undisclosed:;\nContent-Type: TEXT/HTML; charset=utf-8\n",
    "From: a@b.test, c@d.test\nContent-Type: text/calendar; method=REQUEST\n",
    "Content-Type: application/pdf\nContent-Disposition: inline\n",
    "Content-Type: message/rfc822\n",
    "Content-Type: text/plain\nContent-Disposition: attachment; filename=a.txt\n",
    "Subject: plain ascii\nX-Other: 1\nContent-Type:\n",
  ];
  for (const header of headers) {
    const raw = encode(`${header}\nbody\n`);
    const email = await PostalMime.parse(raw);
    const summary = await inspectMessage(raw, false);
    assertEquals(summary, {
      messageId: email.messageId,
      subject: email.subject,
      from: email.from && "address" in email.from ? email.from.address : undefined,
      attachments: email.attachments.length,
      truncated: false,
    }, header);
  }
});

Deno.test("inspectMessage() never throws, whatever the input", async () => {
  const summary = await inspectMessage(
    Uint8Array.from({ length: 4096 }, (_, i) => (i * 7919) % 256),
    true,
  );
  assertEquals(summary.truncated, true);
});

Deno.test("headerBlock() ends at the first empty line", () => {
  assertEquals(
    new TextDecoder().decode(headerBlock(encode("A: 1\nB: 2\n\nbody\n\nmore"))),
    "A: 1\nB: 2\n\n",
  );
});

Deno.test("MessagePrefix keeps at most its limit and says it truncated", () => {
  const prefix = new MessagePrefix(10);
  prefix.add(encode("12345"));
  prefix.add(encode("67890abc"));
  assertEquals(new TextDecoder().decode(prefix.bytes()), "1234567890");
  assert(prefix.truncated);
});

Deno.test("MessagePrefix keeps only the header of a message that is not multipart", () => {
  const text = new MessagePrefix();
  // The empty line falls across two chunks.
  text.add(encode("Subject: hi\nContent-Type: text/plain\n"));
  text.add(encode("\nbody line\n"));
  text.add(encode("x".repeat(100_000)));
  assertEquals(new TextDecoder().decode(text.bytes()), "Subject: hi\nContent-Type: text/plain\n\n");
  assert(!text.truncated);

  const mixed = new MessagePrefix();
  mixed.add(encode('Content-Type: multipart/mixed; boundary="b"\n\n--b\n'));
  mixed.add(encode("part\n--b--\n"));
  assertEquals(
    new TextDecoder().decode(mixed.bytes()),
    'Content-Type: multipart/mixed; boundary="b"\n\n--b\npart\n--b--\n',
  );
});

Deno.test("syncDirectoryShared() starts syncs at once up to its limit, then shares one", async () => {
  const dir = await Deno.makeTempDir();
  const calls = Array.from({ length: 8 }, () => syncDirectoryShared(dir));
  // The first four start their own syncs; the rest wait for one shared sync.
  assertEquals(new Set(calls.slice(0, 4)).size, 4);
  assertEquals(new Set(calls.slice(4)).size, 1);
  assert(!calls.slice(0, 4).includes(calls[4]));
  await Promise.all(calls);
  await Deno.remove(dir);
});
