import type { Address } from "../src/protocol/address.ts";
import { formatReply, REPLIES, type Reply } from "../src/protocol/replies.ts";
import { type Action, Session, type SessionOptions } from "../src/protocol/session.ts";
import { assert, assertEquals } from "./_assert.ts";

function session(overrides: Partial<SessionOptions> = {}): Session {
  return new Session({
    hostname: "mx.test",
    maxMessageSize: 1000,
    maxRecipients: 3,
    maxErrors: 10,
    tlsAvailable: true,
    requireTls: false,
    secure: false,
    routeRecipient: (r: Address) =>
      r.domain === "elsewhere.test" ? REPLIES.relayDenied : { recipient: r },
    ...overrides,
  });
}

/** Runs commands and returns the first line of each reply. */
function talk(s: Session, ...lines: string[]): string[] {
  return lines.map((line) => formatReply(s.handle(line).reply).split("\r\n")[0]);
}

function wire(action: Action): string {
  return formatReply(action.reply);
}

Deno.test("EHLO advertises every extension, STARTTLS only while plain", () => {
  const s = session();
  assertEquals(
    wire(s.handle("EHLO client.test")),
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n" +
      "250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250 STARTTLS\r\n",
  );
  s.tlsStarted();
  assert(!wire(s.handle("EHLO client.test")).includes("STARTTLS"));
});

Deno.test("a whole transaction walks the states in order", () => {
  const s = session();
  assertEquals(talk(s, "EHLO c", "MAIL FROM:<a@b.test>", "RCPT TO:<x@y.test>"), [
    "250-mx.test",
    "250 2.1.0 Ok",
    "250 2.1.5 Ok",
  ]);
  const data = s.handle("DATA");
  assertEquals(data.kind, "data");
  assertEquals(wire(data), "354 End data with <CR><LF>.<CR><LF>\r\n");
  assertEquals(
    formatReply(s.finishData({ kind: "queued", id: "ABC" })),
    "250 2.0.0 Ok: queued as ABC\r\n",
  );
  assertEquals(talk(s, "DATA"), ["503 5.5.1 Error: need MAIL command"]);
});

Deno.test("commands out of order get 503 5.5.1", () => {
  const s = session();
  assertEquals(talk(s, "MAIL FROM:<a@b.test>", "RCPT TO:<x@y.test>", "DATA"), [
    "503 5.5.1 Error: send HELO/EHLO first",
    "503 5.5.1 Error: send HELO/EHLO first",
    "503 5.5.1 Error: send HELO/EHLO first",
  ]);
  assertEquals(talk(s, "HELO c", "RCPT TO:<x@y.test>", "MAIL FROM:<>", "MAIL FROM:<>", "DATA"), [
    "250 mx.test",
    "503 5.5.1 Error: need MAIL command",
    "250 2.1.0 Ok",
    "503 5.5.1 Error: nested MAIL command",
    "503 5.5.1 Error: need RCPT command",
  ]);
});

Deno.test("RSET and a second EHLO end the transaction but keep the greeting", () => {
  const s = session();
  talk(s, "EHLO c", "MAIL FROM:<>");
  assertEquals(talk(s, "RSET", "RCPT TO:<x@y.test>"), [
    "250 2.0.0 Ok",
    "503 5.5.1 Error: need MAIL command",
  ]);
  talk(s, "MAIL FROM:<>");
  assertEquals(talk(s, "EHLO c", "MAIL FROM:<>"), ["250-mx.test", "250 2.1.0 Ok"]);
});

Deno.test("each reply to a bad command is the one RFC 5321 names", () => {
  const s = session();
  talk(s, "EHLO c");
  assertEquals(
    talk(
      s,
      "FOO",
      "MAIL FROM:<a@b.test> X=1",
      "MAIL FROM:<a@b.test> SIZE=1001",
      "MAIL FROM x",
      "HELO",
    ),
    [
      "500 5.5.2 Error: command not recognized",
      "555 5.5.4 Unsupported MAIL or RCPT parameter",
      "552 5.3.4 Message size exceeds fixed maximum message size",
      "501 5.5.4 Syntax: MAIL FROM:<address>",
      "501 5.5.4 Syntax: EHLO hostname",
    ],
  );
  assertEquals(
    talk(
      s,
      "EHLO c",
      "MAIL FROM:<>",
      "RCPT TO:<a@elsewhere.test>",
      "RCPT TO:<a b@c>",
      "RCPT TO:<josé@x.test>",
    ),
    [
      "250-mx.test",
      "250 2.1.0 Ok",
      "550 5.7.1 Relay access denied",
      "501 5.1.3 Bad recipient address syntax",
      "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter",
    ],
  );
  assertEquals(talk(s, "VRFY alice", "HELP", "NOOP", "QUIT"), [
    "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
    "214 2.0.0 See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
    "250 2.0.0 Ok",
    "221 2.0.0 Bye",
  ]);
});

Deno.test("past the recipient limit RCPT gets 452 4.5.3 and duplicates count once", () => {
  const s = session();
  talk(s, "EHLO c", "MAIL FROM:<>");
  assertEquals(
    talk(
      s,
      "RCPT TO:<a@y.test>",
      "RCPT TO:<A@y.test>",
      "RCPT TO:<b@y.test>",
      "RCPT TO:<c@y.test>",
      "RCPT TO:<d@y.test>",
    ),
    [
      "250 2.1.5 Ok",
      "250 2.1.5 Ok",
      "250 2.1.5 Ok",
      "250 2.1.5 Ok",
      "452 4.5.3 Error: too many recipients",
    ],
  );
  const data = s.handle("DATA");
  assert(data.kind === "data");
  assertEquals(data.transaction.routes.map((r) => r.recipient.local), ["a", "b", "c"]);
});

Deno.test("STARTTLS resets the session and cannot be repeated", () => {
  const s = session();
  talk(s, "EHLO c", "MAIL FROM:<>");
  const action = s.handle("STARTTLS");
  assertEquals(action.kind, "start-tls");
  assertEquals(wire(action), "220 2.0.0 Ready to start TLS\r\n");
  s.tlsStarted();
  assertEquals(talk(s, "MAIL FROM:<>", "STARTTLS"), [
    "503 5.5.1 Error: send HELO/EHLO first",
    "503 5.5.1 Error: TLS already active",
  ]);
  assertEquals(talk(session({ tlsAvailable: false }), "STARTTLS"), ["454 4.7.0 TLS not available"]);
});

Deno.test("--require-tls refuses MAIL, RCPT and DATA before STARTTLS", () => {
  const s = session({ requireTls: true });
  assertEquals(talk(s, "EHLO c", "MAIL FROM:<>", "DATA"), [
    "250-mx.test",
    "530 5.7.0 Must issue a STARTTLS command first",
    "530 5.7.0 Must issue a STARTTLS command first",
  ]);
  s.tlsStarted();
  assertEquals(talk(s, "EHLO c", "MAIL FROM:<>"), ["250-mx.test", "250 2.1.0 Ok"]);
});

Deno.test("the error budget ends the session with 421 4.7.0", () => {
  const s = session({ maxErrors: 3 });
  assertEquals(s.handle("X").kind, "reply");
  assertEquals(s.handle("X").kind, "reply");
  const last = s.handle("X");
  assertEquals(last.kind, "close");
  assertEquals(wire(last), "421 4.7.0 Error: too many errors, closing connection\r\n");
});

Deno.test("control characters and invalid UTF-8 never reach a parser", () => {
  const s = session();
  const bad = (bytes: number[]) => wire(s.handleLine(new Uint8Array(bytes)));
  assertEquals(
    bad([0x45, 0x48, 0x4c, 0x4f, 0x20, 0x61, 0x0d, 0x62]),
    "500 5.5.2 Error: command contains invalid bytes\r\n",
  );
  assertEquals(
    bad([0x45, 0x48, 0x4c, 0x4f, 0x20, 0xff]),
    "500 5.5.2 Error: command contains invalid bytes\r\n",
  );
  assertEquals(
    bad([0x4e, 0x4f, 0x4f, 0x50, 0x00]),
    "500 5.5.2 Error: command contains invalid bytes\r\n",
  );
});

Deno.test("HTTP verbs at the SMTP port end the connection", () => {
  const action = session().handle("GET / HTTP/1.1");
  assertEquals(action.kind, "close");
});

Deno.test("each DATA outcome maps to its reply", () => {
  const s = session();
  const replies: Reply[] = [
    s.finishData({ kind: "too-big" }),
    s.finishData({ kind: "refused", reply: REPLIES.storageFull }),
    s.finishData({ kind: "refused", reply: REPLIES.localError }),
  ];
  assertEquals(replies.map((r) => formatReply(r)), [
    "552 5.3.4 Error: message exceeds fixed maximum message size\r\n",
    "452 4.3.1 Error: insufficient system storage, try again later\r\n",
    "451 4.3.0 Error: local error in processing, try again later\r\n",
  ]);
});

Deno.test("BDAT follows RFC 3030: chunks after MAIL and RCPT, refusals keep their size, DATA cannot follow", () => {
  const s = session();
  // Before MAIL: refused, but the connection must still read (and drop) the 5 octets.
  talk(s, "EHLO c");
  const early = s.handle("BDAT 5");
  assertEquals(early.kind, "chunk");
  assert(early.kind === "chunk" && !early.transaction && early.size === 5);
  assertEquals(wire(early), "503 5.5.1 Error: need MAIL command\r\n");
  assertEquals(talk(s, "BDAT five", "BDAT 1 NOW"), [
    "501 5.5.4 Syntax: BDAT size [LAST]",
    "501 5.5.4 Syntax: BDAT size [LAST]",
  ]);
  talk(s, "MAIL FROM:<a@b.test>", "RCPT TO:<x@y.test>");
  const first = s.handle("BDAT 10");
  assert(first.kind === "chunk" && first.transaction?.chunked && !first.last);
  assertEquals(formatReply(s.chunkReceived(10)), "250 2.0.0 10 octets received\r\n");
  assertEquals(talk(s, "DATA"), ["503 5.5.1 Error: DATA cannot follow BDAT"]);
  const last = s.handle("bdat 0 last");
  assert(last.kind === "chunk" && last.last && last.size === 0);
  assertEquals(
    formatReply(s.finishData({ kind: "queued", id: "Q" })),
    "250 2.0.0 Ok: queued as Q\r\n",
  );
  // BODY=BINARYMIME needs BDAT.
  talk(s, "MAIL FROM:<a@b.test> BODY=BINARYMIME", "RCPT TO:<x@y.test>");
  assertEquals(talk(s, "DATA"), ["503 5.5.1 Error: BODY=BINARYMIME requires BDAT"]);
  assertEquals(s.handle("BDAT 3 LAST").kind, "chunk");
});

Deno.test("with a next hop that confirms recipients, RCPT waits for its word and keeps only those it accepts", () => {
  const s = session({ verifiesRecipients: true });
  talk(s, "EHLO client.test", "MAIL FROM:<a@b.test>");
  const first = s.handle("RCPT TO:<alice@example.com>");
  assert(first.kind === "verify");
  assertEquals(wire(s.recipientVerified(first.transaction, first.route)), "250 2.1.5 Ok\r\n");
  const second = s.handle("RCPT TO:<nobody@example.com>");
  assert(second.kind === "verify");
  const refusal = { code: 550, enhanced: "5.1.1", lines: ["User doesn't exist"] };
  assertEquals(
    wire(s.recipientVerified(second.transaction, second.route, refusal)),
    "550 5.1.1 User doesn't exist\r\n",
  );
  assertEquals(s.transaction?.routes.map((route) => route.recipient.local), ["alice"]);
});
