import { parseMailbox } from "../src/protocol/address.ts";
import type { Envelope } from "../src/pipeline/envelope.ts";
import { isRoute, type Route } from "../src/pipeline/route.ts";
import { MaildirTarget } from "../src/pipeline/targets/maildir.ts";
import type { TargetTransaction } from "../src/pipeline/targets/target.ts";
import { escapeHostname, MaildirFile, uniqueName } from "../src/maildir/maildir.ts";
import { Router } from "../src/pipeline/route.ts";
import { assert, assertEquals, assertMatch } from "./_assert.ts";

function address(text: string) {
  const parsed = parseMailbox(text, true);
  assert(parsed.ok);
  return parsed.value;
}

const accepted = { headerFields: "", junk: false };

// The routes a default router decides for these recipients (in tests that
// build envelopes by hand, the router of the temporary folder).
let router: Router;

function route(text: string): Route {
  const decided = router.route(address(text));
  assert(isRoute(decided), text);
  return decided;
}

function envelope(...recipients: string[]): Envelope {
  return {
    id: "Q1",
    sender: null,
    routes: recipients.map(route),
    clientAddress: "127.0.0.1",
    heloName: "c.test",
    extended: true,
    smtpUtf8: false,
    receivedAt: new Date(),
  };
}

async function list(dir: string): Promise<string[]> {
  const names = [];
  try {
    for await (const entry of Deno.readDir(dir)) names.push(entry.name);
  } catch { /* missing */ }
  return names.sort();
}

/** A MaildirTarget into a fresh temporary folder; `template` follows the root (e.g. "/{user}"). */
async function tempDelivery(template: string): Promise<{ root: string; delivery: MaildirTarget }> {
  const root = await Deno.makeTempDir();
  router = new Router({ maildir: `${root}${template}`, domains: [], defaultDomain: "x" });
  return { root, delivery: new MaildirTarget("mx.test") };
}

/** True when the commit was refused. */
async function commitRefused(transaction: TargetTransaction): Promise<boolean> {
  try {
    await transaction.commit(accepted);
    return false;
  } catch {
    return true;
  }
}

Deno.test("Maildir names follow the convention and escape the host name", () => {
  assertEquals(escapeHostname("a/b:c"), "a\\057b\\072c");
  assertMatch(uniqueName("mx.test", 42, 1_700_000_000_123), /^1700000000\.M\d+P42Q\d+\.mx\.test$/);
  assert(uniqueName("h", 1) !== uniqueName("h", 1));
});

Deno.test("LocalDelivery writes one copy per Maildir with S= and W= sizes, mode 0600 in 0700 folders", async () => {
  const { root, delivery } = await tempDelivery("/{domain}/{user}");
  const transaction = await delivery.begin(envelope("a@one.test", "A+tag@one.test", "b@one.test"));
  await transaction.write(new TextEncoder().encode("Subject: hi\n\nbody\n"));
  const copies = await transaction.commit(accepted);
  assertEquals(copies.length, 2);
  assertEquals(await list(`${root}/one.test/a/tmp`), []);
  const [name] = await list(`${root}/one.test/a/new`);
  const text = await Deno.readTextFile(`${root}/one.test/a/new/${name}`);
  assert(
    text.startsWith(
      "Return-Path: <>\nDelivered-To: a@one.test\nDelivered-To: A+tag@one.test\nReceived: ",
    ),
  );
  const size = new TextEncoder().encode(text).length;
  const lines = text.split("\n").length - 1;
  assert(name.endsWith(`,S=${size},W=${size + lines}`), name);
  assertEquals((await Deno.stat(`${root}/one.test/a/new/${name}`)).mode! & 0o777, 0o600);
  assertEquals((await Deno.stat(`${root}/one.test/a/new`)).mode! & 0o777, 0o700);
  await Deno.remove(root, { recursive: true });
});

Deno.test("LocalDelivery.abort() leaves nothing in tmp/ or new/", async () => {
  const { root, delivery } = await tempDelivery("");
  const transaction = await delivery.begin(envelope("a@one.test"));
  await transaction.write(new TextEncoder().encode("x\n"));
  await transaction.abort();
  assertEquals(await list(`${root}/tmp`), []);
  assertEquals(await list(`${root}/new`), []);
  await Deno.remove(root, { recursive: true });
});

Deno.test("LocalDelivery.commit() takes back every copy when one cannot be stored", async () => {
  const { root, delivery } = await tempDelivery("/{user}");
  const transaction = await delivery.begin(envelope("a@one.test", "b@one.test"));
  // Sabotage b's copy: its new/ folder becomes a file, so its rename fails.
  await Deno.remove(`${root}/b/new`);
  await Deno.writeTextFile(`${root}/b/new`, "");
  assert(await commitRefused(transaction));
  assertEquals(await list(`${root}/a/new`), []);
  assertEquals(await list(`${root}/a/tmp`), []);
  assertEquals(await list(`${root}/b/tmp`), []);
  await Deno.remove(root, { recursive: true });
});

Deno.test("LocalDelivery.commit() leaves nothing in new/ when one of many copies fails", async () => {
  const { root, delivery } = await tempDelivery("/{user}");
  // The first copy fails at once (its new/ is a file); nineteen others are
  // still committing when it does, and none may land in new/ after the clean-up.
  await Deno.mkdir(`${root}/a0/tmp`, { recursive: true });
  await Deno.writeTextFile(`${root}/a0/new`, "");
  const users = Array.from({ length: 20 }, (_, i) => `a${i}@one.test`);
  const transaction = await delivery.begin(envelope(...users));
  await transaction.write(new TextEncoder().encode("x".repeat(100_000) + "\n"));
  assert(await commitRefused(transaction));
  await new Promise((resolve) => setTimeout(resolve, 200));
  for (let i = 1; i < 20; i++) assertEquals(await list(`${root}/a${i}/new`), [], `a${i}`);
  await Deno.remove(root, { recursive: true });
});

Deno.test("MaildirFile.commit() takes fields out of the message's header and inserts others, small or large", async () => {
  for (const bodyBytes of [10, 400_000]) {
    for (const insert of ["", "X-Spam: Yes\nX-Spam-Score: 9.5\nSubject: [SPAM] hi\n"]) {
      const dir = await Deno.makeTempDir({ prefix: "letterbox-edit-" });
      try {
        const file = await MaildirFile.create(dir, "mx.test");
        const encoder = new TextEncoder();
        await file.write(encoder.encode("Received: from us\n"));
        file.markInsertionPoint();
        const body = "b\u00e9".repeat(bodyBytes / 2);
        await file.write(
          encoder.encode(
            "X-Planted: 1\nSubject: hi\nX-Planted: 2\n folded\nTo: a@x.test\nX-Planted: 3\n\n",
          ),
        );
        await file.write(encoder.encode(`${body}\nX-Planted: in the body\n`));
        const path = await file.commit(encoder.encode(insert), dir, [
          { name: "subject", occurrence: 0 },
          { name: "x-planted", occurrence: 2 },
          { name: "x-planted", occurrence: -1 },
        ]);
        const stored = await Deno.readTextFile(path);
        assertEquals(
          stored,
          `Received: from us\n${insert}X-Planted: 1\nTo: a@x.test\n\n${body}\nX-Planted: in the body\n`,
        );
        const size = encoder.encode(stored).length;
        assertEquals(path.split(",S=")[1], `${size},W=${size + stored.split("\n").length - 1}`);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    }
  }
});
