/**
 * Past one machine, on loopback, for tests and the benchmark: a Dovecot LMTP
 * proxy on 127.0.0.1 that routes each user to the backend holding their mail
 * (Dovecot's lmtp_proxy with proxy=y host= fields from its passdb): alice on
 * 127.0.0.2, bob on 127.0.0.3, each with IMAP for reading back.
 */

import { dovecotBase, passwdFileUsers } from "./_lmtp_dovecot.ts";
import { freePort, run } from "./_server.ts";
import { assertEquals } from "./_assert.ts";

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
${dovecotBase(dir, address, `letterbox-cluster-${name}-${freePort()}`)}
${auth.replaceAll("USERDB", passwdFileUsers(dir)).replaceAll("USERS", `${dir}/users`)}
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
      await Deno.remove(dir, { recursive: true }).catch(() => {});
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
USERDB`;

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

/** A Dovecot LMTP proxy on 127.0.0.1 in front of two backends: alice on 127.0.0.2, bob on 127.0.0.3. */
export interface Cluster {
  /** The proxy's LMTP port on 127.0.0.1. */
  readonly proxyPort: number;
  /** Each backend's address and IMAP port. */
  readonly backends: { readonly alice: [string, number]; readonly bob: [string, number] };
  stop(): Promise<void>;
}

/** Starts the three Dovecots and waits until each listens. */
export async function startCluster(): Promise<Cluster> {
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
  await listening("127.0.0.2", lmtpA);
  await listening("127.0.0.3", lmtpB);
  await listening("127.0.0.1", proxyPort);
  return {
    proxyPort,
    backends: { alice: ["127.0.0.2", imapA], bob: ["127.0.0.3", imapB] },
    async stop() {
      await proxy.stop();
      await backendA.stop();
      await backendB.stop();
    },
  };
}
