import { parseMailbox } from "../src/protocol/address.ts";
import { LineReader } from "../src/protocol/line_reader.ts";
import { REPLIES } from "../src/protocol/replies.ts";
import type { Check, Verdict } from "../src/pipeline/checks/check.ts";
import type { Envelope } from "../src/pipeline/envelope.ts";
import { ReplyError } from "../src/pipeline/failure.ts";
import { type MessageResult, receiveMessage } from "../src/pipeline/message.ts";
import { isRoute, Router } from "../src/pipeline/route.ts";
import { MaildirTarget } from "../src/pipeline/targets/maildir.ts";
import type { Target } from "../src/pipeline/targets/target.ts";
import { newFiles, readMessages } from "./_server.ts";
import { assert, assertEquals, assertStringIncludes } from "./_assert.ts";

const encoder = new TextEncoder();

/** A chunk source over fixed byte strings: the wire, in memory. */
function wire(...chunks: string[]): LineReader {
  const queue = chunks.map((chunk) => encoder.encode(chunk));
  return new LineReader({ read: () => Promise.resolve(queue.shift() ?? null) });
}

async function withMaildir(
  test: (root: string, envelope: Envelope, target: Target) => Promise<void>,
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "letterbox-message-" });
  const router = new Router({ maildir: `${root}/{user}`, domains: [], defaultDomain: "x.test" });
  const routes = ["alice@x.test", "bob@x.test"].map((text) => {
    const parsed = parseMailbox(text, true);
    assert(parsed.ok);
    const route = router.route(parsed.value);
    assert(isRoute(route));
    return route;
  });
  const envelope: Envelope = {
    id: "QID1",
    sender: null,
    routes,
    clientAddress: "192.0.2.1",
    heloName: "c.test",
    extended: true,
    smtpUtf8: false,
    receivedAt: new Date(),
  };
  try {
    await test(root, envelope, new MaildirTarget("mx.test"));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

/** A check that returns a fixed verdict and counts the octets it saw. */
function fixedCheck(verdict: Verdict | Error, seen: { octets: number } = { octets: 0 }): Check {
  return {
    name: "fixed",
    begin: () => ({
      write: (content) => void (seen.octets += content.length),
      verdict: () => verdict instanceof Error ? Promise.reject(verdict) : Promise.resolve(verdict),
    }),
  };
}

function replyText(result: MessageResult): string {
  assert(result.kind === "ended");
  return result.outcome.kind;
}

Deno.test("receiveMessage() stores a message from an in-memory stream and reports its sizes", async () => {
  await withMaildir(async (root, envelope, target) => {
    const seen = { octets: 0 };
    const result = await receiveMessage(
      wire("Subject: hi\r\n\r\n..dot\r\n", "body\r\n.\r\nQUIT\r\n"),
      envelope,
      { target, checks: [fixedCheck({ action: "accept" }, seen)], maxMessageSize: 1000 },
    );
    assert(result.kind === "ended");
    assertEquals(result.outcome, { kind: "queued", id: "QID1" });
    assertEquals(result.copies.length, 2);
    assertEquals(result.size, "Subject: hi\n\n.dot\nbody\n".length);
    assertEquals(seen.octets, result.size, "the check saw every decoded octet");
    const [stored] = await readMessages(`${root}/alice`);
    assert(stored.endsWith("Subject: hi\n\n.dot\nbody\n"));
  });
});

Deno.test("header fields a check adds go below our trace headers, in small and large messages", async () => {
  for (const bodyBytes of [10, 300_000]) {
    await withMaildir(async (root, envelope, target) => {
      const field = "X-Checked: yes\n";
      const body = "b".repeat(bodyBytes);
      const result = await receiveMessage(
        wire(`Subject: s\r\n\r\n${body}\r\n.\r\n`),
        envelope,
        {
          target,
          checks: [fixedCheck({ action: "accept", headerFields: field })],
          maxMessageSize: 1_000_000,
        },
      );
      assertEquals(replyText(result), "queued");
      const [name] = await newFiles(`${root}/alice`);
      const stored = await Deno.readTextFile(`${root}/alice/new/${name}`);
      const received = stored.indexOf("Received: from c.test");
      const inserted = stored.indexOf(field);
      assert(received !== -1 && inserted > received, "after the trace headers");
      assert(inserted < stored.indexOf("Subject: s\n"), "above the message's own header");
      assert(stored.endsWith(`\n\n${body}\n`), "the body is whole");
      // S= and W= count the inserted line too.
      const size = new TextEncoder().encode(stored).length;
      const lines = stored.split("\n").length - 1;
      assertStringIncludes(name, `,S=${size},W=${size + lines}`);
    });
  }
});

Deno.test("fields a check drops are gone from the stored copy, which the check saw whole", async () => {
  await withMaildir(async (root, envelope, target) => {
    let seen = "";
    const check: Check = {
      name: "dropping",
      begin: () => ({
        write: (content) => void (seen += new TextDecoder().decode(content)),
        verdict: () => Promise.resolve({ action: "accept", headerFields: "X-Spam: our own\n" }),
      }),
      dropsField: (name) => name.startsWith("x-spam"),
    };
    const result = await receiveMessage(
      wire("X-Spam: No\r\nSubject: s\r\nX-Spam-Score:\r\n -10\r\n", "\r\nX-Spam: body\r\n.\r\n"),
      envelope,
      { target, checks: [check], maxMessageSize: 1000 },
    );
    assertEquals(replyText(result), "queued");
    assertStringIncludes(seen, "X-Spam: No\nSubject: s\nX-Spam-Score:\n -10\n");
    const [name] = await newFiles(`${root}/alice`);
    const stored = await Deno.readTextFile(`${root}/alice/new/${name}`);
    assert(stored.endsWith("X-Spam: our own\nSubject: s\n\nX-Spam: body\n"), stored);
    const size = new TextEncoder().encode(stored).length;
    assertStringIncludes(name, `,S=${size},W=${size + stored.split("\n").length - 1}`);
  });
});

Deno.test("a junk verdict files every copy in the recipient's .Junk Maildir++ folder", async () => {
  await withMaildir(async (root, envelope, target) => {
    const result = await receiveMessage(
      wire("Subject: spam\r\n\r\nbuy\r\n.\r\n"),
      envelope,
      { target, checks: [fixedCheck({ action: "junk" })], maxMessageSize: 1000 },
    );
    assertEquals(replyText(result), "queued");
    for (const user of ["alice", "bob"]) {
      assertEquals(await newFiles(`${root}/${user}`), []);
      assertEquals((await newFiles(`${root}/${user}/.Junk`)).length, 1);
      assertEquals(Deno.statSync(`${root}/${user}/.Junk/maildirfolder`).size, 0);
    }
  });
});

Deno.test("a refusing check, or one that fails, leaves nothing behind and gives its reply", async () => {
  const cases: [Verdict | Error, string][] = [
    [{ action: "refuse", reply: REPLIES.relayDenied, reason: "test" }, "550 5.7.1"],
    [new Error("check crashed"), "451 4.3.0"],
    [new ReplyError(REPLIES.storageFull, "full"), "452 4.3.1"],
  ];
  for (const [verdict, expected] of cases) {
    await withMaildir(async (root, envelope, target) => {
      const result = await receiveMessage(
        wire("Subject: no\r\n\r\nx\r\n.\r\n"),
        envelope,
        {
          target,
          checks: [fixedCheck({ action: "accept" }), fixedCheck(verdict)],
          maxMessageSize: 1000,
        },
      );
      assert(result.kind === "ended" && result.outcome.kind === "refused");
      assertEquals(`${result.outcome.reply.code} ${result.outcome.reply.enhanced}`, expected);
      for (const user of ["alice", "bob"]) {
        assertEquals(await newFiles(`${root}/${user}`), []);
        assertEquals([...Deno.readDirSync(`${root}/${user}/tmp`)], []);
      }
    });
  }
});

Deno.test("a message with no route to store is 451, never a 250", async () => {
  await withMaildir(async (_root, envelope, target) => {
    const result = await receiveMessage(
      wire("Subject: nobody\r\n\r\nx\r\n.\r\n"),
      { ...envelope, routes: [] },
      { target, checks: [], maxMessageSize: 1000 },
    );
    assert(result.kind === "ended" && result.outcome.kind === "refused");
    assertEquals(result.outcome.reply, REPLIES.localError);
  });
});

Deno.test("a stream that ends before the end of data stores nothing", async () => {
  await withMaildir(async (root, envelope, target) => {
    const result = await receiveMessage(wire("Subject: cut\r\n\r\nhalf"), envelope, {
      target,
      checks: [],
      maxMessageSize: 1000,
    });
    assertEquals(result.kind, "gone");
    assertEquals([...Deno.readDirSync(`${root}/alice/tmp`)], []);
  });
});
