import {
  parseCommandLine,
  parseHeloArgument,
  parseMailArgument,
  parseParameters,
  parseRcptArgument,
} from "../src/protocol/commands.ts";
import { parseMailbox } from "../src/protocol/address.ts";
import { assert, assertEquals } from "./_assert.ts";

Deno.test("parseCommandLine() upper-cases the verb and keeps the argument", () => {
  assertEquals(parseCommandLine("mail FROM:<a@b>  "), { verb: "MAIL", argument: "FROM:<a@b>" });
  assertEquals(parseCommandLine("QUIT"), { verb: "QUIT", argument: "" });
});

Deno.test("parseMailArgument() reads the null sender and every supported parameter", () => {
  assertEquals(parseMailArgument("FROM:<>"), {
    ok: true,
    value: { sender: null, size: undefined, body: undefined, smtpUtf8: false },
  });
  const parsed = parseMailArgument("from: <a@example.com> SIZE=1000 body=8bitmime SMTPUTF8");
  assert(parsed.ok);
  assertEquals(parsed.value.sender?.domain, "example.com");
  assertEquals(parsed.value.size, 1000);
  assertEquals(parsed.value.body, "8BITMIME");
  assertEquals(parsed.value.smtpUtf8, true);
});

Deno.test("parseMailArgument() names each kind of failure", () => {
  assertEquals(parseMailArgument("FROM:a@b"), { ok: false, failure: "syntax" });
  assertEquals(parseMailArgument("TO:<a@b>"), { ok: false, failure: "syntax" });
  assertEquals(parseMailArgument("FROM:<a@b> FOO=1"), { ok: false, failure: "unknown-parameter" });
  // BINARYMIME is a body type since CHUNKING (RFC 3030); another one still is not.
  assertEquals(parseMailArgument("FROM:<a@b> BODY=9BIT"), { ok: false, failure: "syntax" });
  // A conflicting repeat is named (issue 18); it was a bare syntax error before.
  assertEquals(parseMailArgument("FROM:<a@b> SIZE=1 SIZE=2"), {
    ok: false,
    failure: "conflicting-parameter",
    parameter: "SIZE",
  });
  assertEquals(parseMailArgument("FROM:<a b@c>"), { ok: false, failure: "bad-address" });
  assertEquals(parseMailArgument("FROM:<josé@example.com>"), {
    ok: false,
    failure: "needs-smtputf8",
  });
  assertEquals(parseMailArgument(`FROM:<${"a".repeat(65)}@b.c>`), {
    ok: false,
    failure: "too-long",
  });
  assertEquals(parseMailArgument(`FROM:<a@${"b".repeat(300)}.c>`), {
    ok: false,
    failure: "too-long",
  });
});

Deno.test("parseRcptArgument() takes <postmaster> without a domain and nothing else without one", () => {
  const postmaster = parseRcptArgument("TO:<Postmaster>", false);
  assert(postmaster.ok);
  assertEquals(postmaster.value.domain, "");
  assertEquals(parseRcptArgument("TO:<alice>", false), { ok: false, failure: "bad-address" });
  assertEquals(parseRcptArgument("TO:<>", false), { ok: false, failure: "syntax" });
  assertEquals(parseRcptArgument("TO:<a@b.c> NOTIFY=NEVER", false), {
    ok: false,
    failure: "unknown-parameter",
  });
});

Deno.test("parseRcptArgument() takes UTF-8 addresses only in SMTPUTF8 transactions", () => {
  assertEquals(parseRcptArgument("TO:<用户@例子.广告>", false), {
    ok: false,
    failure: "needs-smtputf8",
  });
  const parsed = parseRcptArgument("TO:<用户@例子.广告>", true);
  assert(parsed.ok);
  assertEquals(parsed.value.localText, "用户");
  assertEquals(parsed.value.utf8, true);
});

Deno.test("parseMailbox() unquotes quoted local parts and drops source routes", () => {
  const quoted = parseMailbox('"john \\"q\\" doe"@example.com', false);
  assert(quoted.ok);
  assertEquals(quoted.value.localText, 'john "q" doe');
  const routed = parseMailbox("@relay.example,@other.example:user@example.com", false);
  assert(routed.ok);
  assertEquals(routed.value.local, "user");
  assert(parseMailbox("a@[192.0.2.1]", false).ok);
  assert(!parseMailbox("a@-bad.example", false).ok);
  assert(!parseMailbox("a..b@example.com", false).ok);
});

Deno.test("parseParameters() refuses values with = or spaces", () => {
  assertEquals(parseParameters("A=1 B"), {
    ok: true,
    value: new Map<string, string | true>([["A", "1"], ["B", true]]),
  });
  assertEquals(parseParameters("A=1=2").ok, false);
});

Deno.test("parseHeloArgument() takes one word and refuses nothing else", () => {
  assertEquals(parseHeloArgument("mail.example.com"), "mail.example.com");
  assertEquals(parseHeloArgument("[192.0.2.1]"), "[192.0.2.1]");
  assertEquals(parseHeloArgument(""), undefined);
  assertEquals(parseHeloArgument("two words"), undefined);
});

Deno.test("parseMailArgument() takes a parameter repeated with the same value, and names a conflict", () => {
  const repeated = parseMailArgument(
    "FROM:<a@b.test> size=216 SMTPUTF8 SMTPUTF8 BODY=8BITMIME SIZE=216",
  );
  assert(repeated.ok);
  assertEquals(repeated.value.size, 216);
  assertEquals(repeated.value.smtpUtf8, true);
  assertEquals(parseMailArgument("FROM:<a@b.test> BODY=8bitmime BODY=8BITMIME").ok, true);
  assertEquals(parseMailArgument("FROM:<a@b.test> BODY=7BIT BODY=8BITMIME"), {
    ok: false,
    failure: "conflicting-parameter",
    parameter: "BODY",
  });
});
