/**
 * Hostile input at volume: seeded, repeatable, bounded in time. Ten thousand
 * generated sessions of random bytes, NULs, invalid UTF-8, over-long lines and
 * addresses, bare CR/LF everywhere, TLS hellos on the plain port and plain
 * text on the TLS port, truncated and duplicated commands. The server must
 * answer each with well-formed replies or a close, never crash or hang, and an
 * honest client delivering at the same time must get every message through.
 */

import { startServer } from "./_server.ts";
import { type LoadMessage, seededRandom, sendMessages } from "./_load.ts";
import { assert, assertEquals } from "./_assert.ts";

const SESSIONS = 10_000;
const CONCURRENCY = 48;
const SEED = 5321;
const SESSION_TIMEOUT_MS = 15_000;
const encoder = new TextEncoder();

// Every code Letterbox may send; anything else is a bug.
const KNOWN_CODES = new Set([
  214,
  220,
  221,
  250,
  252,
  354,
  421,
  451,
  452,
  454,
  500,
  501,
  503,
  530,
  550,
  552,
  553,
  554,
  555,
]);
const REPLY_LINE = /^(\d{3})([ -])([^\r\n]*)\r\n/;

const VALID_SCRIPT = [
  "EHLO fuzz.test",
  "MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME",
  "RCPT TO:<x@example.com>",
  "RCPT TO:<postmaster>",
  "DATA",
  "Subject: fuzz\r\n\r\nbody\r\n.",
  "RSET",
  "VRFY x",
  "NOOP",
  "HELP",
  "STARTTLS",
  "QUIT",
];

// The start of a real TLS 1.2/1.3 ClientHello record.
const CLIENT_HELLO = [0x16, 0x03, 0x01, 0x00, 0xf1, 0x01, 0x00, 0x00, 0xed, 0x03, 0x03];

type Generator = (random: () => number) => { bytes: Uint8Array; tls: boolean };

function pick<T>(random: () => number, items: readonly T[]): T {
  return items[Math.floor(random() * items.length)];
}

function randomBytes(random: () => number, length: number): Uint8Array {
  return Uint8Array.from({ length }, () => Math.floor(random() * 256));
}

function script(random: () => number): string[] {
  const length = 1 + Math.floor(random() * VALID_SCRIPT.length);
  return Array.from({ length }, (_, i) => i < 2 ? VALID_SCRIPT[i] : pick(random, VALID_SCRIPT));
}

const plain = (text: string | Uint8Array) => ({
  bytes: typeof text === "string" ? encoder.encode(text) : text,
  tls: false,
});

const GENERATORS: Record<string, Generator> = {
  "random bytes": (r) => plain(randomBytes(r, Math.floor(r() * 3000))),
  "NULs in commands": (r) =>
    plain(
      script(r).map((c) => c.replace(/./g, (ch) => r() < 0.1 ? "\0" : ch)).join("\r\n") + "\r\n",
    ),
  "invalid UTF-8": (r) => {
    const parts = script(r).map((c) => encoder.encode(c + "\r\n"));
    parts.splice(
      Math.floor(r() * parts.length),
      0,
      Uint8Array.of(0x4d, 0x41, 0x49, 0x4c, 0x20, 0xc3, 0x28, 0xff, 0xfe, 0x0d, 0x0a),
    );
    return plain(concat(parts));
  },
  "over-long line": (r) =>
    plain("EHLO x\r\n" + "A".repeat(500 + Math.floor(r() * 5000)) + (r() < 0.5 ? "\r\n" : "")),
  "over-long address": (r) =>
    plain(
      `EHLO x\r\nMAIL FROM:<${"a".repeat(60 + Math.floor(r() * 400))}@b.test>\r\nRCPT TO:<x@${
        "d".repeat(Math.floor(r() * 400))
      }.test>\r\n`,
    ),
  "bare CR and LF everywhere": (r) =>
    plain(
      script(r).join("\r\n").replace(/\r\n|./g, (s) =>
        r() < 0.08 ? pick(r, ["\r", "\n", "\r\r\n", "\n.\n", "\r\n.\r"]) : s) + "\r\n",
    ),
  "TLS hello on the plain port": (r) =>
    plain(concat([Uint8Array.from(CLIENT_HELLO), randomBytes(r, 200)])),
  "plain text on the TLS port": (r) => ({
    bytes: encoder.encode(script(r).join("\r\n") + "\r\n"),
    tls: true,
  }),
  "random bytes on the TLS port": (r) => ({
    bytes: randomBytes(r, Math.floor(r() * 600)),
    tls: true,
  }),
  "truncated commands": (r) => {
    const text = script(r).join("\r\n") + "\r\n";
    return plain(text.slice(0, Math.floor(r() * text.length)));
  },
  "duplicated commands": (r) =>
    plain(script(r).flatMap((c) => r() < 0.5 ? [c, c, c] : [c]).join("\r\n") + "\r\n"),
  // BDAT (RFC 3030): sizes that match, lie or overrun, chunks before MAIL, LAST or not, BINARYMIME.
  "BDAT chunks": (r) => {
    const parts = [
      "EHLO x\r\n",
      r() < 0.8 ? `MAIL FROM:<a@b.test>${r() < 0.3 ? " BODY=BINARYMIME" : ""}\r\n` : "",
      r() < 0.8 ? "RCPT TO:<x@example.com>\r\n" : "",
    ].map((text): Uint8Array => encoder.encode(text));
    for (let i = Math.floor(r() * 6); i >= 0; i--) {
      const content = randomBytes(r, Math.floor(r() * 300));
      const declared = r() < 0.7 ? content.length : Math.floor(r() * 400);
      const last = r() < 0.3 || i === 0 ? " LAST" : "";
      const verb = pick(r, [
        `BDAT ${declared}${last}`,
        `BDAT ${declared}`,
        "BDAT",
        "BDAT -1",
        `BDAT ${declared} last extra`,
      ]);
      parts.push(encoder.encode(`${verb}\r\n`), content);
      if (r() < 0.2) parts.push(encoder.encode(pick(r, ["DATA\r\n", "RSET\r\n", "NOOP\r\n"])));
    }
    return plain(concat(parts));
  },
  "data without an end": (r) =>
    plain(
      `EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n${
        new TextDecoder().decode(randomBytes(r, 2000))
      }`,
    ),
};

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Sends one session's bytes in random pieces, half-closes, and reads until the server closes. */
async function runSession(
  port: number,
  bytes: Uint8Array,
  random: () => number,
): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const received: Uint8Array[] = [];
  const reading = (async () => {
    const buffer = new Uint8Array(16_384);
    for (;;) {
      const n = await conn.read(buffer).catch(() => null);
      if (n === null) return;
      received.push(buffer.slice(0, n));
    }
  })();
  try {
    let offset = 0;
    while (offset < bytes.length) {
      const size = 1 + Math.floor(random() * Math.min(bytes.length - offset, 1500));
      await conn.write(bytes.subarray(offset, offset + size));
      offset += size;
    }
    await conn.closeWrite();
  } catch { /* the server may close first: that is an allowed ending */ }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise<"hung">((resolve) =>
    timer = setTimeout(() => resolve("hung"), SESSION_TIMEOUT_MS)
  );
  const ended = await Promise.race([reading.then(() => "closed" as const), hung]);
  clearTimeout(timer);
  conn.close();
  await reading;
  if (ended === "hung") throw new Error("The server neither answered nor closed in time");
  return concat(received);
}

/** Checks that a plain-port transcript is a sequence of well-formed replies. */
function checkReplies(transcript: Uint8Array): string | undefined {
  let text = new TextDecoder().decode(transcript);
  if (text === "") return undefined; // a close without a word is allowed
  if (!text.startsWith("220 mx.test ESMTP Letterbox\r\n") && !text.startsWith("421 ")) {
    return `bad greeting: ${JSON.stringify(text.slice(0, 80))}`;
  }
  while (text !== "") {
    const match = REPLY_LINE.exec(text);
    // After STARTTLS the rest is TLS records, not text.
    if (!match) {
      return text.includes("220 2.0.0 Ready to start TLS")
        ? undefined
        : `malformed: ${JSON.stringify(text.slice(0, 80))}`;
    }
    if (!KNOWN_CODES.has(Number(match[1]))) return `unknown code ${match[1]}`;
    if (match[0].startsWith("220 2.0.0 Ready to start TLS")) return undefined;
    text = text.slice(match[0].length);
  }
  return undefined;
}

Deno.test("ten thousand hostile sessions: well-formed replies or a close, no crash, no hang, honest mail gets through", async () => {
  const server = await startServer(
    [
      "--max-connections-per-ip",
      "5000",
      "--command-timeout",
      "10",
      "--data-timeout",
      "10",
      "--log-level",
      "info",
    ],
    { tlsListener: true },
  );
  const random = seededRandom(SEED);
  const names = Object.keys(GENERATORS);
  const counts = new Map<string, number>();
  const problems: string[] = [];
  let started = 0;
  let fuzzing = true;

  // An honest sender, all the while.
  let honestSent = 0;
  let honestAcked = 0;
  const honest = (async () => {
    while (fuzzing) {
      const batch: LoadMessage[] = Array.from({ length: 10 }, (_, i) => ({
        id: `h${honestSent + i}`,
        from: "honest@sender.test",
        to: "alice@example.com",
        content: `Subject: honest ${honestSent + i}\r\n\r\nhello\r\n`,
      }));
      honestSent += batch.length;
      await sendMessages(server.port, () => batch.shift(), () => honestAcked++);
    }
  })();

  const started_at = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (started < SESSIONS) {
      const index = started++;
      const sessionRandom = seededRandom(SEED * 7919 + index);
      const name = pick(random, names);
      counts.set(name, (counts.get(name) ?? 0) + 1);
      const { bytes, tls } = GENERATORS[name](sessionRandom);
      try {
        const transcript = await runSession(
          tls ? server.tlsPort! : server.port,
          bytes,
          sessionRandom,
        );
        const problem = tls ? undefined : checkReplies(transcript);
        if (problem) problems.push(`session ${index} (${name}): ${problem}`);
      } catch (error) {
        problems.push(
          `session ${index} (${name}): ${error instanceof Error ? error.message : error}`,
        );
      }
    }
  }));
  const seconds = (performance.now() - started_at) / 1000;
  fuzzing = false;
  await honest;

  // The server is still alive and well after all of it.
  const after: LoadMessage[] = [{
    id: "after",
    from: "a@b.test",
    to: "x@example.com",
    content: "Subject: after\r\n\r\nstill here\r\n",
  }];
  assertEquals(await sendMessages(server.port, () => after.shift(), () => {}), 1);
  const exit = await server.stop();
  // deno-lint-ignore no-console
  console.log(
    `fuzz: ${SESSIONS} sessions in ${
      seconds.toFixed(1)
    } s (seed ${SEED}); honest messages ${honestAcked}/${honestSent}; ` +
      [...counts].map(([k, v]) => `${k} ${v}`).join(", "),
  );
  assertEquals(problems.slice(0, 10), []);
  assertEquals(honestAcked, honestSent);
  assert(honestAcked > 0);
  assertEquals(exit, 0);
});
