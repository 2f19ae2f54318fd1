/**
 * CHUNKING and BINARYMIME (RFC 3030) over real sockets: every rule of the
 * issue, pipelined chunks in one write, and the smuggling and STARTTLS
 * injection attempts with BDAT in the mix.
 */

import { SMUGGLING_SEQUENCES } from "./_smuggling.ts";
import { newFiles, readMessages, startServer, TestClient } from "./_server.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./_assert.ts";

async function greeted(port: number): Promise<TestClient> {
  const client = await TestClient.connect(port);
  assertEquals((await client.reply()).code, 220);
  return client;
}

/** The stored message without our three trace lines (Return-Path, Delivered-To, Received). */
function content(message: string): string {
  return message.slice(message.indexOf("; ", message.indexOf("\nReceived: ")) + 1).replace(
    /^[^\n]*\n/,
    "",
  );
}

Deno.test("EHLO offers CHUNKING and BINARYMIME; pipelined BDAT chunks in one write make one message", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    const ehlo = await client.command("EHLO client.test");
    assertStringIncludes(ehlo.text, "250-CHUNKING\r\n");
    assertStringIncludes(ehlo.text, "250-BINARYMIME\r\n");
    const body1 = "Subject: chunks\r\n\r\nfirst ";
    const body2 = "part\r\n.\r\nMAIL FROM:<smuggled@x>\r\n";
    await client.send(
      "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n" +
        `BDAT ${body1.length}\r\n${body1}BDAT ${body2.length}\r\n${body2}BDAT 0 LAST\r\n`,
    );
    const replies = [];
    for (let i = 0; i < 5; i++) replies.push((await client.reply()).text);
    assertEquals(replies.slice(0, 4), [
      "250 2.1.0 Ok\r\n",
      "250 2.1.5 Ok\r\n",
      `250 2.0.0 ${body1.length} octets received\r\n`,
      `250 2.0.0 ${body2.length} octets received\r\n`,
    ]);
    assertMatch(replies[4], /^250 2\.0\.0 Ok: queued as \w+\r\n$/);
    const [message] = await readMessages(server.maildir);
    // The dot line and the MAIL inside a chunk are content, never commands.
    assertEquals(content(message), "Subject: chunks\n\nfirst part\n.\nMAIL FROM:<smuggled@x>\n");
    const delivered = server.logs.find((l) => String(l.message).startsWith("Delivered"));
    assertEquals((delivered?.properties as Record<string, unknown>).transfer, "BDAT");
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("BDAT 0 LAST, many one-octet chunks, and one large chunk", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.startMessage("a@b.test", ["x@y.test"], { dataCommand: false });
    const text = "Subject: small\r\n\r\nbyte by byte\r\n";
    for (const byte of text) await client.send(`BDAT 1\r\n${byte}`);
    for (let i = 0; i < text.length; i++) assertEquals((await client.reply()).code, 250);
    assertMatch((await client.command("BDAT 0 LAST")).text, /queued as/);
    const big = "Subject: big\r\n\r\n" + ("y".repeat(998) + "\r\n").repeat(3000);
    await client.command("MAIL FROM:<a@b.test>");
    await client.command("RCPT TO:<x@y.test>");
    await client.send(`BDAT ${big.length} LAST\r\n${big}`);
    assertMatch((await client.reply(20_000)).text, /queued as/);
    const messages = (await readMessages(server.maildir)).map(content).sort();
    assertEquals(messages, [big.replaceAll("\r\n", "\n"), text.replaceAll("\r\n", "\n")].sort());
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("BDAT before MAIL or RCPT is refused after its octets are read, and the session stays in step", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.command("EHLO client.test");
    // The octets look like commands; they must be dropped, not run.
    await client.send("BDAT 12\r\nRSET\r\nQUIT\r\nNOOP\r\n");
    assertEquals((await client.reply()).text, "503 5.5.1 Error: need MAIL command\r\n");
    assertEquals((await client.reply()).text, "250 2.0.0 Ok\r\n", "the NOOP after the chunk");
    await client.command("MAIL FROM:<a@b.test>");
    await client.send("BDAT 4 LAST\r\nabcd");
    assertEquals((await client.reply()).text, "503 5.5.1 Error: need RCPT command\r\n");
    assertEquals((await client.command("BDAT x")).text, "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
    assertEquals(await newFiles(server.maildir), []);
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("DATA after BDAT and DATA with BODY=BINARYMIME get 503; RSET drops a partial message", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.command("EHLO client.test");
    await client.command("MAIL FROM:<a@b.test>");
    await client.command("RCPT TO:<x@y.test>");
    await client.send("BDAT 6\r\npart 1");
    assertEquals((await client.reply()).code, 250);
    assertEquals(
      (await client.command("DATA")).text,
      "503 5.5.1 Error: DATA cannot follow BDAT\r\n",
    );
    assertEquals((await client.command("RSET")).code, 250);
    await client.send("BDAT 3 LAST\r\nxyz");
    assertEquals((await client.reply()).code, 503, "no transaction after RSET");
    await client.command("MAIL FROM:<a@b.test> BODY=BINARYMIME");
    await client.command("RCPT TO:<x@y.test>");
    assertEquals(
      (await client.command("DATA")).text,
      "503 5.5.1 Error: BODY=BINARYMIME requires BDAT\r\n",
    );
    assertEquals(await newFiles(server.maildir), []);
    assertEquals([...Deno.readDirSync(`${server.maildir}/tmp`)], [], "the partial file is gone");
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("a BINARYMIME message is stored byte for byte, and W= counts only LFs without a CR", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.command("EHLO client.test");
    await client.command("MAIL FROM:<a@b.test> BODY=BINARYMIME");
    await client.command("RCPT TO:<x@y.test>");
    const body = new Uint8Array([
      ...new TextEncoder().encode(
        "Subject: binary\r\nContent-Type: application/octet-stream\r\n\r\n",
      ),
      0x00,
      0x0d,
      0x0a,
      0xff,
      0x0a,
      0x2e,
      0x0d,
      0x0a,
      0x0d,
    ]);
    await client.send(new TextEncoder().encode(`BDAT ${body.length} LAST\r\n`));
    await client.send(body);
    assertMatch((await client.reply()).text, /queued as/);
    const [name] = await newFiles(server.maildir);
    const stored = Deno.readFileSync(`${server.maildir}/new/${name}`);
    const tail = stored.subarray(stored.length - body.length);
    assertEquals([...tail], [...body], "byte-exact, CRLF and all");
    let bareLf = 0;
    stored.forEach((byte, i) => {
      if (byte === 0x0a && stored[i - 1] !== 0x0d) bareLf++;
    });
    assertStringIncludes(name, `,S=${stored.length},W=${stored.length + bareLf}`);
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("past --max-message-size across chunks, 552 comes after the last chunk's octets", async () => {
  const server = await startServer(["--max-message-size", "2K"]);
  const client = await greeted(server.port);
  try {
    await client.startMessage("a@b.test", ["x@y.test"], { dataCommand: false });
    const chunk = "z".repeat(1500);
    await client.send(`BDAT 1500\r\n${chunk}`);
    assertEquals((await client.reply()).code, 250);
    await client.send(`BDAT 1500 LAST\r\n${chunk}`);
    assertEquals(
      (await client.reply()).text,
      "552 5.3.4 Error: message exceeds fixed maximum message size\r\n",
    );
    assertEquals((await client.command("NOOP")).code, 250, "in step after the refusal");
    assertEquals(await newFiles(server.maildir), []);
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("the connection closing in the middle of a chunk stores nothing", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.startMessage("a@b.test", ["x@y.test"], { dataCommand: false });
    await client.send("BDAT 100 LAST\r\nSubject: cut\r\n\r\nhalf");
    await new Promise((resolve) => setTimeout(resolve, 100));
  } finally {
    client.close();
  }
  for (
    let i = 0;
    i < 50 && !server.logs.some((l) => String(l.message).startsWith("Lost connection in BDAT"));
    i++
  ) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  try {
    assert(server.logs.some((l) => String(l.message).startsWith("Lost connection in BDAT")));
    assertEquals(await newFiles(server.maildir), []);
    assertEquals([...Deno.readDirSync(`${server.maildir}/tmp`)], []);
  } finally {
    await server.stop();
  }
});

Deno.test("bytes sent after STARTTLS are dropped with BDAT too, and BDAT works inside TLS", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.command("EHLO client.test");
    // A chunk smuggled behind STARTTLS in the same packet must never be read as plaintext.
    await client.send(
      "STARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<x@y.test>\r\nBDAT 4 LAST\r\nevil",
    );
    assertEquals((await client.reply()).code, 220);
    await client.startTls();
    await client.command("EHLO client.test");
    await client.command("MAIL FROM:<a@b.test>");
    await client.command("RCPT TO:<x@y.test>");
    await client.send("BDAT 22 LAST\r\nSubject: tls\r\n\r\nsecure\r\n");
    assertMatch((await client.reply()).text, /queued as/);
    const messages = await readMessages(server.maildir);
    assertEquals(messages.length, 1);
    assert(!messages[0].includes("evil"));
    assertStringIncludes(messages[0], "with ESMTPS");
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("every smuggling sequence inside a BDAT chunk is content: one message, holding the forged text", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.command("EHLO client.test");
    for (const marker of SMUGGLING_SEQUENCES) {
      await client.command("MAIL FROM:<a@b.test>");
      await client.command("RCPT TO:<x@y.test>");
      const chunk =
        `Subject: s\r\n\r\nhi${marker}MAIL FROM:<forged@x>\r\nRCPT TO:<y@z>\r\nDATA\r\n`;
      await client.send(`BDAT ${new TextEncoder().encode(chunk).length} LAST\r\n${chunk}`);
      assertMatch((await client.reply()).text, /queued as/, JSON.stringify(marker));
    }
    assertEquals((await client.command("NOOP")).code, 250, "no forged command ran");
    const messages = await readMessages(server.maildir);
    assertEquals(messages.length, SMUGGLING_SEQUENCES.length);
    assert(messages.every((m) => m.includes("MAIL FROM:<forged@x>")));
  } finally {
    client.close();
    await server.stop();
  }
});
