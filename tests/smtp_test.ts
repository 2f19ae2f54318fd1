/**
 * End-to-end protocol tests: the real program on a loopback port, a raw
 * socket client, and the files it leaves in the Maildir.
 */

import { newFiles, readMessages, spawnServer, startServer, TestClient } from "./_server.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./_assert.ts";

async function greeted(port: number): Promise<TestClient> {
  const client = await TestClient.connect(port);
  const greeting = await client.reply();
  assertEquals(greeting.text, "220 mx.test ESMTP Letterbox\r\n");
  return client;
}

Deno.test("a pipelined transaction gets its replies in one batch, in order", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.command("EHLO client.test");
    await client.send(
      "MAIL FROM:<bob@sender.test>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n",
    );
    assertEquals((await client.reply()).text, "250 2.1.0 Ok\r\n");
    assertEquals((await client.reply()).text, "250 2.1.5 Ok\r\n");
    assertEquals((await client.reply()).text, "250 2.1.5 Ok\r\n");
    assertEquals((await client.reply()).code, 354);
    await client.send("Subject: pipelined\r\n\r\nhello\r\n.\r\nQUIT\r\n");
    assertMatch((await client.reply()).text, /^250 2\.0\.0 Ok: queued as [0-9A-Z]+\r\n$/);
    assertEquals((await client.reply()).text, "221 2.0.0 Bye\r\n");
    assertEquals(await client.readToClose(), "");
    const [message] = await readMessages(server.maildir);
    assertStringIncludes(
      message,
      "Delivered-To: alice@example.com\nDelivered-To: carol@example.com\n",
    );
    assert(message.endsWith("Subject: pipelined\n\nhello\n"));
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("dot-stuffed lines, 8-bit bytes and NUL round-trip byte-exact", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.startMessage("bob@sender.test", ["alice@example.com"], {
      mailParameters: "BODY=8BITMIME",
    });
    const body = new Uint8Array([
      ...new TextEncoder().encode("Subject: dots\r\n\r\n..one\r\n...\r\n.\x00x\r\nnaïve \xff"),
      0xff,
      0xfe,
      0x0d,
      0x0a,
      ...new TextEncoder().encode("bare\rcr and bare\nlf\r\n.\r\n"),
    ]);
    await client.send(body);
    assertEquals((await client.reply()).code, 250);
    const [name] = await newFiles(server.maildir);
    const stored = await Deno.readFile(`${server.maildir}/new/${name}`);
    const expected = new Uint8Array([
      ...new TextEncoder().encode("Subject: dots\n\n.one\n..\n\x00x\nnaïve \xff"),
      0xff,
      0xfe,
      0x0a,
      ...new TextEncoder().encode("bare\rcr and bare\nlf\n"),
    ]);
    const content = stored.subarray(stored.length - expected.length);
    assertEquals([...content], [...expected]);
    // The name's sizes: S= the file, W= with every LF (bare ones too) as CRLF.
    const lfs = stored.filter((byte) => byte === 0x0a).length;
    assert(name.endsWith(`,S=${stored.length},W=${stored.length + lfs}`), name);
    assertStringIncludes(
      new TextDecoder().decode(stored.subarray(0, stored.length - expected.length)),
      "with ESMTP id",
    );
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("SMTPUTF8 addresses and UTF-8 bodies are delivered and traced as UTF8SMTP", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.command("EHLO client.test");
    assertEquals((await client.command("MAIL FROM:<josé@exemple.fr>")).code, 553);
    assertEquals((await client.command("MAIL FROM:<josé@exemple.fr> SMTPUTF8")).code, 250);
    assertEquals((await client.command("RCPT TO:<用户@例子.广告>")).code, 250);
    await client.command("DATA");
    await client.send("Subject: =?UTF-8?B?w6nDqMOg?=\r\n\r\nПривет, 世界\r\n.\r\n");
    assertEquals((await client.reply()).code, 250);
    const [message] = await readMessages(server.maildir);
    assertStringIncludes(message, "Return-Path: <josé@exemple.fr>\nDelivered-To: 用户@例子.广告\n");
    assertStringIncludes(message, "with UTF8SMTP id");
    assert(message.endsWith("Привет, 世界\n"));
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("recipients go to their own Maildirs under a template, one copy each", async () => {
  const root = await Deno.makeTempDir({ prefix: "letterbox-test-" });
  const server = await startServer([
    "--maildir",
    `${root}/{domain}/{user}`,
    "--domain",
    "one.test",
    "--domain",
    "two.test",
  ], {
    maildir: root,
  });
  const client = await greeted(server.port);
  try {
    await client.command("EHLO client.test");
    await client.command("MAIL FROM:<>");
    assertEquals((await client.command("RCPT TO:<alice@one.test>")).code, 250);
    assertEquals((await client.command("RCPT TO:<Alice+news@ONE.test>")).code, 250);
    assertEquals((await client.command("RCPT TO:<bob@two.test>")).code, 250);
    assertEquals((await client.command("RCPT TO:<postmaster>")).code, 250);
    assertEquals(
      (await client.command("RCPT TO:<eve@elsewhere.test>")).text,
      "550 5.7.1 Relay access denied\r\n",
    );
    assertEquals(
      (await client.command('RCPT TO:<"../../x"@one.test>')).text,
      "550 5.1.3 Recipient address cannot be delivered here\r\n",
    );
    await client.command("DATA");
    await client.send("Subject: many\r\n\r\nhi\r\n.\r\n");
    assertEquals((await client.reply()).code, 250);
    assertEquals((await newFiles(`${root}/one.test/alice`)).length, 1);
    assertEquals((await newFiles(`${root}/two.test/bob`)).length, 1);
    assertEquals((await newFiles(`${root}/one.test/postmaster`)).length, 1);
    const [alice] = await readMessages(`${root}/one.test/alice`);
    assertStringIncludes(
      alice,
      "Delivered-To: alice@one.test\nDelivered-To: Alice+news@ONE.test\n",
    );
    const [bob] = await readMessages(`${root}/two.test/bob`);
    assertStringIncludes(bob, "for <bob@two.test>;");
  } finally {
    client.close();
    await server.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a message over the size limit is read to its end, refused with 552 5.3.4, and not stored", async () => {
  const server = await startServer(["--max-message-size", "2K"]);
  const client = await greeted(server.port);
  try {
    const ehlo = await client.command("EHLO client.test");
    assertStringIncludes(ehlo.text, "250-SIZE 2048\r\n");
    assertEquals(
      (await client.command("MAIL FROM:<a@b.test> SIZE=4096")).text,
      "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
    );
    await client.command("MAIL FROM:<a@b.test>");
    await client.command("RCPT TO:<x@y.test>");
    await client.command("DATA");
    await client.send(("x".repeat(99) + "\r\n").repeat(100) + ".\r\n");
    assertEquals(
      (await client.reply()).text,
      "552 5.3.4 Error: message exceeds fixed maximum message size\r\n",
    );
    assertEquals((await client.command("NOOP")).code, 250);
    assertEquals(await newFiles(server.maildir), []);
    const tmp = [];
    for await (const entry of Deno.readDir(`${server.maildir}/tmp`)) tmp.push(entry.name);
    assertEquals(tmp, []);
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("bytes sent after STARTTLS in the same packet are never answered", async () => {
  for (
    const injected of [
      "EHLO evil\r\n",
      "MAIL FROM:<a@b.test>\r\n",
      "NOOP\r\nRCPT TO:<x@y.test>\r\n",
    ]
  ) {
    const server = await startServer();
    const client = await greeted(server.port);
    try {
      await client.command("EHLO client.test");
      await client.send(`STARTTLS\r\n${injected}`);
      assertEquals((await client.reply()).text, "220 2.0.0 Ready to start TLS\r\n");
      assertEquals(client.unread, "");
      await client.startTls();
      // The first reply after the handshake must be to our own command.
      assertEquals(
        (await client.command("MAIL FROM:<a@b.test>")).text,
        "503 5.5.1 Error: send HELO/EHLO first\r\n",
      );
      const ehlo = await client.command("EHLO client.test");
      assert(!ehlo.text.includes("STARTTLS"));
      assertEquals(
        (await client.command("STARTTLS")).text,
        "503 5.5.1 Error: TLS already active\r\n",
      );
    } finally {
      client.close();
      await server.stop();
    }
  }
});

Deno.test("an implicit-TLS listener greets after the handshake and traces ESMTPS", async () => {
  const server = await startServer([], { tlsListener: true });
  const client = await TestClient.connect(server.tlsPort!, true);
  try {
    assertEquals((await client.reply()).code, 220);
    const ehlo = await client.command("EHLO client.test");
    assert(!ehlo.text.includes("STARTTLS"));
    await client.command("MAIL FROM:<a@b.test>");
    await client.command("RCPT TO:<x@y.test>");
    await client.command("DATA");
    await client.send("Subject: tls\r\n\r\nsecret\r\n.\r\n");
    assertEquals((await client.reply()).code, 250);
    const [message] = await readMessages(server.maildir);
    assertMatch(
      message,
      /\(using TLSv1\.[23] with cipher \S+\)\n\tby mx\.test \(Letterbox\) with ESMTPS id/,
    );
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("commands ending in bare LF work, but a bare-LF dot never ends DATA", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    assertEquals((await client.command("HELO nc.test\n".trimEnd())).text, "250 mx.test\r\n");
    await client.send("MAIL FROM:<a@b.test>\nRCPT TO:<x@y.test>\nDATA\n");
    await client.reply();
    await client.reply();
    assertEquals((await client.reply()).code, 354);
    await client.send(
      "Subject: smuggle\r\n\r\nfirst\n.\nMAIL FROM:<forged@evil.test>\nRCPT TO:<x@y.test>\nDATA\nforged\n.\n",
    );
    await client.send("\r\n.\r\n");
    assertEquals((await client.reply()).code, 250);
    assertEquals((await client.command("NOOP")).code, 250);
    const messages = await readMessages(server.maildir);
    assertEquals(messages.length, 1);
    assertStringIncludes(messages[0], "MAIL FROM:<forged@evil.test>");
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("an over-long command line gets 500 5.5.6 and the session goes on", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    assertEquals(
      (await client.command("EHLO " + "a".repeat(600))).text,
      "500 5.5.6 Error: line too long\r\n",
    );
    assertEquals((await client.command("NOOP")).code, 250);
    assertEquals(
      (await client.command("EHLO bad\x01name")).text,
      "500 5.5.2 Error: command contains invalid bytes\r\n",
    );
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("ten bad commands end the session with 421 4.7.0", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    for (let i = 0; i < 9; i++) assertEquals((await client.command("BOGUS")).code, 500);
    assertEquals(
      (await client.command("BOGUS")).text,
      "421 4.7.0 Error: too many errors, closing connection\r\n",
    );
    assertEquals(await client.readToClose(), "");
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("an idle client is told 421 4.4.2 when the command timeout passes", async () => {
  const server = await startServer(["--command-timeout", "1"]);
  const client = await greeted(server.port);
  try {
    assertEquals(
      (await client.reply(5_000)).text,
      "421 4.4.2 Error: timeout exceeded, closing connection\r\n",
    );
    assertEquals(await client.readToClose(), "");
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("SIGTERM lets a message in DATA finish, tells idle clients 421 4.3.2, and exits 0", async () => {
  const server = await spawnServer();
  const idle = await greeted(server.port);
  const busy = await greeted(server.port);
  try {
    await busy.startMessage("a@b.test", ["x@y.test"]);
    await busy.send("Subject: in flight\r\n\r\nfirst half\r\n");
    server.process.kill("SIGTERM");
    assertEquals(
      (await idle.reply()).text,
      "421 4.3.2 Service shutting down, closing connection\r\n",
    );
    await busy.send("second half\r\n.\r\n");
    assertMatch((await busy.reply()).text, /^250 2\.0\.0 Ok: queued as /);
    assertEquals(
      (await busy.reply()).text,
      "421 4.3.2 Service shutting down, closing connection\r\n",
    );
    const [message] = await readMessages(server.maildir);
    assert(message.endsWith("first half\nsecond half\n"));
  } finally {
    idle.close();
    busy.close();
    assertEquals(await server.stop(), 0);
  }
});

Deno.test("every connection and delivery is logged as JSON with a session id", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.startMessage("a@b.test", ["x@y.test"]);
    await client.send(
      "Message-ID: <m1@b.test>\r\nSubject: logged\r\nFrom: A <a@b.test>\r\n\r\nhi\r\n.\r\n",
    );
    await client.reply();
    await client.command("QUIT");
    await client.readToClose();
  } finally {
    client.close();
    await server.stop();
  }
  // Every line on stderr is one JSON object (the helper keeps unparsable lines as bare messages).
  for (const record of server.logs) {
    assertEquals(typeof record["@timestamp"], "string", JSON.stringify(record));
  }
  const delivered = server.logs.find((l) => String(l.message).startsWith("Delivered"));
  assert(delivered, "a Delivered line");
  const properties = delivered.properties as Record<string, unknown>;
  assertEquals(properties.messageId, "<m1@b.test>");
  assertEquals(properties.subject, "logged");
  assertEquals(properties.from, "a@b.test");
  // The delivery line stands alone: recipients as a list, the client, its HELO, the folders.
  assertEquals(properties.recipients, ["x@y.test"]);
  assertEquals(properties.client, "127.0.0.1");
  assertEquals(properties.helo, "client.test");
  assertEquals(properties.folders, [server.maildir]);
  const session = properties.session;
  assertMatch(String(session), /^[0-9a-f]{10}$/);
  const sameSession = server.logs.filter((l) =>
    (l.properties as Record<string, unknown>)?.session === session
  );
  assert(sameSession.some((l) => String(l.message).startsWith("Connection from")));
  assert(sameSession.some((l) => String(l.message).startsWith("Disconnected")));
});

Deno.test("a client on ::1 is traced as [IPv6:::1] in Received", async () => {
  const server = await startServer(["--listen", "[::1]:0", "--no-tls"], { useTestCert: false });
  const v6 = server.listening.find((address) => address.hostname === "::1");
  assert(v6);
  const conn = await Deno.connect({ hostname: "::1", port: v6.port });
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(4096);
  const reply = async () => decoder.decode(buffer.subarray(0, (await conn.read(buffer)) ?? 0));
  const say = async (text: string) => {
    await conn.write(new TextEncoder().encode(text));
    return await reply();
  };
  try {
    await reply();
    await say("EHLO v6.example\r\n");
    await say("MAIL FROM:<a@b.test>\r\n");
    await say("RCPT TO:<x@y.test>\r\n");
    await say("DATA\r\n");
    assertMatch(await say("Subject: v6\r\n\r\nhi\r\n.\r\n"), /^250 /);
    const [message] = await readMessages(server.maildir);
    assertStringIncludes(message, "Received: from v6.example (unknown [IPv6:::1])\n");
  } finally {
    conn.close();
    await server.stop();
  }
});

Deno.test("an 8-bit EHLO name reaches Received as A-labels in 7-bit mail, and as sent in SMTPUTF8 mail", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    assertEquals((await client.command("EHLO ünïcödé.example")).code, 250);
    await client.startMessage("a@b.test", ["x@y.test"], { ehlo: false });
    await client.send("Subject: seven bit\r\n\r\nhi\r\n.\r\n");
    assertEquals((await client.reply()).code, 250);
    await client.startMessage("a@b.test", ["x@y.test"], {
      ehlo: false,
      mailParameters: "SMTPUTF8",
    });
    await client.send("Subject: utf8\r\n\r\nhi\r\n.\r\n");
    assertEquals((await client.reply()).code, 250);
    const messages = await readMessages(server.maildir);
    const seven = messages.find((m) => m.includes("Subject: seven bit"))!;
    const utf8 = messages.find((m) => m.includes("Subject: utf8"))!;
    assertStringIncludes(seven, "Received: from xn--ncd-dma1a7bzb.example (unknown [127.0.0.1])");
    assert(!/[\u0080-\uffff]/.test(seven), "a 7-bit message stays 7-bit");
    assertStringIncludes(utf8, "Received: from ünïcödé.example (unknown [127.0.0.1])");
  } finally {
    client.close();
    await server.stop();
  }
});
