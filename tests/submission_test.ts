/**
 * A real BDAT sender: Dovecot's submission server relays to Letterbox with
 * BDAT when Letterbox offers CHUNKING (one chunk for a small message, chunks
 * of 128 KiB for a large one). Submitted with swaks, stored byte-exact.
 */

import { passwdFileUsers } from "./_lmtp_dovecot.ts";
import { freePort, have, readMessages, run, startServer } from "./_server.ts";
import { assert, assertEquals, assertMatch } from "./_assert.ts";

const DOVECOT = "/usr/sbin/dovecot";
const SUBMISSION = "/usr/lib/dovecot/submission";

function submissionConfig(dir: string, port: number, relayPort: number): string {
  return `
protocols = submission
listen = 127.0.0.1
base_dir = ${dir}/base
state_dir = ${dir}/state
instance_name = letterbox-submission-${port}
log_path = ${dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_username_format = %Ln
hostname = sub.example.test
first_valid_uid = 65534
first_valid_gid = 65534
mail_location = maildir:${dir}/mail/%n/Maildir
${passwdFileUsers(dir)}
submission_relay_host = 127.0.0.1
submission_relay_port = ${relayPort}
submission_relay_trusted = yes
submission_relay_ssl = no
service submission-login {
  inet_listener submission {
    address = 127.0.0.1
    port = ${port}
  }
}
`;
}

Deno.test({
  name: "Dovecot's submission server relays small and large messages by BDAT, stored byte-exact",
  ignore: !(await have(DOVECOT)) || !(await Deno.stat(SUBMISSION).then(() => true, () => false)) ||
    !(await have("swaks")) || Deno.uid() !== 0,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "letterbox-submission-" });
    const server = await startServer([
      "--maildir",
      `${dir}/Maildir`,
      "--no-tls",
      "--log-level",
      "debug",
    ], {
      maildir: dir,
      useTestCert: false,
    });
    let dovecot: Deno.ChildProcess | undefined;
    try {
      for (const sub of ["base", "state", "mail"]) await Deno.mkdir(`${dir}/${sub}`);
      await Deno.writeTextFile(`${dir}/users`, "alice:{PLAIN}secret::::::\n");
      assertEquals((await run("chgrp", ["dovecot", `${dir}/users`])).code, 0);
      await Deno.chmod(`${dir}/users`, 0o640);
      await Deno.chmod(dir, 0o755);
      assertEquals((await run("chown", ["-R", "nobody:nogroup", `${dir}/mail`])).code, 0);
      const port = freePort();
      await Deno.writeTextFile(`${dir}/dovecot.conf`, submissionConfig(dir, port, server.port));
      dovecot = new Deno.Command(DOVECOT, {
        args: ["-F", "-c", `${dir}/dovecot.conf`],
        stdout: "null",
        stderr: "null",
        stdin: "null",
      }).spawn();
      const body = (lines: number) =>
        Array.from({ length: lines }, (_, i) => `line ${i} ${"x".repeat(60)}`).join("\r\n");
      const messages = {
        small: `Subject: small\r\nFrom: alice@sub.example.test\r\nTo: user@example.com\r\n\r\n${
          body(3)
        }\r\n`,
        // Over 200 KB: Dovecot sends it in chunks of 128 KiB.
        large: `Subject: large\r\nFrom: alice@sub.example.test\r\nTo: user@example.com\r\n\r\n${
          body(3200)
        }\r\n`,
      };
      for (const [name, text] of Object.entries(messages)) {
        await Deno.writeTextFile(`${dir}/${name}.eml`, text);
        let result;
        for (let attempt = 0; attempt < 50; attempt++) {
          result = await run("swaks", [
            "--server",
            `127.0.0.1:${port}`,
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "secret",
            "--from",
            "alice@sub.example.test",
            "--to",
            "user@example.com",
            "--data",
            `@${dir}/${name}.eml`,
          ]);
          if (!/Connection refused/.test(result.stdout + result.stderr)) break;
          await new Promise((resolve) => setTimeout(resolve, 100)); // Dovecot still starting
        }
        assertMatch(result!.stdout, /<- {2}250 2\.0\.0 Ok: queued as \w+/, result!.stdout);
      }
      const chunks = server.logs.filter((l) => String(l.message).startsWith("BDAT chunk of"));
      const last = chunks.filter((l) => String(l.message).includes("(LAST)"));
      assertEquals(last.length, 2, "both messages came by BDAT");
      assert(chunks.length >= 3, `the large one in several chunks: ${chunks.length} in all`);
      const stored = await readMessages(`${dir}/Maildir`);
      for (const text of Object.values(messages)) {
        const expected = text.replaceAll("\r\n", "\n");
        const body = expected.slice(expected.indexOf("\n\n"));
        // swaks ends the data with one more line end of its own.
        assert(stored.some((message) => message.includes(body)), "stored byte-exact");
      }
      const delivered = server.logs.filter((l) => String(l.message).startsWith("Delivered"));
      assert(delivered.every((l) => (l.properties as Record<string, unknown>).transfer === "BDAT"));
    } finally {
      if (dovecot) {
        dovecot.kill("SIGTERM");
        await dovecot.status;
      }
      await server.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
