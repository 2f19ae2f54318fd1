/**
 * A private Dovecot IMAP server for tests, serving one Maildir (user `test`,
 * password `secret`) on a free loopback port, so that tests read back what
 * Letterbox stored the way a mail client would.
 */

import { freePort, run } from "./_server.ts";
import { assertEquals } from "./_assert.ts";

const DOVECOT = "/usr/sbin/dovecot";

/**
 * A minimal Dovecot: one static user `test` with password `secret`, served as
 * uid `nobody` (Dovecot refuses to serve mail as root), plaintext login on
 * loopback, indexes outside the Maildir.
 */
function dovecotConfig(dir: string, port: number, maildir: string, user: string): string {
  return `
protocols = imap
listen = 127.0.0.1
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:${maildir}:INDEX=${dir}/index:CONTROL=${dir}/control
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
passdb {
  driver = static
  args = password=secret
}
userdb {
  driver = static
  args = ${user} home=${dir}/home
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = ${port}
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    port = 0
  }
}
service anvil {
  chroot =
}
service imap-login {
  chroot =
}
`;
}

/** A private Dovecot serving `maildir` over IMAP on a free loopback port. */
export interface Dovecot {
  readonly port: number;
  stop(): Promise<void>;
}

export async function startDovecot(dir: string, maildir: string): Promise<Dovecot> {
  for (const sub of ["run", "state", "index", "control", "home"]) {
    await Deno.mkdir(`${dir}/${sub}`);
  }
  let user = `uid=${Deno.uid()} gid=${Deno.gid()}`;
  if (Deno.uid() === 0) {
    // Dovecot will not serve mail as root: hand the Maildir (root's, mode 0700) to nobody.
    user = "uid=nobody gid=nogroup";
    await Deno.chmod(dir, 0o755);
    for (const path of [maildir, `${dir}/index`, `${dir}/control`, `${dir}/home`]) {
      assertEquals((await run("chown", ["-R", "nobody:nogroup", path])).code, 0);
    }
  }
  const port = freePort();
  await Deno.writeTextFile(`${dir}/dovecot.conf`, dovecotConfig(dir, port, maildir, user));
  const child = new Deno.Command(DOVECOT, {
    args: ["-F", "-c", `${dir}/dovecot.conf`],
    stdout: "null",
    stderr: "null",
    stdin: "null",
  }).spawn();
  return {
    port,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

/** Python: log in to the Dovecot on argv[1] (retrying while it starts) and select INBOX. */
export const IMAP_LOGIN = `
port = int(sys.argv[1])
for attempt in range(50):
    try:
        imap = imaplib.IMAP4("127.0.0.1", port)
        break
    except OSError:
        time.sleep(0.1)
imap.login("test", "secret")
typ, data = imap.select("INBOX")
`;

const IMAP_READ = `
import imaplib, sys, json
port, user, host = int(sys.argv[1]), sys.argv[2], sys.argv[3]
for attempt in range(50):
    try:
        imap = imaplib.IMAP4(host, port)
        break
    except OSError:
        time.sleep(0.1)
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

/** Every folder `user` (password `secret`) sees over IMAP, with each message whole. */
export async function imapMessages(
  port: number,
  user = "test",
  host = "127.0.0.1",
): Promise<Record<string, string[]>> {
  const imap = await run("python3", ["-c", `import time\n${IMAP_READ}`, String(port), user, host]);
  assertEquals(imap.stderr, "");
  return JSON.parse(imap.stdout);
}

/** Every folder Dovecot shows, with the subjects of the messages in each. */
export async function imapFolders(port: number): Promise<Record<string, string[]>> {
  const folders = await imapMessages(port);
  return Object.fromEntries(
    Object.entries(folders).map(([name, messages]) => [
      name,
      messages.map((message) => /^Subject: ([^\r\n]*)/m.exec(message)?.[1] ?? ""),
    ]),
  );
}
