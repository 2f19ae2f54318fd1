/**
 * A real DNS server for tests: Debian's dnsmasq on a loopback port, serving
 * TXT, A and MX records for `.test` zones (and NXDOMAIN for any other `.test`
 * name at once). Start one per test file.
 */

import { freePort } from "./_server.ts";

/** Records to serve. TXT values longer than 255 characters are split into strings. */
export interface Zone {
  readonly txt?: Readonly<Record<string, string>>;
  readonly a?: Readonly<Record<string, string>>;
  readonly mx?: Readonly<Record<string, string>>;
}

/** A running dnsmasq. */
export interface DnsServer extends AsyncDisposable {
  readonly port: number;
  /** Stops it (DNS is then dead: queries time out). */
  stop(): Promise<void>;
  /** Starts it again on the same port, after {@link stop}. */
  start(): Promise<void>;
}

function txtStrings(value: string): string {
  const parts = [];
  for (let i = 0; i < value.length; i += 250) parts.push(JSON.stringify(value.slice(i, i + 250)));
  return parts.join(",");
}

/** Starts dnsmasq serving `zone`; waits until it answers. */
export async function startDns(zone: Zone): Promise<DnsServer> {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-dns-" });
  const port = freePort();
  const lines = [
    `port=${port}`,
    "listen-address=127.0.0.1",
    "bind-interfaces",
    "no-resolv",
    "no-hosts",
    "local=/test/",
    ...Object.entries(zone.txt ?? {}).map(([name, value]) =>
      `txt-record=${name},${txtStrings(value)}`
    ),
    ...Object.entries(zone.a ?? {}).map(([name, address]) => `host-record=${name},${address}`),
    ...Object.entries(zone.mx ?? {}).map(([name, host]) => `mx-host=${name},${host},10`),
  ];
  await Deno.writeTextFile(`${dir}/dnsmasq.conf`, lines.join("\n") + "\n");
  let child: Deno.ChildProcess | undefined;
  const start = async () => {
    child = new Deno.Command("dnsmasq", {
      args: ["-k", "-C", `${dir}/dnsmasq.conf`, "-u", "nobody", "--pid-file="],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await Deno.resolveDns("probe.test", "A", {
          nameServer: { ipAddr: "127.0.0.1", port },
          signal: AbortSignal.timeout(300),
        });
        break;
      } catch (error) {
        // NXDOMAIN from local=/test/ is the answer that says it is up.
        if (error instanceof Deno.errors.NotFound) break;
        if (Date.now() > deadline) throw new Error(`dnsmasq did not start: ${error}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  };
  const stop = async () => {
    if (!child) return;
    const running = child;
    child = undefined;
    running.kill("SIGTERM");
    await running.stderr.cancel();
    await running.status;
  };
  // At the end of a test file (which cannot wait for a promise), if still running.
  let removed = false;
  globalThis.addEventListener("unload", () => {
    if (removed) return;
    try {
      child?.kill("SIGKILL");
    } catch { /* gone */ }
    Deno.removeSync(dir, { recursive: true });
  });
  await start();
  return {
    port,
    start,
    stop: async () => {
      await stop();
    },
    [Symbol.asyncDispose]: async () => {
      await stop();
      removed = true;
      await Deno.remove(dir, { recursive: true });
    },
  };
}
