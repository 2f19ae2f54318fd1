/**
 * A private Dovecot 2.3 for LMTP tests and the benchmark: LMTP and IMAP on
 * free loopback ports, passwd-file users served as nobody (alice, bob,
 * lists with a Sieve script, full and small with tiny quotas), its own
 * process group so that a test can crash all of it.
 */

import { freePort, have, run } from "./_server.ts";
import { assertEquals } from "./_assert.ts";

const DOVECOT = "/usr/sbin/dovecot";
/**
 * What every private Dovecot of the tests shares: its folders under `dir`,
 * plaintext logins on loopback, users served as nobody, Maildirs and indexes.
 */
export function dovecotBase(dir: string, address: string, instance: string): string {
  return `listen = ${address}
base_dir = ${dir}/base
state_dir = ${dir}/state
instance_name = ${instance}
log_path = ${dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_username_format = %Ln
first_valid_uid = 65534
first_valid_gid = 65534
mail_location = maildir:${dir}/mail/%n/Maildir:INDEX=${dir}/index/%n`;
}

/**
 * Users from `dir/users` (passwd-file, plaintext passwords), served as
 * nobody with homes under `dir/mail`.
 */
export function passwdFileUsers(dir: string): string {
  return `passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n ${dir}/users
}
userdb {
  driver = passwd-file
  args = username_format=%n ${dir}/users
  default_fields = uid=nobody gid=nogroup home=${dir}/mail/%n
}`;
}

/** True when a private Dovecot with LMTP can run here (as root, with the packages). */
export const canRunLmtpDovecot: boolean = Deno.uid() === 0 && await have(DOVECOT) &&
  await have("/usr/lib/dovecot/lmtp");

/** A private Dovecot serving LMTP and IMAP on loopback ports. */
export interface LmtpDovecot {
  readonly dir: string;
  readonly lmtpPort: number;
  readonly imapPort: number;
  start(): Promise<void>;
  /** SIGKILL to the whole instance (master and children): a crash. */
  kill(): Promise<void>;
  stop(): Promise<void>;
  /** Stops it and removes its folder (`await using`). */
  [Symbol.asyncDispose](): Promise<void>;
}

function config(dir: string, lmtpPort: number, imapPort: number): string {
  return `
protocols = imap lmtp
${dovecotBase(dir, "127.0.0.1", `letterbox-lmtp-${lmtpPort}`)}
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
${passwdFileUsers(dir)}
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
export async function startLmtpDovecot(): Promise<LmtpDovecot> {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-lmtp-" });
  await Deno.chmod(dir, 0o755);
  for (const sub of ["base", "state", "mail", "index"]) await Deno.mkdir(`${dir}/${sub}`);
  await Deno.writeTextFile(
    `${dir}/users`,
    [
      "alice:{PLAIN}secret::::::",
      "bob:{PLAIN}secret::::::",
      // The benchmark's recipient.
      "rcpt:{PLAIN}secret::::::",
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
  const dovecot: LmtpDovecot = {
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
    async [Symbol.asyncDispose]() {
      await dovecot.stop();
      await Deno.remove(dir, { recursive: true });
    },
  };
  await dovecot.start();
  return dovecot;
}
