/**
 * Limits, timeouts and hostile input against the real program.
 */

import { SMUGGLING_SEQUENCES } from "./_smuggling.ts";
import {
  newFiles,
  readMessages,
  REPO,
  run,
  serverPermissions,
  spawnServer,
  startServer,
  TestClient,
} from "./_server.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./_assert.ts";

async function greeted(port: number): Promise<TestClient> {
  const client = await TestClient.connect(port);
  assertEquals((await client.reply()).code, 220);
  return client;
}

Deno.test("past --max-connections-per-ip the next client gets 421 4.7.0 and is closed at once", async () => {
  const server = await startServer(["--max-connections-per-ip", "3"]);
  const clients = await Promise.all([1, 2, 3].map(() => greeted(server.port)));
  const extra = await TestClient.connect(server.port);
  try {
    assertEquals(
      await extra.readToClose(),
      "421 4.7.0 Error: too many connections from your address, try again later\r\n",
    );
    clients[0].close();
    await new Promise((resolve) => setTimeout(resolve, 200));
    const again = await greeted(server.port);
    again.close();
  } finally {
    for (const client of clients) client.close();
    extra.close();
    await server.stop();
  }
});

Deno.test("past --max-connections every client gets 421 4.7.0", async () => {
  const server = await startServer(["--max-connections", "2"]);
  const clients = await Promise.all([1, 2].map(() => greeted(server.port)));
  const extra = await TestClient.connect(server.port);
  try {
    assertEquals(
      await extra.readToClose(),
      "421 4.7.0 Error: too many connections, try again later\r\n",
    );
  } finally {
    for (const client of clients) client.close();
    extra.close();
    await server.stop();
  }
});

Deno.test("a client that talks before the greeting gets 554 5.5.1 and is closed", async () => {
  const server = await startServer(["--greet-delay", "0.5"]);
  const early = await TestClient.connect(server.port);
  const polite = await TestClient.connect(server.port);
  try {
    await early.send("EHLO spambot\r\nMAIL FROM:<a@b.test>\r\n");
    assertEquals(
      await early.readToClose(),
      "554 5.5.1 Error: talking before the greeting is not allowed\r\n",
    );
    assertEquals((await polite.reply()).text, "220 mx.test ESMTP Letterbox\r\n");
    assertEquals((await polite.command("EHLO polite.test")).code, 250);
  } finally {
    early.close();
    polite.close();
    await server.stop();
  }
});

Deno.test("a sender that stalls inside DATA past --data-timeout gets 421 4.4.2 and nothing is stored", async () => {
  const server = await startServer(["--data-timeout", "1"]);
  const client = await greeted(server.port);
  try {
    await client.startMessage("a@b.test", ["x@y.test"]);
    await client.send("Subject: slow\r\n\r\npart");
    assertEquals(
      await client.readToClose(5_000),
      "421 4.4.2 Error: timeout exceeded, closing connection\r\n",
    );
    assertEquals(await newFiles(server.maildir), []);
    assertEquals([...Deno.readDirSync(`${server.maildir}/tmp`)].length, 0);
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("each non-standard end-of-data sequence is content: one message, holding the forged text", async () => {
  const sequences = SMUGGLING_SEQUENCES;
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    await client.command("EHLO client.test");
    for (const [i, sequence] of sequences.entries()) {
      await client.startMessage("good@sender.test", ["x@y.test"], { ehlo: false });
      await client.send(
        `Subject: smuggle ${i}\r\n\r\nbefore${sequence}MAIL FROM:<forged@evil.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n` +
          `Subject: forged ${i}\r\n\r\nforged\r\n.\r\n`,
      );
      assertMatch((await client.reply()).text, /^250 2\.0\.0 Ok/, JSON.stringify(sequence));
      // Whatever followed the real end is commands again: nothing was left over.
      assertEquals((await client.command("NOOP")).code, 250, JSON.stringify(sequence));
    }
    const messages = await readMessages(server.maildir);
    assertEquals(messages.length, sequences.length);
    for (const message of messages) {
      assertStringIncludes(message, "Return-Path: <good@sender.test>");
      assertStringIncludes(message, "MAIL FROM:<forged@evil.test>");
      assertStringIncludes(message, "Subject: forged");
    }
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("recipients that could name a path outside the Maildir root are refused at RCPT", async () => {
  const root = await Deno.makeTempDir({ prefix: "letterbox-test-" });
  const server = await startServer([
    "--maildir",
    `${root}/mail/{domain}/{user}`,
    "--max-errors",
    "100",
  ], { maildir: root });
  const client = await greeted(server.port);
  const hostile = [
    '"../../etc"@example.com',
    '".."@example.com',
    '"a/../../b"@example.com',
    "a/b@example.com",
    '"a\\\\b"@example.com',
    ".hidden@example.com",
    '".hidden"@example.com',
    '"a\\/b"@example.com',
    '"x\\\x00y"@example.com',
    `${"a".repeat(65)}@example.com`,
    `"${"a".repeat(200)}"@example.com`,
    `user@${"a".repeat(64)}.example.com`,
    "user@example..com",
    "user@.example.com",
    "+tag@example.com",
    "..%2f..%2fetc@example.com",
  ];
  // Percent signs and look-alike dots are not decoded or normalised anywhere,
  // so these are odd but literal names inside the root.
  const literal = [
    "a%2f%2e%2e%2fetc@example.com",
    "%2e%2e@example.com",
    "\u2024\u2024@example.com",
  ];
  try {
    await client.command("EHLO client.test");
    await client.command("MAIL FROM:<> SMTPUTF8");
    for (const address of hostile) {
      const reply = await client.command(`RCPT TO:<${address}>`);
      assertMatch(reply.text, /^(550 5\.1\.3|501 5\.1\.3|500 5\.5\.2)/, address);
    }
    for (const address of literal) {
      assertEquals((await client.command(`RCPT TO:<${address}>`)).code, 250, address);
    }
    await client.command("DATA");
    await client.send("Subject: x\r\n\r\nx\r\n.\r\n");
    assertEquals((await client.reply()).code, 250);
    assertEquals([...Deno.readDirSync(root)].map((e) => e.name), ["mail"]);
    assertEquals([...Deno.readDirSync(`${root}/mail`)].map((e) => e.name), ["example.com"]);
    const boxes = [...Deno.readDirSync(`${root}/mail/example.com`)].map((e) => e.name).sort();
    assertEquals(boxes, ["%2e%2e", "a%2f%2e%2e%2fetc", "\u2024\u2024"].sort());
  } finally {
    client.close();
    await server.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("CR, LF and control characters in EHLO, addresses or parameters never reach a header", async () => {
  const server = await startServer();
  const client = await greeted(server.port);
  try {
    assertEquals((await client.command("EHLO evil\rX-Injected: 1")).code, 500);
    assertEquals((await client.command("EHLO evil\x0bname")).code, 500);
    await client.command("EHLO client.test");
    assertEquals((await client.command("MAIL FROM:<a@b.test>\rX-Injected: 1")).code, 500);
    assertEquals((await client.command("MAIL FROM:<a\x01b@b.test>")).code, 500);
    await client.command("MAIL FROM:<a@b.test>");
    assertEquals((await client.command('RCPT TO:<"x\rX-Injected: 1"@y.test>')).code, 500);
    await client.command("RCPT TO:<x@y.test>");
    await client.command("DATA");
    await client.send("Subject: clean\r\n\r\nbody\r\n.\r\n");
    assertEquals((await client.reply()).code, 250);
    const [message] = await readMessages(server.maildir);
    assert(!message.includes("X-Injected"));
    const header = message.slice(0, message.indexOf("\n\n"));
    const received = header.match(/^Received:.*(\n\t.*)*/m)?.[0] ?? "";
    assertEquals(received.split("\n").every((line, i) => i === 0 || line.startsWith("\t")), true);
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("files older than 36 hours in tmp/ are removed at start; newer ones stay", async () => {
  const root = await Deno.makeTempDir({ prefix: "letterbox-test-" });
  for (const box of ["a.test/alice", "b.test/bob"]) {
    await Deno.mkdir(`${root}/${box}/tmp`, { recursive: true });
    await Deno.writeTextFile(`${root}/${box}/tmp/old`, "debris");
    await Deno.utime(
      `${root}/${box}/tmp/old`,
      new Date(Date.now() - 37 * 3600_000),
      new Date(Date.now() - 37 * 3600_000),
    );
    await Deno.writeTextFile(`${root}/${box}/tmp/recent`, "maybe in use");
  }
  const server = await startServer(["--maildir", `${root}/{domain}/{user}`], { maildir: root });
  try {
    for (const box of ["a.test/alice", "b.test/bob"]) {
      assertEquals([...Deno.readDirSync(`${root}/${box}/tmp`)].map((e) => e.name), ["recent"]);
    }
    assert(server.logs.some((l) => String(l.message).startsWith("Removed 2 stale files")));
  } finally {
    await server.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a mailbox whose new/ or whole root was removed while the server runs is made again by the next message", async () => {
  // The sandboxed program, as it ships: the root's parent is beyond its grant.
  const root = await Deno.makeTempDir({ prefix: "letterbox-removed-" });
  const server = await spawnServer(["--no-tls", "--maildir", `${root}/{user}`], {
    maildir: root,
    useTestCert: false,
  });
  const client = await TestClient.connect(server.port);
  const deliver = async (subject: string) => {
    await client.startMessage("a@sender.test", ["rcpt@example.com"], { ehlo: false });
    await client.send(`Subject: ${subject}\r\n\r\nbody\r\n.\r\n`);
    return await client.reply();
  };
  try {
    await client.reply();
    assertEquals((await client.command("EHLO client.test")).code, 250);
    assertEquals((await deliver("first")).code, 250);

    // Someone removes new/ (tmp/ stays): it used to answer 451 to every message from then on.
    await Deno.remove(`${root}/rcpt/new`, { recursive: true });
    const second = await deliver("after new/ went");
    assertEquals(second.code, 250, second.text);
    assertEquals((await readMessages(`${root}/rcpt`)).map((m) => /Subject: (.*)/.exec(m)?.[1]), [
      "after new/ went",
    ]);
    assertEquals([...Deno.readDirSync(`${root}/rcpt/tmp`)], []);

    // And the whole root.
    await Deno.remove(root, { recursive: true });
    const third = await deliver("after the root went");
    assertEquals(third.code, 250, third.text);
    assertEquals((await readMessages(`${root}/rcpt`)).length, 1);
  } finally {
    client.close();
    await server.stop();
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
});

Deno.test("the server process cannot write outside the folders its permissions name, and says so at start", async () => {
  // The sandbox allows writing under `allowed`, but the Maildir is configured
  // outside it: the start must fail with one line (issue 15; it used to pass
  // start-up and answer 451 to every message), and nothing may appear there.
  const allowed = await Deno.makeTempDir({ prefix: "letterbox-allowed-" });
  const outside = await Deno.makeTempDir({ prefix: "letterbox-outside-" });
  try {
    const result = await run(Deno.execPath(), [
      "run",
      ...serverPermissions(allowed),
      `${REPO}/main.ts`,
      "--listen",
      "127.0.0.1:0",
      "--maildir",
      `${outside}/Maildir`,
      "--no-tls",
    ]);
    assertEquals(result.code, 2);
    assertEquals(
      result.stderr,
      `letterbox: Cannot write to the Maildir root "${outside}/Maildir": Letterbox may not write ` +
        `to ${outside}/Maildir; grant it with make run PERMISSIONS=--allow-write=${outside}/Maildir, ` +
        `or build with make build MAIL_ROOT=${outside}/Maildir\n`,
    );
    assertEquals([...Deno.readDirSync(outside)], []);
  } finally {
    await Deno.remove(allowed, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("a Maildir root that cannot hold files stops the start with one line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-notdir-" });
  try {
    await Deno.writeTextFile(`${dir}/file`, "not a folder");
    const error = await startServer(["--maildir", `${dir}/file/{user}`]).then(
      (server) => server.stop().then(() => undefined),
      (error) => error as Error,
    );
    assertStringIncludes(String(error?.message), `Cannot write to the Maildir root "${dir}/file"`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("/healthz turns unhealthy with the reason when deliveries keep failing, and recovers", async () => {
  const root = await Deno.makeTempDir({ prefix: "letterbox-health-" });
  const server = await startServer(["--metrics", "127.0.0.1:0", "--maildir", `${root}/{user}`], {
    maildir: root,
  });
  const line = server.logs.find((l) => String(l.message).startsWith("Metrics on"));
  const healthz = `http://${(line?.properties as { address: string }).address}/healthz`;
  const health = async () => {
    const response = await fetch(healthz);
    return `${response.status} ${await response.text()}`;
  };
  const send = async () => {
    const client = await greeted(server.port);
    try {
      await client.startMessage("a@b.test", ["alice@x.test"]);
      await client.send("Subject: h\r\n\r\nx\r\n.\r\n");
      return (await client.reply()).code;
    } finally {
      client.close();
    }
  };
  try {
    assertEquals(await health(), "200 ok\n");
    // alice's Maildir path is taken by a file: every delivery to her fails.
    await Deno.writeTextFile(`${root}/alice`, "in the way");
    for (let i = 0; i < 3; i++) assertEquals(await send(), 451);
    assertMatch(await health(), /^503 unhealthy: the last 3 deliveries failed: .+\n$/);
    await Deno.remove(`${root}/alice`);
    assertEquals(await send(), 250);
    assertEquals(await health(), "200 ok\n");
  } finally {
    await server.stop();
    await Deno.remove(root, { recursive: true });
  }
});

const RESET_FLOOD = `
import socket, struct, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
end = time.time() + seconds
count = 0
while time.time() < end:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        pass
    s.close()  # SO_LINGER 0: a reset, often before the server accepted
    count += 1
print(count)
`;

Deno.test("a flood of connections reset before accept does not stall an honest client's greeting", async () => {
  const server = await startServer([
    "--metrics",
    "127.0.0.1:0",
    "--max-connections-per-ip",
    "100000",
  ]);
  const greetingMs = async () => {
    const started = performance.now();
    const client = await greeted(server.port);
    const ms = performance.now() - started;
    await client.command("QUIT");
    client.close();
    return ms;
  };
  try {
    const idle: number[] = [];
    for (let i = 0; i < 10; i++) idle.push(await greetingMs());
    const flood = new Deno.Command("python3", {
      args: ["-c", RESET_FLOOD, String(server.port), "3"],
      stdout: "piped",
    }).spawn();
    const during: number[] = [];
    const stop = Date.now() + 2500;
    await new Promise((resolve) => setTimeout(resolve, 200));
    while (Date.now() < stop) {
      during.push(await greetingMs());
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const resets = Number(new TextDecoder().decode((await flood.output()).stdout).trim());
    const metricsLine = server.logs.find((l) => String(l.message).startsWith("Metrics on"));
    const address = (metricsLine?.properties as { address: string }).address;
    const metrics = await (await fetch(`http://${address}/metrics`)).text();
    const skipped = Number(
      /letterbox_accept_errors_total\{kind="connection"\} (\d+)/.exec(metrics)?.[1] ?? 0,
    );
    const median = (values: number[]) => [...values].sort((a, b) => a - b)[values.length >> 1];
    // deno-lint-ignore no-console
    console.log(
      `reset flood: ${resets} resets, ${skipped} failed accepts skipped; honest greeting median ` +
        `${median(idle).toFixed(1)} ms idle, ${median(during).toFixed(1)} ms during the flood ` +
        `(worst ${Math.max(...during).toFixed(1)} ms, ${during.length} tries)`,
    );
    // Backing off 100 ms per failed accept made the median 0.7-1.1 s in the report.
    assert(median(during) < Math.max(10 * median(idle), 50), `median ${median(during)} ms`);
    // A connect can still wait for the kernel's 1 s SYN retry when the flood fills the listen
    // backlog (seen under the parallel test run); that is the kernel's queue, not the accept loop.
    assert(Math.max(...during) < 5000, `worst ${Math.max(...during)} ms`);
    assert(!server.logs.some((l) => String(l.message).startsWith("Accept failed")));
  } finally {
    await server.stop();
  }
});

Deno.test("--reject-unauth-pipelining closes with 554 5.5.0 when the message comes before the 354; off by default", async () => {
  const batch = "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n" +
    "Subject: did not wait\r\n\r\nbody\r\n.\r\nQUIT\r\n";
  for (const strict of [true, false]) {
    const server = await startServer(strict ? ["--reject-unauth-pipelining"] : []);
    const client = await greeted(server.port);
    try {
      await client.send(batch);
      const replies = await client.readToClose();
      if (strict) {
        assertMatch(replies, /\r\n554 5\.5\.0 Error: SMTP protocol synchronization\r\n$/);
        assertEquals(await newFiles(server.maildir), []);
      } else {
        assertMatch(replies, /354 [^\n]*\r\n250 2\.0\.0 Ok: queued as \w+\r\n221 /);
        assertEquals((await newFiles(server.maildir)).length, 1);
      }
    } finally {
      client.close();
      await server.stop();
    }
  }
});
