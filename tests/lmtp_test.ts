/**
 * LMTP delivery into a real Dovecot (dovecot-lmtpd, dovecot-imapd,
 * dovecot-sieve): a private instance on loopback ports with passwd-file users
 * served as nobody, a Sieve script for one user and a tiny quota for two.
 * What Letterbox hands over is read back over IMAP.
 */

import { freePort, have, run, startServer, TestClient } from "./_server.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./_assert.ts";

const DOVECOT = "/usr/sbin/dovecot";
const canRun = Deno.uid() === 0 && await have(DOVECOT) && await have("/usr/lib/dovecot/lmtp");

interface Dovecot {
  readonly dir: string;
  readonly lmtpPort: number;
  readonly imapPort: number;
  start(): Promise<void>;
  /** SIGKILL to the whole instance (master and children): a crash. */
  kill(): Promise<void>;
  stop(): Promise<void>;
}

function config(dir: string, lmtpPort: number, imapPort: number): string {
  return `
protocols = imap lmtp
listen = 127.0.0.1
base_dir = ${dir}/base
state_dir = ${dir}/state
instance_name = letterbox-lmtp-${lmtpPort}
log_path = ${dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_username_format = %Ln
first_valid_uid = 65534
first_valid_gid = 65534
mail_location = maildir:${dir}/mail/%n/Maildir:INDEX=${dir}/index/%n
mail_plugins = $mail_plugins quota
plugin {
  quota = maildir:User quota
  sieve = file:${dir}/mail/%n/sieve;active=${dir}/mail/%n/active.sieve
}
lda_mailbox_autocreate = yes
protocol lmtp {
  mail_plugins = $mail_plugins sieve
  lmtp_rcpt_check_quota = yes
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n ${dir}/users
}
userdb {
  driver = passwd-file
  args = username_format=%n ${dir}/users
  default_fields = uid=nobody gid=nogroup home=${dir}/mail/%n
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = ${imapPort}
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = ${lmtpPort}
  }
}
`;
}

/** Starts a Dovecot in its own process group (so that a crash can take all of it). */
async function startDovecot(): Promise<Dovecot> {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-lmtp-" });
  await Deno.chmod(dir, 0o755);
  for (const sub of ["base", "state", "mail", "index"]) await Deno.mkdir(`${dir}/${sub}`);
  await Deno.writeTextFile(
    `${dir}/users`,
    [
      "alice:{PLAIN}secret::::::",
      "bob:{PLAIN}secret::::::",
      "lists:{PLAIN}secret::::::",
      // Over quota before the test begins (a message is placed below).
      "full:{PLAIN}secret::::::userdb_quota_rule=*:storage=1K",
      // Room for a small message, not for a large one.
      "small:{PLAIN}secret::::::userdb_quota_rule=*:storage=2K",
    ].join("\n") + "\n",
  );
  // The Sieve script that shows why LMTP matters: the IMAP server files the message.
  await Deno.mkdir(`${dir}/mail/lists`, { recursive: true });
  await Deno.writeTextFile(
    `${dir}/mail/lists/active.sieve`,
    'require "fileinto";\nif header :contains "List-Id" "announce" { fileinto "Lists"; }\n',
  );
  await Deno.mkdir(`${dir}/mail/full/Maildir/cur`, { recursive: true });
  await Deno.mkdir(`${dir}/mail/full/Maildir/new`);
  await Deno.mkdir(`${dir}/mail/full/Maildir/tmp`);
  await Deno.writeTextFile(
    `${dir}/mail/full/Maildir/cur/1.seed:2,`,
    `Subject: old\n\n${"x".repeat(4096)}\n`,
  );
  assertEquals((await run("chgrp", ["dovecot", `${dir}/users`])).code, 0);
  await Deno.chmod(`${dir}/users`, 0o640);
  for (const sub of ["mail", "index"]) {
    assertEquals((await run("chown", ["-R", "nobody:nogroup", `${dir}/${sub}`])).code, 0);
  }
  const lmtpPort = freePort();
  const imapPort = freePort();
  await Deno.writeTextFile(`${dir}/dovecot.conf`, config(dir, lmtpPort, imapPort));
  let child: Deno.ChildProcess | undefined;
  const waitFor = async (port: number) => {
    for (let i = 0; i < 200; i++) {
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port })).close();
        return;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    throw new Error(`Dovecot did not start: ${await Deno.readTextFile(`${dir}/dovecot.log`)}`);
  };
  const dovecot: Dovecot = {
    dir,
    lmtpPort,
    imapPort,
    async start() {
      child = new Deno.Command("setsid", {
        args: [DOVECOT, "-F", "-c", `${dir}/dovecot.conf`],
        stdout: "null",
        stderr: "null",
        stdin: "null",
      }).spawn();
      await waitFor(lmtpPort);
      await waitFor(imapPort);
    },
    async kill() {
      if (!child) return;
      // setsid made the master a process group leader: the group is the instance.
      assertEquals((await run("kill", ["-KILL", "--", `-${child.pid}`])).code, 0);
      // (Deno's status of a child killed with its group did not always settle: bounded.)
      await Promise.race([child.status, new Promise((resolve) => setTimeout(resolve, 1000))]);
      child = undefined;
    },
    async stop() {
      if (!child) return;
      child.kill("SIGTERM");
      await child.status;
      child = undefined;
      // Children finish on their own after the master; wait until the port is free.
      for (let i = 0; i < 100; i++) {
        try {
          (await Deno.connect({ hostname: "127.0.0.1", port: lmtpPort })).close();
          await new Promise((resolve) => setTimeout(resolve, 50));
        } catch {
          return;
        }
      }
    },
  };
  await dovecot.start();
  return dovecot;
}

const IMAP_READ = `
import imaplib, sys, json
port, user = int(sys.argv[1]), sys.argv[2]
imap = imaplib.IMAP4("127.0.0.1", port)
imap.login(user, "secret")
folders = {}
typ, listing = imap.list()
for line in listing:
    name = line.decode().rsplit(' ', 1)[1].strip('"')
    typ, data = imap.select(name, readonly=True)
    messages = []
    for n in range(1, int(data[0]) + 1):
        typ, fetched = imap.fetch(str(n), "(BODY.PEEK[])")
        messages.append(fetched[0][1].decode("utf-8", "replace"))
    folders[name] = messages
print(json.dumps(folders))
imap.logout()
`;

async function mailbox(dovecot: Dovecot, user: string): Promise<Record<string, string[]>> {
  const result = await run("python3", ["-c", IMAP_READ, String(dovecot.imapPort), user]);
  assertEquals(result.stderr, "");
  return JSON.parse(result.stdout);
}

async function withLetterbox(
  dovecot: Dovecot,
  args: string[],
  test: (server: Awaited<ReturnType<typeof startServer>>) => Promise<void>,
): Promise<void> {
  const server = await startServer([
    "--lmtp",
    `127.0.0.1:${dovecot.lmtpPort}`,
    "--lmtp-timeout",
    "5",
    "--no-tls",
    ...args,
  ], { useTestCert: false });
  try {
    await test(server);
  } finally {
    await server.stop();
  }
}

/** One SMTP transaction; returns every reply, RCPT by RCPT, and the end of data's. */
async function transaction(
  port: number,
  recipients: string[],
  text: string,
): Promise<{ rcpt: string[]; data?: string }> {
  const client = await TestClient.connect(port);
  try {
    await client.reply();
    await client.command("EHLO client.sender.test");
    await client.command("MAIL FROM:<carol@sender.test>");
    const rcpt: string[] = [];
    for (const recipient of recipients) {
      rcpt.push((await client.command(`RCPT TO:<${recipient}>`)).lines.join(" "));
    }
    if (!rcpt.some((reply) => reply.startsWith("250"))) return { rcpt };
    await client.command("DATA");
    await client.send(text.replace(/\r\n\./g, "\r\n..") + ".\r\n");
    const data = (await client.reply(30_000)).lines.join(" ");
    await client.command("QUIT");
    return { rcpt, data };
  } finally {
    client.close();
  }
}

const message = (subject: string, extra = "", body = "Hello over LMTP.\r\n.leading dot\r\n") =>
  `From: carol@sender.test\r\nTo: alice@example.com\r\nSubject: ${subject}\r\n` +
  `Message-ID: <${crypto.randomUUID()}@sender.test>\r\n${extra}\r\n${body}`;

Deno.test({
  name: "LMTP into Dovecot: read back over IMAP byte for byte, with our Received on top",
  ignore: !canRun,
  fn: async () => {
    const dovecot = await startDovecot();
    try {
      await withLetterbox(dovecot, [], async (server) => {
        const text = message("byte for byte", "X-Custom: kept\r\n");
        const { rcpt, data } = await transaction(server.port, ["alice@example.com"], text);
        assertEquals(rcpt, ["250 2.1.5 Ok"]);
        assertMatch(data!, /^250 2\.0\.0 Ok: queued as /);
        const { INBOX } = await mailbox(dovecot, "alice");
        assertEquals(INBOX.length, 1);
        // Dovecot adds Return-Path and Delivered-To; then ours; then exactly what was sent.
        assertMatch(
          INBOX[0],
          /^Return-Path: <carol@sender\.test>\r\nDelivered-To: alice@example\.com\r\n/,
        );
        assertStringIncludes(
          INBOX[0],
          "\r\nReceived: from client.sender.test (unknown [127.0.0.1])\r\n\tby mx.test (Letterbox)",
        );
        assert(INBOX[0].endsWith(text), INBOX[0]);
        const logged = server.logs.find((record) => /^LMTP .*Saved/.test(String(record.message)));
        assertMatch(
          String(logged?.message),
          /for "?alice@example\.com"? of "?\w+"?: "?250 2\.0\.0 <alice@example\.com> \S+ Saved/,
        );
      });
    } finally {
      await dovecot.stop();
      await Deno.remove(dovecot.dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "LMTP: a user's Sieve script files the message; unknown user 550 5.1.1 and full mailbox 552 5.2.2 at RCPT",
  ignore: !canRun,
  fn: async () => {
    const dovecot = await startDovecot();
    try {
      await withLetterbox(dovecot, [], async (server) => {
        const filed = await transaction(
          server.port,
          ["lists@example.com"],
          message("announcement", "List-Id: <announce.example.org>\r\n"),
        );
        assertMatch(filed.data!, /^250 /);
        const folders = await mailbox(dovecot, "lists");
        assertEquals(folders.Lists?.length, 1, JSON.stringify(Object.keys(folders)));
        assertEquals(folders.INBOX, []);
        const refused = await transaction(
          server.port,
          ["nobody-here@example.com", "full@example.com", "alice@example.com"],
          message("some refused"),
        );
        assertMatch(refused.rcpt[0], /^550 5\.1\.1 /);
        assertMatch(refused.rcpt[1], /^552 5\.2\.2 /);
        assertEquals(refused.rcpt[2], "250 2.1.5 Ok");
        assertMatch(refused.data!, /^250 /);
        assertEquals((await mailbox(dovecot, "alice")).INBOX.length, 1);
      });
    } finally {
      await dovecot.stop();
      await Deno.remove(dovecot.dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "LMTP: Dovecot stopped is 451 at RCPT, then delivered after it comes back; killed mid-transaction is 451",
  ignore: !canRun,
  fn: async () => {
    const dovecot = await startDovecot();
    try {
      await withLetterbox(dovecot, [], async (server) => {
        await dovecot.stop();
        const down = await transaction(server.port, ["alice@example.com"], message("while down"));
        assertMatch(down.rcpt[0], /^451 4\.4\.1 /);
        await dovecot.start();
        const back = await transaction(server.port, ["alice@example.com"], message("after"));
        assertMatch(back.data!, /^250 /);
        // Killed between our RCPT and the end of data: nothing acknowledged.
        const client = await TestClient.connect(server.port);
        await client.reply();
        await client.command("EHLO client.sender.test");
        await client.command("MAIL FROM:<carol@sender.test>");
        assertEquals((await client.command("RCPT TO:<alice@example.com>")).code, 250);
        assertEquals((await client.command("DATA")).code, 354);
        await client.send(message("killed", "", "first half\r\n"));
        await dovecot.kill();
        await client.send("second half\r\n.\r\n");
        assertMatch((await client.reply(30_000)).lines.join(" "), /^451 4\.4\.1 /);
        // The session goes on.
        assertEquals((await client.command("RSET")).code, 250);
        client.close();
        await dovecot.start();
        const subjects = (await mailbox(dovecot, "alice")).INBOX.map((m) =>
          /Subject: (.*)\r\n/.exec(m)![1]
        );
        assertEquals(subjects, ["after"]);
      });
    } finally {
      await dovecot.stop();
      await Deno.remove(dovecot.dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "LMTP: one of several recipients failing after the data is 451, and the log names who has it",
  ignore: !canRun,
  fn: async () => {
    const dovecot = await startDovecot();
    try {
      await withLetterbox(dovecot, [], async (server) => {
        const large = message("too large for small", "", `${"y".repeat(76)}\r\n`.repeat(60));
        const { rcpt, data } = await transaction(server.port, [
          "alice@example.com",
          "small@example.com",
        ], large);
        assertEquals(rcpt, ["250 2.1.5 Ok", "250 2.1.5 Ok"]);
        assertMatch(data!, /^451 4\.3\.0 /);
        const warning = server.logs.find((record) => String(record.message).includes("LMTP saved"));
        assertStringIncludes(String(warning?.message), "alice@example.com");
        assertStringIncludes(String(warning?.message), "small@example.com");
        assertEquals((await mailbox(dovecot, "alice")).INBOX.length, 1);
        assertEquals((await mailbox(dovecot, "small")).INBOX, []);
      });
    } finally {
      await dovecot.stop();
      await Deno.remove(dovecot.dir, { recursive: true });
    }
  },
});
