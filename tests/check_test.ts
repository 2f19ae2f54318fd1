/**
 * `letterbox check` against real servers: Letterbox itself (every check
 * passes), a deliberately vulnerable tiny server written here (ends DATA at a
 * bare LF, keeps its buffer across STARTTLS), and Python's aiosmtpd.
 */

import { check } from "./_check.ts";
import { CERTS, have, readMessages, REPO, run, startServer } from "./_server.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./_assert.ts";

Deno.test("letterbox check passes every check against Letterbox itself, and delivers one probe", async () => {
  const server = await startServer([], { tlsListener: true });
  try {
    const result = await check(`127.0.0.1:${server.port}`, [
      "--tls-port",
      String(server.tlsPort),
      "--rcpt",
      "probe@example.com",
    ]);
    assertEquals(result.code, 0, result.stdout + result.stderr);
    const checks = result.lines.slice(1, -1);
    assert(checks.length >= 30, result.stdout);
    for (const line of checks) assert(line.startsWith("pass "), line);
    assertEquals(result.lines.at(-1), "0 failed, 0 warnings");
    const probes = await readMessages(server.maildir);
    // 13 sequences x 2, and the delivery test: each says in its subject that it is a probe.
    assertEquals(probes.length, 27);
    assert(probes.every((m) => /^Subject: letterbox check probe/m.test(m)));
  } finally {
    await server.stop();
  }
});

Deno.test("letterbox check --json reports the same checks as data, and usage errors exit 2", async () => {
  const server = await startServer();
  try {
    const result = await check(`127.0.0.1:${server.port}`, ["--json"]);
    assertEquals(result.code, 0);
    const report = JSON.parse(result.stdout);
    assertEquals(report.failed, 0);
    assert(report.results.some((r: { check: string }) => r.check === "STARTTLS command injection"));
    const bad = await run(Deno.execPath(), ["run", "-A", `${REPO}/main.ts`, "check", "--bogus"]);
    assertEquals(bad.code, 2);
    assertStringIncludes(bad.stderr, "Usage: letterbox check HOST[:PORT]");
  } finally {
    await server.stop();
  }
});

/** Starts tests/vulnerable_smtp.py (Python's ssl does its STARTTLS) and returns its port. */
async function vulnerableServer(): Promise<{ port: number; close(): Promise<void> }> {
  const child = new Deno.Command("python3", {
    args: [`${REPO}/tests/vulnerable_smtp.py`, CERTS.cert, CERTS.key],
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).spawn();
  const reader = child.stdout.getReader();
  let printed = "";
  while (!printed.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    printed += new TextDecoder().decode(value);
  }
  await reader.cancel();
  return {
    port: Number(printed.trim()),
    async close() {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await child.status;
    },
  };
}

Deno.test("against a server that ends DATA at a bare LF and keeps its buffer across STARTTLS, check FAILs both with evidence", async () => {
  const server = await vulnerableServer();
  try {
    const result = await check(`127.0.0.1:${server.port}`);
    assertEquals(result.code, 1, result.stdout);
    assertEquals(result.status('smuggling "\\n.\\n"'), "FAIL", result.stdout + result.stderr);
    assertEquals(
      result.status('smuggling "\\r\\n.\\r\\n"'),
      undefined,
      "not a probe: the real end",
    );
    const smuggled = result.lines.find((line) => line.includes('smuggling "\\n.\\n"'))!;
    assertMatch(smuggled, /the fake end was answered: .*354/);
    assertEquals(result.status("STARTTLS command injection"), "FAIL");
    const injection = result.lines.find((line) => line.includes("STARTTLS command injection"))!;
    assertMatch(injection, /before any command, the server sent "250 2\.0\.0 Ok\\r\\n"/);
    // What it gets right still passes: the check tells one from the other.
    assertEquals(result.status('smuggling "\\r.\\r"'), "pass");
  } finally {
    await server.close();
  }
});

Deno.test({
  name: "against aiosmtpd, check reports that a second STARTTLS inside TLS is accepted",
  ignore: !(await have("/usr/bin/python3")) ||
    (await run("/usr/bin/python3", ["-c", "import aiosmtpd"])).code !== 0,
  fn: async () => {
    const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (probe.addr as Deno.NetAddr).port;
    probe.close();
    const aiosmtpd = new Deno.Command("/usr/bin/python3", {
      args: [
        "-m",
        "aiosmtpd",
        "-n",
        "-l",
        `127.0.0.1:${port}`,
        "--tlscert",
        CERTS.cert,
        "--tlskey",
        CERTS.key,
        "--no-requiretls",
        "-c",
        "aiosmtpd.handlers.Sink",
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      for (let i = 0; i < 100; i++) {
        try {
          (await Deno.connect({ hostname: "127.0.0.1", port })).close();
          break;
        } catch {
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }
      const result = await check(`127.0.0.1:${port}`);
      assertEquals(result.status("no second STARTTLS inside TLS"), "FAIL", result.stdout);
      const line = result.lines.find((l) => l.includes("no second STARTTLS inside TLS"))!;
      assertMatch(line, /STARTTLS inside TLS -> 220/);
      assertEquals(result.code, 1);
    } finally {
      aiosmtpd.kill("SIGTERM");
      await aiosmtpd.status;
    }
  },
});
