/**
 * Email triggers: webhooks and commands for delivered messages, at least once,
 * surviving restarts, never slowing SMTP. Real HTTP servers and real processes.
 */

import { hmacHex } from "../src/hooks/queue.ts";
import {
  newFiles,
  REPO,
  run,
  serverPermissions,
  spawnServer,
  startServer,
  TestClient,
} from "./_server.ts";
import { assert, assertEquals, assertLess, assertMatch } from "./_assert.ts";

const ATTACHMENT = Uint8Array.from({ length: 2560 }, (_, i) => i % 256);

function attachmentMessage(): string {
  const base64 = btoa(String.fromCharCode(...ATTACHMENT)).replace(/.{76}/g, "$&\r\n");
  return [
    "From: Bob <bob@sender.test>",
    "To: alice@example.com",
    "Subject: build please",
    "Message-ID: <hook-1@sender.test>",
    'Content-Type: multipart/mixed; boundary="b"',
    "",
    "--b",
    "Content-Type: text/plain; charset=utf-8",
    "",
    "Deploy main.",
    "--b",
    'Content-Type: application/octet-stream; name="data.bin"',
    'Content-Disposition: attachment; filename="data.bin"',
    "Content-Transfer-Encoding: base64",
    "",
    base64,
    "--b--",
    "",
  ].join("\r\n");
}

async function send(port: number, to: string | string[], content: string): Promise<number> {
  const client = await TestClient.connect(port);
  try {
    await client.reply();
    await client.startMessage("bob@sender.test", typeof to === "string" ? [to] : to);
    await client.send(content + ".\r\n");
    const began = performance.now();
    assertEquals((await client.reply()).code, 250);
    return performance.now() - began;
  } finally {
    client.close();
  }
}

interface Received {
  headers: Headers;
  body: string;
}

/** A loopback HTTP server that answers with `status(n)` for the n-th request (from 1). */
function hookServer(status: (n: number) => number | Promise<number>) {
  const requests: Received[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (request) => {
      requests.push({ headers: request.headers, body: await request.text() });
      return new Response("", { status: await status(requests.length) });
    },
  );
  return { url: `http://127.0.0.1:${server.addr.port}/hook`, requests, server };
}

async function until(condition: () => boolean, ms = 15_000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) {
    if (condition()) return;
  }
  throw new Error("Timed out waiting");
}

Deno.test("a webhook gets the parsed message and envelope as signed JSON, attachments byte-exact", async () => {
  const target = hookServer(() => 200);
  const server = await startServer([
    "--hook",
    `alice@example.com=${target.url}`,
    "--hook-secret",
    "s3cret",
  ]);
  try {
    await send(server.port, "alice@example.com", attachmentMessage());
    await send(server.port, "carol@example.com", "Subject: no hook\r\n\r\nx\r\n");
    await until(() => target.requests.length >= 1);
    await new Promise((resolve) => setTimeout(resolve, 500));
    assertEquals(target.requests.length, 1, "only the matching message fires");
    const { headers, body } = target.requests[0];
    assertEquals(headers.get("content-type"), "application/json");
    const timestamp = headers.get("x-letterbox-timestamp")!;
    assertEquals(
      headers.get("x-letterbox-signature"),
      `sha256=${await hmacHex("s3cret", `${timestamp}.${body}`)}`,
    );
    const payload = JSON.parse(body);
    assertEquals(payload.envelope.sender, "bob@sender.test");
    assertEquals(payload.envelope.recipients, ["alice@example.com"]);
    assertEquals(payload.envelope.clientAddress, "127.0.0.1");
    assertEquals(payload.envelope.heloName, "client.test");
    assertEquals(payload.message.subject, "build please");
    assertEquals(payload.message.messageId, "<hook-1@sender.test>");
    assertEquals(payload.message.from.address, "bob@sender.test");
    assertEquals(payload.message.text.trim(), "Deploy main.");
    const [attachment] = payload.message.attachments;
    assertEquals([attachment.filename, attachment.mimeType, attachment.size], [
      "data.bin",
      "application/octet-stream",
      2560,
    ]);
    assertEquals(Uint8Array.from(atob(attachment.content), (c) => c.charCodeAt(0)), ATTACHMENT);
    // Both messages are in new/; the payload names the hooked one. (Sorting
    // names does not give arrival order: the microseconds are not padded.)
    const hooked = [];
    for (const name of await newFiles(server.maildir)) {
      const path = `${server.maildir}/new/${name}`;
      if ((await Deno.readTextFile(path)).includes("<hook-1@sender.test>")) hooked.push(path);
    }
    assertEquals(payload.envelope.files, hooked);
  } finally {
    await server.stop();
    await target.server.shutdown();
  }
});

Deno.test("a failing webhook is retried, across a restart, until it answers 2xx", async () => {
  const target = hookServer((n) => n <= 2 ? 503 : 200);
  const root = await Deno.makeTempDir({ prefix: "letterbox-test-" });
  const args = ["--hook", `*=${target.url}`, "--hook-retry-delay", "0.3"];
  let server = await startServer(args, { maildir: root });
  try {
    await send(server.port, "alice@example.com", "Subject: retry me\r\n\r\nx\r\n");
    await until(() => target.requests.length >= 1);
    await server.stop();
    // The job waits on disk; a new process picks it up.
    server = await startServer(args, { maildir: root });
    await until(() => target.requests.length >= 3);
    await until(() => server.logs.some((l) => String(l.message).startsWith("Hook")));
    await new Promise((resolve) => setTimeout(resolve, 800));
    assertEquals(target.requests.length, 3, "no more calls after the 2xx");
    const ids = target.requests.map((r) => r.headers.get("x-letterbox-id"));
    assertEquals(new Set(ids).size, 1, "the same job each time");
    assertEquals([...Deno.readDirSync(`${root}/letterbox-hooks/jobs`)], []);
  } finally {
    await server.stop();
    await target.server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("an exec hook gets the raw message on stdin byte-exact, the envelope in its environment", async () => {
  const root = await Deno.makeTempDir({ prefix: "letterbox-test-" });
  const out = `${root}/out`;
  await Deno.mkdir(out);
  const script = `${root}/hook.sh`;
  await Deno.writeTextFile(
    script,
    `#!/bin/sh\ncat > "${out}/stdin"\nenv | grep ^LETTERBOX_ | sort > "${out}/env"\ncp "$LETTERBOX_PAYLOAD" "${out}/payload.json"\n`,
  );
  await Deno.chmod(script, 0o755);
  const server = await spawnServer([
    "--maildir",
    `${root}/mail/{user}`,
    "--hook",
    `@example.com=exec:${script}`,
  ], {
    maildir: root,
    permissions: [`--allow-run=${script}`],
  });
  try {
    // bcc@other.test does not match @example.com: the hook is not told of it (issue 15).
    await send(
      server.port,
      ["alice@example.com", "bcc@other.test"],
      "Subject: run me\r\n\r\n..dotted\r\nbytes \xff\r\n",
    );
    await until(() => server.logs.some((l) => String(l.message).startsWith("Hook")));
    const [file] = await newFiles(`${root}/mail/alice`);
    assertEquals(
      await Deno.readFile(`${out}/stdin`),
      await Deno.readFile(`${root}/mail/alice/new/${file}`),
    );
    const env = await Deno.readTextFile(`${out}/env`);
    assert(env.includes("LETTERBOX_SENDER=bob@sender.test\n"), env);
    assert(env.includes("LETTERBOX_RECIPIENT=alice@example.com\n"), env);
    const payload = JSON.parse(await Deno.readTextFile(`${out}/payload.json`));
    assertEquals(payload.message.subject, "run me");
    assertEquals(payload.envelope.recipients, ["alice@example.com"]);
    // ...nor of the other recipient's copy, whose Maildir would name it.
    assertEquals(payload.envelope.files, [`${root}/mail/alice/new/${file}`]);
  } finally {
    await server.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a hook target that never answers does not delay the SMTP reply", async () => {
  const { promise: never, resolve: release } = Promise.withResolvers<number>();
  const target = hookServer(() => never);
  const server = await startServer(["--hook", `*=${target.url}`, "--hook-timeout", "60"]);
  try {
    const times = [];
    for (let i = 0; i < 5; i++) {
      times.push(await send(server.port, "alice@example.com", `Subject: ${i}\r\n\r\nx\r\n`));
    }
    await until(() => target.requests.length >= 4);
    // deno-lint-ignore no-console
    console.log(
      `hooks: reply after DATA with a hung hook target: ${
        times.map((t) => t.toFixed(1)).join(", ")
      } ms`,
    );
    for (const time of times) assertLess(time, 1_000);
  } finally {
    await server.stop();
    release(200);
    await target.server.shutdown();
  }
});

Deno.test("hooks that could outgrow the heap are warned about at start-up, not refused", async () => {
  const target = hookServer(() => Promise.resolve(200));
  const heavy = await startServer([
    "--hook",
    `*=${target.url}`,
    "--hook-concurrency",
    "16",
    "--max-message-size",
    "100M",
  ]);
  const light = await startServer(["--hook", `*=${target.url}`]);
  try {
    const warned = (logs: Record<string, unknown>[]) =>
      logs.some((record) => String(record.message).includes("hook payloads may need"));
    assert(warned(heavy.logs));
    assert(!warned(light.logs));
  } finally {
    await heavy.stop();
    await light.stop();
    await target.server.shutdown();
  }
});

Deno.test("--hook-secret-file signs webhooks like --hook-secret; unsigned webhooks are warned about", async () => {
  const target = hookServer(() => 200);
  const dir = await Deno.makeTempDir({ prefix: "letterbox-secret-" });
  await Deno.writeTextFile(`${dir}/secret`, "fil3-secret\n", { mode: 0o600 });
  const signed = await startServer([
    "--hook",
    `alice@example.com=${target.url}`,
    "--hook-secret-file",
    `${dir}/secret`,
  ]);
  const unsigned = await startServer(["--hook", `alice@example.com=${target.url}`]);
  const warned = (logs: Record<string, unknown>[]) =>
    logs.some((record) => String(record.message).startsWith("Webhooks are unsigned"));
  try {
    assert(!warned(signed.logs));
    assert(warned(unsigned.logs));
    await send(signed.port, "alice@example.com", "Subject: signed\r\n\r\nx\r\n");
    await until(() => target.requests.length >= 1);
    const { headers, body } = target.requests[0];
    assertEquals(
      headers.get("x-letterbox-signature"),
      `sha256=${await hmacHex("fil3-secret", `${headers.get("x-letterbox-timestamp")}.${body}`)}`,
    );
  } finally {
    await signed.stop();
    await unsigned.stop();
    await target.server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("letterbox hooks list shows a job that gave up, and hooks retry plus a reload sends it again", async () => {
  let answer = 503;
  const target = hookServer(() => answer);
  const root = await Deno.makeTempDir({ prefix: "letterbox-test-" });
  const args = [
    "--maildir",
    root,
    "--hook",
    `*=${target.url}`,
    "--hook-retry-delay",
    "0.1",
    "--hook-retry-for",
    "1s",
  ];
  const cli = (command: string[]) =>
    run(Deno.execPath(), [
      "run",
      ...serverPermissions(root),
      `${REPO}/main.ts`,
      "hooks",
      ...command,
      ...args,
    ]);
  const server = await spawnServer(args, { maildir: root });
  try {
    await send(server.port, "alice@example.com", "Subject: replay me\r\n\r\nx\r\n");
    await until(() => server.logs.some((l) => String(l.message).includes("for good")));
    const listed = await cli(["list"]);
    assertEquals(listed.code, 0, listed.stderr);
    const [line] = listed.stdout.trim().split("\n");
    assertMatch(
      line,
      /^\S+\tfailed\t\*=http:\/\/127\.0\.0\.1:\d+\/hook\tmessage \w+\t\d+ attempts, gave up: HTTP 503$/,
    );
    const id = line.split("\t")[0];
    assertEquals((await cli(["retry", "no-such-job"])).code, 1);
    answer = 200;
    const retried = await cli(["retry", id]);
    assertEquals(retried.code, 0, retried.stderr);
    const calls = target.requests.length;
    server.process.kill("SIGHUP");
    await until(() => target.requests.length > calls);
    await until(() =>
      server.logs.some((l) =>
        String(l.message).startsWith("Hook") && String(l.message).includes("done")
      )
    );
    assertEquals(target.requests.at(-1)!.headers.get("x-letterbox-id"), id);
    assertEquals((await cli(["list"])).stdout, `No hook jobs in ${root}/letterbox-hooks\n`);
  } finally {
    await server.stop();
    await target.server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});
