/**
 * The recipients file: parsing, resolution, and the real program using it,
 * with sub-address folders and SIGHUP reloads.
 */

import { parseRecipients, RecipientsError, resolveRecipient } from "../src/pipeline/recipients.ts";
import { newFiles, readMessages, spawnServer, TestClient, waitForLog } from "./_server.ts";
import { assert, assertEquals, assertStringIncludes, assertThrows } from "./_assert.ts";

/** Connects, greets and opens a transaction from sender@remote.test. */
async function inTransaction(port: number): Promise<TestClient> {
  const client = await TestClient.connect(port);
  await client.reply();
  await client.command("EHLO client.test");
  await client.command("MAIL FROM:<sender@remote.test>");
  return client;
}

const FILE = `# who we take mail for
alice@example.com
bob@example.com            # a mailbox with a comment
sales@example.com: alice@example.com, bob@example.com
team@example.com: sales@example.com, carol@example.org
@example.org
@example.net: alice@example.com
`;

Deno.test("parseRecipients() reads mailboxes, aliases and catch-alls", () => {
  const table = parseRecipients(FILE);
  assertEquals([...table.mailboxes].sort(), ["alice@example.com", "bob@example.com"]);
  assertEquals([...table.domains].sort(), ["example.com", "example.net", "example.org"]);
  assertEquals(resolveRecipient(table, "Sales", "Example.com"), {
    kind: "mailboxes",
    mailboxes: ["alice@example.com", "bob@example.com"],
  });
  assertEquals(resolveRecipient(table, "team", "example.com"), {
    kind: "mailboxes",
    mailboxes: ["alice@example.com", "bob@example.com", "carol@example.org"],
  });
  assertEquals(resolveRecipient(table, "alice+lists", "example.com"), {
    kind: "mailboxes",
    mailboxes: ["alice@example.com"],
  });
  assertEquals(resolveRecipient(table, "anyone", "example.org"), {
    kind: "mailboxes",
    mailboxes: ["anyone@example.org"],
  });
  assertEquals(resolveRecipient(table, "anyone", "example.net"), {
    kind: "mailboxes",
    mailboxes: ["alice@example.com"],
  });
  assertEquals(resolveRecipient(table, "mallory", "example.com"), { kind: "unknown-user" });
  assertEquals(resolveRecipient(table, "alice", "elsewhere.test"), { kind: "unknown-domain" });
});

Deno.test("parseRecipients() names the line of each mistake", () => {
  const message = (text: string) => {
    try {
      parseRecipients(text);
    } catch (error) {
      assert(error instanceof RecipientsError);
      return error.message;
    }
    throw new Error("no error");
  };
  assertEquals(
    message("alice@example.com\nalice@example.com\n"),
    "line 2: alice@example.com is listed twice",
  );
  assertEquals(
    message("\nnot an address\n"),
    'line 2: "not an address" is not an address such as alice@example.com',
  );
  assertEquals(
    message("a@example.com:\n"),
    "line 1: an alias needs one or more addresses after the colon",
  );
  assertEquals(
    message('"../x"@example.com\n'),
    'line 1: "\\"../x\\"@example.com" cannot name a Maildir safely',
  );
  assertThrows(() => parseRecipients("a@x.test: b@x.test\nb@x.test: a@x.test\n"));
});

Deno.test("the recipients file decides RCPT, aliases expand to one copy each, and +tags go to folders", async () => {
  const root = await Deno.makeTempDir({ prefix: "letterbox-test-" });
  await Deno.writeTextFile(`${root}/recipients`, FILE);
  const server = await spawnServer(
    [
      "--maildir",
      `${root}/mail/{domain}/{user}`,
      "--recipients",
      `${root}/recipients`,
      "--subaddress-folders",
    ],
    { maildir: root },
  );
  const client = await inTransaction(server.port);
  try {
    assertEquals(
      (await client.command("RCPT TO:<mallory@example.com>")).text,
      "550 5.1.1 Recipient address rejected: User unknown\r\n",
    );
    assertEquals(
      (await client.command("RCPT TO:<alice@elsewhere.test>")).text,
      "550 5.7.1 Relay access denied\r\n",
    );
    for (const rcpt of ["alice@example.com", "sales@example.com", "Alice+Lists@example.com"]) {
      assertEquals((await client.command(`RCPT TO:<${rcpt}>`)).code, 250, rcpt);
    }
    await client.command("DATA");
    await client.send("Subject: to the team\r\n\r\nhello\r\n.\r\n");
    assertEquals((await client.reply()).code, 250);
    const alice = `${root}/mail/example.com/alice`;
    assertEquals(
      (await newFiles(alice)).length,
      1,
      "alice gets one copy, direct and through sales",
    );
    assertEquals((await newFiles(`${root}/mail/example.com/bob`)).length, 1);
    assertEquals((await newFiles(`${alice}/.Lists`)).length, 1);
    assertEquals(Deno.statSync(`${alice}/.Lists/maildirfolder`).size, 0);
    const [copy] = await readMessages(alice);
    assertStringIncludes(copy, "Delivered-To: alice@example.com\n");
    assert(!copy.includes("Delivered-To: sales"), "Delivered-To names final mailboxes");

    // SIGHUP re-reads the file; a broken file keeps the table in force.
    await Deno.writeTextFile(`${root}/recipients`, FILE + "dave@example.com\n");
    server.process.kill("SIGHUP");
    await waitForLog(server.logs, "Reloaded");
    await client.command("RSET");
    await client.command("MAIL FROM:<sender@remote.test>");
    assertEquals((await client.command("RCPT TO:<dave@example.com>")).code, 250);
    await Deno.writeTextFile(`${root}/recipients`, "this is not an address\n");
    server.process.kill("SIGHUP");
    await waitForLog(server.logs, "Kept the recipients in force");
    assertEquals((await client.command("RCPT TO:<dave@example.com>")).code, 250);
  } finally {
    client.close();
    await server.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a reload between RCPT and DATA cannot lose an accepted message: its route was decided at RCPT", async () => {
  const root = await Deno.makeTempDir({ prefix: "letterbox-test-" });
  await Deno.writeTextFile(
    `${root}/recipients`,
    "alice@example.com\nteam@example.com: alice@example.com, carol@example.com\ncarol@example.com\n",
  );
  const server = await spawnServer(
    ["--maildir", `${root}/mail/{user}`, "--recipients", `${root}/recipients`],
    { maildir: root },
  );
  const client = await inTransaction(server.port);
  try {
    assertEquals((await client.command("RCPT TO:<alice@example.com>")).code, 250);
    assertEquals((await client.command("RCPT TO:<team@example.com>")).code, 250);
    // The file now names only bob, and the alias is gone.
    await Deno.writeTextFile(`${root}/recipients`, "bob@example.com\n");
    const mark = server.logs.length;
    server.process.kill("SIGHUP");
    await waitForLog(server.logs, "Reloaded", mark);
    assertEquals((await client.command("DATA")).code, 354);
    await client.send("Subject: before the reload\r\n\r\nhello\r\n.\r\n");
    const reply = await client.reply();
    assertEquals(reply.code, 250, reply.text);
    // Each copy went where RCPT decided: alice once (direct and through the alias), carol once.
    assertEquals((await newFiles(`${root}/mail/alice`)).length, 1);
    assertEquals((await newFiles(`${root}/mail/carol`)).length, 1);
    assertEquals(await newFiles(`${root}/mail/bob`), []);
    // The next transaction sees the new table.
    await client.command("MAIL FROM:<sender@remote.test>");
    assertEquals((await client.command("RCPT TO:<alice@example.com>")).code, 550);
    assertEquals((await client.command("RCPT TO:<bob@example.com>")).code, 250);
  } finally {
    client.close();
    await server.stop();
    await Deno.remove(root, { recursive: true });
  }
});
