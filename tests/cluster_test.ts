/**
 * Past one machine, on loopback: two Letterbox instances (equal MX hosts)
 * deliver by LMTP to a Dovecot proxy that routes each user to the backend
 * holding their mail (Dovecot's lmtp_proxy with proxy=y host= fields from
 * its passdb): alice on 127.0.0.2, bob on 127.0.0.3. Each user's mail is
 * read back over IMAP from their own backend.
 */

import { imapMessages } from "./_dovecot.ts";
import { canRunLmtpDovecot } from "./_lmtp_dovecot.ts";
import { freePort, run, startServer, TestClient } from "./_server.ts";
import { assertEquals, assertMatch } from "./_assert.ts";

interface Instance {
  readonly dir: string;
  stop(): Promise<void>;
}

/** A Dovecot on `address`, with `protocols` and the given passdb/userdb lines, its own group. */
async function dovecot(
  name: string,
  address: string,
  listeners: string,
  auth: string,
  users: string,
): Promise<Instance> {
  const dir = await Deno.makeTempDir({ prefix: `letterbox-cluster-${name}-` });
  await Deno.chmod(dir, 0o755);
  for (const sub of ["base", "state", "mail", "index"]) await Deno.mkdir(`${dir}/${sub}`);
  await Deno.writeTextFile(`${dir}/users`, users);
  assertEquals((await run("chgrp", ["dovecot", `${dir}/users`])).code, 0);
  await Deno.chmod(`${dir}/users`, 0o640);
  for (const sub of ["mail", "index"]) {
    assertEquals((await run("chown", ["-R", "nobody:nogroup", `${dir}/${sub}`])).code, 0);
  }
  await Deno.writeTextFile(
    `${dir}/dovecot.conf`,
    `
listen = ${address}
base_dir = ${dir}/base
state_dir = ${dir}/state
instance_name = letterbox-cluster-${name}-${freePort()}
log_path = ${dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_username_format = %Ln
first_valid_uid = 65534
first_valid_gid = 65534
mail_location = maildir:${dir}/mail/%n/Maildir:INDEX=${dir}/index/%n
${auth.replaceAll("USERS", `${dir}/users`).replaceAll("DIR", dir)}
${listeners}
`,
  );
  const child = new Deno.Command("setsid", {
    args: ["/usr/sbin/dovecot", "-F", "-c", `${dir}/dovecot.conf`],
    stdout: "null",
    stderr: "null",
    stdin: "null",
  }).spawn();
  return {
    dir,
    async stop() {
      await run("kill", ["-TERM", "--", `-${child.pid}`]);
      await Promise.race([child.status, new Promise((resolve) => setTimeout(resolve, 2000))]);
      if (!Deno.env.get("KEEP_CLUSTER")) {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    },
  };
}

async function listening(hostname: string, port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      (await Deno.connect({ hostname, port })).close();
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  throw new Error(`nothing listens on ${hostname}:${port}`);
}

const BACKEND_AUTH = `
protocols = imap lmtp
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n USERS
}
userdb {
  driver = passwd-file
  args = username_format=%n USERS
  default_fields = uid=nobody gid=nogroup home=DIR/mail/%n
}`;

function backendListeners(address: string, imap: number, lmtp: number): string {
  return `
service imap-login {
  inet_listener imap {
    address = ${address}
    port = ${imap}
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = ${address}
    port = ${lmtp}
  }
}`;
}

async function send(port: number, recipient: string, subject: string): Promise<string> {
  const client = await TestClient.connect(port);
  try {
    await client.reply();
    await client.command("EHLO client.sender.test");
    await client.command("MAIL FROM:<carol@sender.test>");
    const rcpt = await client.command(`RCPT TO:<${recipient}>`);
    if (rcpt.code !== 250) return rcpt.lines.join(" ");
    await client.command("DATA");
    await client.send(`From: carol@sender.test\r\nSubject: ${subject}\r\n\r\nHello.\r\n.\r\n`);
    return (await client.reply(30_000)).lines.join(" ");
  } finally {
    client.close();
  }
}

Deno.test({
  name:
    "two Letterbox MX hosts, one Dovecot LMTP proxy, two backends: each user's mail on their own backend",
  ignore: !canRunLmtpDovecot,
  fn: async () => {
    const [imapA, lmtpA, imapB, lmtpB, proxyPort] = [1, 2, 3, 4, 5].map(() => freePort());
    const backendA = await dovecot(
      "a",
      "127.0.0.2",
      backendListeners("127.0.0.2", imapA, lmtpA),
      BACKEND_AUTH,
      "alice:{PLAIN}secret::::::\n",
    );
    const backendB = await dovecot(
      "b",
      "127.0.0.3",
      backendListeners("127.0.0.3", imapB, lmtpB),
      BACKEND_AUTH,
      "bob:{PLAIN}secret::::::\n",
    );
    // The proxy knows where each user lives; it stores nothing itself.
    const proxy = await dovecot(
      "proxy",
      "127.0.0.1",
      `
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = ${proxyPort}
  }
}`,
      `
protocols = lmtp
lmtp_proxy = yes
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n USERS
}`,
      `alice:::::::proxy=y host=127.0.0.2 port=${lmtpA} nopassword=y\n` +
        `bob:::::::proxy=y host=127.0.0.3 port=${lmtpB} nopassword=y\n`,
    );
    const mx: Awaited<ReturnType<typeof startServer>>[] = [];
    try {
      await listening("127.0.0.2", lmtpA);
      await listening("127.0.0.3", lmtpB);
      await listening("127.0.0.1", proxyPort);
      for (let i = 0; i < 2; i++) {
        mx.push(
          await startServer(["--lmtp", `127.0.0.1:${proxyPort}`, "--no-tls"], {
            useTestCert: false,
          }),
        );
      }
      // Each MX host takes mail for both users, as equal-preference MX records spread it.
      for (const [i, server] of mx.entries()) {
        assertMatch(await send(server.port, "alice@example.com", `for alice via mx${i}`), /^250 /);
        assertMatch(await send(server.port, "bob@example.com", `for bob via mx${i}`), /^250 /);
      }
      // An unknown user is refused at RCPT by the proxy's passdb, through both hops.
      assertMatch(await send(mx[0].port, "nobody@example.com", "lost"), /^5\d\d /);
      const subjects = async (port: number, user: string) =>
        ((await imapMessages(port, user, "127.0.0.2")).INBOX ?? []).map((m) =>
          /^Subject: ([^\r\n]*)/m.exec(m)?.[1]
        ).sort();
      assertEquals(await subjects(imapA, "alice"), ["for alice via mx0", "for alice via mx1"]);
      const bob = ((await imapMessages(imapB, "bob", "127.0.0.3")).INBOX ?? []).map((m) =>
        /^Subject: ([^\r\n]*)/m.exec(m)?.[1]
      ).sort();
      assertEquals(bob, ["for bob via mx0", "for bob via mx1"]);
    } finally {
      for (const server of mx) await server.stop();
      await proxy.stop();
      await backendA.stop();
      await backendB.stop();
    }
  },
});
