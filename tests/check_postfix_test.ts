/**
 * `letterbox check` against a real Postfix 3.7, a private instance on
 * loopback (tests/postfix_instance.sh), with Debian's defaults and with the
 * bare-newline settings that close the smuggling hole. A file of its own: it
 * is the slowest of the check tests, and files run in parallel.
 */

import { check } from "./_check.ts";
import { freePort, have, REPO, run } from "./_server.ts";
import { assertEquals, assertMatch } from "./_assert.ts";

/** A private Postfix on a free loopback port, with `settings` applied; stopped by the caller. */
async function startPostfix(settings: string[]): Promise<{ port: number; stop(): Promise<void> }> {
  // Postfix's unprivileged user must reach its data folder: not under a 0700 temp dir.
  const dir = await Deno.makeTempDir({ prefix: "letterbox-postfix-" });
  const port = freePort();
  const started = await run("bash", [
    `${REPO}/tests/postfix_instance.sh`,
    dir,
    String(port),
    ...settings,
  ]);
  assertEquals(started.code, 0, started.stderr);
  const pid = Number(started.stdout.trim());
  return {
    port,
    async stop() {
      Deno.kill(pid, "SIGTERM");
      // The master passes SIGTERM to its process group; wait until none is left.
      for (let i = 0; i < 100 && (await run("pgrep", ["-g", String(pid)])).code === 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test({
  name:
    "against a real Postfix: Debian's defaults fail the bare-LF smuggling checks, and so does " +
    "reject with its own network exempt; reject without exclusions passes",
  ignore: Deno.uid() !== 0 || !(await have("/usr/lib/postfix/sbin/master")),
  fn: async () => {
    const bareLf = ['smuggling "\\n.\\n"', 'smuggling "\\n.\\r\\n"', 'smuggling "\\r\\n.\\n"'];
    const cases: [string, string[], string][] = [
      ["Debian's defaults (smtpd_forbid_bare_newline = no)", [], "FAIL"],
      [
        "reject, with the exclusions' default ($mynetworks) covering the client",
        ["smtpd_forbid_bare_newline = reject", "mynetworks = 127.0.0.0/8"],
        "FAIL",
      ],
      [
        "reject, no exclusions",
        [
          "smtpd_forbid_bare_newline = reject",
          "smtpd_forbid_bare_newline_exclusions =",
          "mynetworks = 127.0.0.0/8",
        ],
        "pass",
      ],
    ];
    for (const [name, settings, expected] of cases) {
      const postfix = await startPostfix(settings);
      try {
        const result = await check(`127.0.0.1:${postfix.port}`, ["--rcpt", "probe@example.test"]);
        for (const probe of bareLf) {
          assertEquals(result.status(probe), expected, `${name}: ${probe}\n${result.stdout}`);
        }
        if (expected === "FAIL") {
          const line = result.lines.find((l) => l.includes(bareLf[0]))!;
          assertMatch(line, /the fake end was answered: "250 2\.0\.0 Ok: queued as/);
          assertEquals(result.code, 1);
        } else {
          assertEquals(result.lines.at(-1), "0 failed, 0 warnings", result.stdout);
          assertEquals(result.code, 0);
        }
        assertEquals(result.status("delivery of a probe message"), "pass", result.stdout);
      } finally {
        await postfix.stop();
      }
    }
  },
});
