/**
 * Crash safety: under load, the server is killed with SIGKILL at a random
 * moment; after a restart, every message that got 250 is in new/, whole and
 * byte-exact, and nothing in new/ is half-written. Repeated with different
 * kill moments (seeded, so a failure can be replayed).
 */

import { newFiles, spawnServer } from "./_server.ts";
import { type LoadMessage, seededRandom, sendMessages } from "./_load.ts";
import { assert, assertEquals } from "./_assert.ts";

const ROUNDS = 3;
const PLANNED = 2_600;
const CONNECTIONS = 8;

function makeMessages(random: () => number, round: number): LoadMessage[] {
  return Array.from({ length: PLANNED }, (_, i) => {
    const id = `r${round}m${i}`;
    const lines = 2 + Math.floor(random() * 40);
    let body = "";
    for (let line = 0; line < lines; line++) {
      body += `${id} line ${line} ${"x".repeat(Math.floor(random() * 70))}\r\n`;
      if (random() < 0.05) body += ".leading dot\r\n";
    }
    return {
      id,
      from: `sender${i % 7}@crash.test`,
      to: `rcpt${i % 5}@example.com`,
      content: `Message-ID: <${id}@crash.test>\r\nSubject: crash ${id}\r\n\r\n${body}`,
    };
  });
}

/** The stored form of a message: LF line ends, after our trace headers. */
function stored(content: string): string {
  return content.replaceAll("\r\n", "\n");
}

Deno.test("every acknowledged message survives SIGKILL at a random moment, whole and byte-exact", async () => {
  const random = seededRandom(20261129);
  const summary: string[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const root = await Deno.makeTempDir({ prefix: "letterbox-crash-" });
    // Whatever fails, the round's files go (its servers stop in crashRound).
    try {
      summary.push(await crashRound(root, round, random));
    } finally {
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  }
  // deno-lint-ignore no-console
  console.log(summary.join("\n"));
});

// One round: load, SIGKILL after a random number of 250s, restart over the
// same Maildir, then every acknowledged message must be there, whole.
async function crashRound(root: string, round: number, random: () => number): Promise<string> {
  const maildir = `${root}/Maildir`;
  const args = ["--maildir", maildir, "--no-tls"];
  const server = await spawnServer(args, { maildir: root, useTestCert: false });
  const messages = makeMessages(random, round);
  const byId = new Map(messages.map((m) => [m.id, m]));
  // Kill after a random number of acknowledgements, at least 2,000.
  const killAfter = 2_000 + Math.floor(random() * 500);
  const acknowledged = new Set<string>();
  let cursor = 0;
  let killed = false;
  const next = () => killed ? undefined : messages[cursor++];
  try {
    await Promise.all(
      Array.from({ length: CONNECTIONS }, () =>
        sendMessages(server.port, next, (message) => {
          acknowledged.add(message.id);
          if (!killed && acknowledged.size >= killAfter) {
            killed = true;
            server.process.kill("SIGKILL");
          }
        })),
    );
    assert(killed, `round ${round}: the server was not killed`);
  } finally {
    await server.stop();
  }

  // Restart over the same Maildir: it must start, and the files must be right.
  const restarted = await spawnServer(args, { maildir: root, useTestCert: false });
  try {
    const names = await newFiles(maildir);
    const found = new Set<string>();
    for (const name of names) {
      const text = await Deno.readTextFile(`${maildir}/new/${name}`);
      const start = text.indexOf("Message-ID: <");
      const id = /^Message-ID: <([^@]+)@/.exec(text.slice(start))?.[1] ?? "";
      const message = byId.get(id);
      assert(message, `round ${round}: ${name} is not a message we sent`);
      assertEquals(
        text.slice(start),
        stored(message.content),
        `round ${round}: ${name} is not whole`,
      );
      found.add(id);
    }
    const lost = [...acknowledged].filter((id) => !found.has(id));
    assertEquals(lost, [], `round ${round}: acknowledged but missing`);
    return `round ${round}: killed after ${acknowledged.size} acknowledged (${cursor} started); ` +
      `${names.length} in new/, ${acknowledged.size} of ${acknowledged.size} acknowledged survived, ` +
      `${names.length - acknowledged.size} unacknowledged but whole`;
  } finally {
    await restarted.stop();
  }
}
