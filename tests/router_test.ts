import { parseMailbox } from "../src/protocol/address.ts";
import { type Route, Router } from "../src/pipeline/route.ts";
import { templateProblem } from "../src/maildir/template.ts";
import { parseRecipients } from "../src/pipeline/recipients.ts";
import type { Reply } from "../src/protocol/replies.ts";
import { REPLIES } from "../src/protocol/replies.ts";
import { assert, assertEquals } from "./_assert.ts";

function address(text: string) {
  const parsed = parseMailbox(text, true);
  assert(parsed.ok, text);
  return parsed.value;
}

/** The reply refusing a recipient, or undefined when it has a route. */
function refusal(decided: Route | Reply): Reply | undefined {
  return "code" in decided ? decided : undefined;
}

const router = new Router({
  maildir: "/var/vmail/{domain}/{user}",
  domains: ["example.com"],
  defaultDomain: "example.com",
});

Deno.test("Router maps a recipient to its domain and user, without the +tag", () => {
  assertEquals(
    router.maildirFor(address("Alice+Lists@Example.COM")),
    "/var/vmail/example.com/alice",
  );
  assertEquals(router.maildirFor(address("postmaster")), "/var/vmail/example.com/postmaster");
  assertEquals(router.mailboxAddress(address("postmaster")), "postmaster@example.com");
});

Deno.test("Router refuses domains that are not ours with 550 5.7.1", () => {
  assertEquals(refusal(router.route(address("a@example.org"))), REPLIES.relayDenied);
  assertEquals(refusal(router.route(address("a@example.com"))), undefined);
});

Deno.test("Router refuses every local part that could leave the Maildir root", () => {
  for (
    const text of [
      '"../../etc"@example.com',
      '"a/b"@example.com',
      "a/b@example.com",
      '".hidden"@example.com',
      '"a\\\\b"@example.com',
      '".."@example.com',
      "+tag@example.com",
    ]
  ) {
    assertEquals(refusal(router.route(address(text))), REPLIES.unsafeRecipient, text);
  }
});

Deno.test("templateProblem() refuses templates that could escape or have no fixed root", () => {
  assertEquals(templateProblem("/var/vmail/{domain}/{user}"), undefined);
  assertEquals(templateProblem("./Maildir"), undefined);
  assert(templateProblem("/var/vmail/../{user}"));
  assert(templateProblem("{domain}/{user}"));
  assert(templateProblem("/var/vmail/{name}"));
});

Deno.test("postmaster is accepted with a recipients file that does not name it (RFC 5321 4.5.1)", () => {
  const table = parseRecipients("alice@example.com\n@example.org: alice@example.com\n");
  const withFile = new Router({
    maildir: "/var/vmail/{domain}/{user}",
    domains: [],
    defaultDomain: "example.com",
    recipients: () => table,
  });
  for (const text of ["postmaster", "PostMaster@example.com"]) {
    const decided = withFile.route(address(text));
    assert(!("code" in decided), text);
    assertEquals(decided.destinations.map((d) => d.maildir), ["/var/vmail/example.com/postmaster"]);
  }
  // An alias for it in the file is followed.
  const aliased = parseRecipients("alice@example.com\npostmaster@example.com: alice@example.com\n");
  const decided = new Router({
    maildir: "/var/vmail/{domain}/{user}",
    domains: [],
    defaultDomain: "example.com",
    recipients: () => aliased,
  }).route(address("postmaster"));
  assert(!("code" in decided));
  assertEquals(decided.destinations.map((d) => d.mailbox), ["alice@example.com"]);
  // Not a way around the domain check, nor for other unknown users.
  assertEquals(refusal(withFile.route(address("postmaster@elsewhere.test"))), REPLIES.relayDenied);
  assertEquals(refusal(withFile.route(address("bob@example.com"))), REPLIES.unknownUser);
});
