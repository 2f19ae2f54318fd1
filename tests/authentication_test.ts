/**
 * Sender authentication end to end: a real DNS server (dnsmasq) serving SPF,
 * DKIM and DMARC records, messages DKIM-signed here with a key made here, sent
 * by Python's smtplib from 127.0.0.1 (allowed by SPF) or 127.0.0.2 (not).
 */

import { dkimSigned, makeDkimKey } from "./_dkim.ts";
import { startDns } from "./_dns.ts";
import { type Dovecot, imapFolders, startDovecot } from "./_dovecot.ts";
import { newFiles, readMessages, run, startServer } from "./_server.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./_assert.ts";

// One key for every test domain, made fresh for this run.
const key = await makeDkimKey();
const dkimRecord = key.record;

const dns = await startDns({
  txt: {
    "example.test": "v=spf1 ip4:127.0.0.1 -all",
    "sel._domainkey.example.test": dkimRecord,
    "_dmarc.example.test": "v=DMARC1; p=reject",
    "quar.test": "v=spf1 ip4:127.0.0.1 -all",
    "sel._domainkey.quar.test": dkimRecord,
    "_dmarc.quar.test": "v=DMARC1; p=quarantine",
  },
});
// Stopped and removed when the file's tests are done (tests/_dns.ts).

function message(from: string, subject: string, extra = ""): string {
  return `From: ${from}\r\nTo: test@mx.test\r\nSubject: ${subject}\r\n` +
    `Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <${crypto.randomUUID()}@test>\r\n` +
    `${extra}\r\nHello from a real signer.\r\n`;
}

function signed(domain: string, text: string): Promise<string> {
  return dkimSigned(key, domain, text);
}

// smtplib from a chosen source address; prints the DATA reply's code and text.
const SEND = `
import smtplib, sys
port, source, sender = int(sys.argv[1]), sys.argv[2], sys.argv[3]
smtp = smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30)
smtp.ehlo("mail.example.test")
smtp.mail(sender)
smtp.rcpt("test@mx.test")
code, text = smtp.data(sys.stdin.buffer.read())
print(code, text.decode())
smtp.quit()
`;

async function send(
  port: number,
  text: string,
  { source = "127.0.0.1", sender = "alice@example.test" } = {},
): Promise<string> {
  const child = new Deno.Command("python3", {
    args: ["-c", SEND, String(port), source, sender],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const output = await child.output();
  assertEquals(new TextDecoder().decode(output.stderr), "");
  return new TextDecoder().decode(output.stdout).trim();
}

async function withServer(
  args: string[],
  test: (server: Awaited<ReturnType<typeof startServer>>) => Promise<void>,
  dnsPort: number = dns.port,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-auth-" });
  const server = await startServer(
    [
      "--authentication",
      "on",
      "--dns-server",
      `127.0.0.1:${dnsPort}`,
      "--maildir",
      `${dir}/Maildir`,
      "--no-tls",
      ...args,
    ],
    { maildir: dir, useTestCert: false },
  );
  try {
    await test(server);
  } finally {
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

function ourResults(stored: string): string[] {
  return stored.split(/\n(?![ \t])/).filter((field) =>
    /^Authentication-Results:\s*mx\.test;/i.test(field)
  );
}

Deno.test("a signed message passes SPF, DKIM and DMARC, and a forged result of ours is gone", async () => {
  await withServer([], async (server) => {
    const forged = "Authentication-Results: mx.test; dmarc=pass header.from=example.test\r\n" +
      "Authentication-Results: other.example; spf=pass\r\n";
    // Fields added after signing are not covered by the signature, as a forger's are not.
    const text = forged + await signed("example.test", message("alice@example.test", "genuine"));
    assertMatch(await send(server.port, text), /^250 /);
    const [stored] = await readMessages(`${server.maildir}/Maildir`);
    const results = ourResults(stored);
    assertEquals(results.length, 1, stored);
    assertMatch(results[0], /dkim=pass header\.i=@example\.test header\.s=sel/);
    assertMatch(results[0], /spf=pass .*smtp\.mailfrom=alice@example\.test/);
    assertMatch(results[0], /dmarc=pass .*header\.from=example\.test/);
    assert(!stored.includes("dmarc=pass header.from=example.test\n"), "the forged field is gone");
    assertStringIncludes(stored, "Authentication-Results: other.example; spf=pass\n");
    // Ours comes first, under our own trace fields, above the message's.
    assert(stored.indexOf(results[0]) < stored.indexOf("DKIM-Signature:"));
    assert(stored.indexOf("Received: from mail.example.test") < stored.indexOf(results[0]));
    const line = server.logs.find((record) => String(record.message).includes("Delivered"));
    assertStringIncludes(
      String(line?.message),
      "authentication spf=pass dkim=pass dmarc=pass (p=reject) arc=none",
    );
  });
});

Deno.test("a changed body or header breaks DKIM; SPF from 127.0.0.2 fails; each is recorded", async () => {
  await withServer([], async (server) => {
    const body = (await signed("example.test", message("alice@example.test", "body")))
      .replace("real signer", "forger");
    const header = (await signed("example.test", message("alice@example.test", "header")))
      .replace("Subject: header", "Subject: header changed");
    const spf = await signed("example.test", message("alice@example.test", "spf"));
    // DMARC still passes each: SPF or DKIM, aligned, is enough.
    assertMatch(await send(server.port, body), /^250 /);
    assertMatch(await send(server.port, header), /^250 /);
    assertMatch(await send(server.port, spf, { source: "127.0.0.2" }), /^250 /);
    const stored = await readMessages(`${server.maildir}/Maildir`);
    const bySubject = (subject: string) =>
      ourResults(stored.find((text) => text.includes(`Subject: ${subject}\n`))!)[0];
    assertMatch(bySubject("body"), /dkim=neutral \(body hash did not verify\)/);
    assertMatch(bySubject("header changed"), /dkim=fail/);
    assertMatch(bySubject("spf"), /spf=fail .*does not designate 127\.0\.0\.2/);
    assertMatch(bySubject("spf"), /dkim=pass/);
  });
});

Deno.test("DMARC p=reject that fails is 550 5.7.1 at the end of DATA and nothing is stored", async () => {
  await withServer([], async (server) => {
    const forged = message("ceo@example.test", "pay this invoice");
    const reply = await send(server.port, forged, { source: "127.0.0.2" });
    assertMatch(reply, /^550 5\.7\.1 Message rejected by the DMARC policy of example\.test/);
    assertEquals(await readMessages(`${server.maildir}/Maildir`), []);
  });
});

Deno.test("DMARC p=quarantine that fails goes to Junk, which Dovecot shows as folder Junk", async () => {
  let dovecot: Dovecot | undefined;
  await withServer([], async (server) => {
    const maildir = `${server.maildir}/Maildir`;
    assertMatch(
      await send(server.port, message("x@quar.test", "quarantined"), {
        source: "127.0.0.2",
        sender: "x@quar.test",
      }),
      /^250 /,
    );
    assertMatch(
      await send(server.port, await signed("quar.test", message("x@quar.test", "fine")), {
        sender: "x@quar.test",
      }),
      /^250 /,
    );
    assertEquals((await newFiles(`${maildir}/.Junk`)).length, 1);
    try {
      dovecot = await startDovecot(server.maildir, maildir);
      const folders = await imapFolders(dovecot.port);
      assertEquals(folders.Junk, ["quarantined"]);
      assertEquals(folders.INBOX, ["fine"]);
    } finally {
      await dovecot?.stop();
    }
  });
});

Deno.test("with the DNS server dead the message is still delivered, with temperror, in bounded time", async () => {
  const dead = await startDns({ txt: {} });
  await dead.stop();
  // Both policies at once: each waits out the same timeouts.
  const policies = [["deliver", /^250 /], ["tempfail", /^451 4\.4\.3 /]] as const;
  await Promise.all(policies.map(async ([policy, expected]) => {
    await withServer(["--dns-temperror", policy], async (server) => {
      const started = Date.now();
      const reply = await send(
        server.port,
        await signed("example.test", message("alice@example.test", "dns")),
      );
      const took = Date.now() - started;
      assertMatch(reply, expected);
      assert(took < 12_000, `took ${took} ms`);
      const stored = await readMessages(`${server.maildir}/Maildir`);
      if (policy === "deliver") {
        assertEquals(stored.length, 1);
        assertMatch(ourResults(stored[0])[0], /spf=temperror/);
        assertMatch(ourResults(stored[0])[0], /dmarc=temperror/);
      } else {
        assertEquals(stored, []);
      }
    }, dead.port);
  }));
  await (dead as unknown as AsyncDisposable)[Symbol.asyncDispose]();
});

Deno.test("a hook with auth=dmarc fires for the signed message and not for the forged one", async () => {
  const calls: Record<string, unknown>[] = [];
  await using webhook = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (request) => {
      calls.push(await request.json());
      return new Response("ok");
    },
  );
  const url = `http://127.0.0.1:${webhook.addr.port}/deploy`;
  await withServer(
    [
      "--dmarc-reject",
      "off",
      "--hook",
      `test@mx.test=${url},from=@example.test,auth=dmarc`,
      "--hook-retry-delay",
      "0.1",
    ],
    async (server) => {
      assertMatch(
        await send(server.port, message("alice@example.test", "forged deploy"), {
          source: "127.0.0.2",
        }),
        /^250 /,
      );
      assertMatch(
        await send(
          server.port,
          await signed("example.test", message("alice@example.test", "real deploy")),
        ),
        /^250 /,
      );
      const deadline = Date.now() + 10_000;
      while (calls.length === 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await new Promise((resolve) => setTimeout(resolve, 300));
      assertEquals(calls.length, 1);
      const payload = calls[0] as {
        message: { subject: string };
        envelope: {
          authentication: {
            dmarc: { result: string; fromDomain: string };
            dkim: { domain: string; selector: string; result: string }[];
            spf: { result: string };
          };
        };
      };
      assertEquals(payload.message.subject, "real deploy");
      assertEquals(payload.envelope.authentication.dmarc.result, "pass");
      assertEquals(payload.envelope.authentication.dmarc.fromDomain, "example.test");
      assertEquals(payload.envelope.authentication.dkim[0].domain, "example.test");
      assertEquals(payload.envelope.authentication.dkim[0].selector, "sel");
      assertEquals(payload.envelope.authentication.spf.result, "pass");
      assertEquals((await readMessages(`${server.maildir}/Maildir`)).length, 2);
    },
  );
});

Deno.test("metrics count each method's results", async () => {
  await withServer(["--metrics", "127.0.0.1:0"], async (server) => {
    assertMatch(
      await send(server.port, await signed("example.test", message("alice@example.test", "m"))),
      /^250 /,
    );
    const address = server.logs.find((record) => String(record.message).startsWith("Metrics on"));
    const metricsUrl = String(address?.message).match(/http:\/\/\S+\/metrics/)![0].replaceAll(
      '"',
      "",
    );
    const text = await (await fetch(metricsUrl)).text();
    for (const method of ["spf", "dkim", "dmarc"]) {
      assertStringIncludes(
        text,
        `letterbox_authentication_results_total{method="${method}",result="pass"} 1`,
      );
    }
    assertStringIncludes(
      text,
      `letterbox_authentication_results_total{method="arc",result="none"} 1`,
    );
  });
});

// Not a test: the run() import is for readers who want to try a command by hand.
void run;
