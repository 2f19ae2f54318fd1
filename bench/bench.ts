// deno-lint-ignore-file no-console -- a command-line benchmark prints its results
/**
 * `make bench`: Letterbox on a loopback port with a temporary Maildir, driven
 * by its own pipelining load client, beside the ceilings measured in the same
 * run: the disk's durable-write rate (a loop doing exactly what a delivery
 * must: write to tmp/, fsync, rename into new/, fsync new/) and Postfix's
 * smtp-sink (an SMTP server that stores nothing), when installed.
 *
 * The shared disk of a VPS changes speed from one second to the next, so
 * each cell runs its ceilings and Letterbox in short alternating slices,
 * several rounds, and reports each ratio as the median of the ratios within
 * a round: neighbours in time, not best against best.
 *
 * Results go to bench/results/DATE.json, with a chart of them (bench/chart.ts)
 * in DATE.svg.
 *
 * Usage: deno run -A bench/bench.ts [--seconds 2] [--rounds 5] [--quick]
 *        [--only CxS] [--out FILE] [--baseline DIR] [--no-checks]
 *
 * --baseline DIR runs a second Letterbox from another checkout (e.g. a git
 * worktree of the previous commit) in the same alternating rounds, plain
 * only, and reports this tree's msg/s as a ratio to it: before/after from one run.
 *
 * @module
 */

import { parseArgs as untypedParseArgs } from "@std/cli/parse-args";
import { chartSvg } from "./chart.ts";
import { dkimSigned, makeDkimKey } from "../tests/_dkim.ts";
import { startDns } from "../tests/_dns.ts";
import { canRunLmtpDovecot, startLmtpDovecot } from "../tests/_lmtp_dovecot.ts";
import { startCluster } from "../tests/_cluster.ts";
import { startRspamd } from "../tests/_rspamd.ts";

async function haveRspamd(): Promise<boolean> {
  try {
    await Deno.stat("/usr/bin/rspamd");
    return Deno.uid() === 0;
  } catch {
    return false;
  }
}

const parseArgs = untypedParseArgs as (
  args: string[],
  options: { string: string[]; boolean: string[]; default: Record<string, unknown> },
) => Record<string, unknown>;
const flags = parseArgs(Deno.args, {
  string: ["seconds", "rounds", "out", "only", "server-v8-flags", "baseline"],
  boolean: ["quick", "no-checks"],
  default: { seconds: "2", rounds: "5" },
});
// --only 64x1024 limits the run to one cell (connections x size), for experiments.
const ONLY = flags.only as string | undefined;
// Seconds a slice; each cell runs ROUNDS slices of each mode.
const SECONDS = Number(flags.seconds);
const QUICK = flags.quick === true;
const ROUNDS = QUICK ? 2 : Number(flags.rounds);
const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const BASELINE = flags.baseline as string | undefined;
const CA = await Deno.readTextFile(`${ROOT}/certs/ca.pem`);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const CONCURRENCY = QUICK ? [8, 64] : [1, 8, 64];
const SIZES = QUICK ? [1024, 65_536] : [1024, 65_536, 4 * 1024 * 1024];
const IDLE_SESSIONS = QUICK ? 1000 : 5000;

// ---------------------------------------------------------------- helpers

function sizeName(bytes: number): string {
  return bytes >= 1 << 20 ? `${bytes >> 20} MiB` : `${bytes >> 10} KiB`;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

function memory(pid: number, field: "VmRSS" | "VmHWM"): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(
    Deno.readTextFileSync(`/proc/${pid}/status`),
  );
  return match ? Number(match[1]) * 1024 : NaN;
}

/** CPU time (user + system) a process has used, in milliseconds. */
function cpuTime(pid: number): number {
  const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1].split(" ");
  // utime and stime, fields 14 and 15 of proc(5), in clock ticks (100 a second on Linux).
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** Resets a process's peak RSS (Linux: writing 5 to clear_refs); false where not allowed. */
function resetPeak(pid: number): boolean {
  try {
    Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

/** A message of exactly `size` octets on the wire (before the final dot). */
function wireMessage(size: number): Uint8Array {
  const header = "From: bench@load.test\r\nTo: rcpt@example.com\r\nSubject: bench\r\n\r\n";
  const line = "x".repeat(76) + "\r\n";
  let body = "";
  while (header.length + body.length + line.length <= size) body += line;
  body += "y".repeat(Math.max(0, size - header.length - body.length - 2)) + "\r\n";
  return encoder.encode(header + body + ".\r\n");
}

/** Reads SMTP replies from a connection. */
class Replies {
  #conn: Deno.Conn;
  #text = "";
  #buffer = new Uint8Array(16_384);
  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }
  async next(): Promise<number> {
    for (;;) {
      const match = /^(?:\d{3}-[^\n]*\n)*(\d{3})(?: [^\n]*)?\n/.exec(this.#text);
      if (match) {
        this.#text = this.#text.slice(match[0].length);
        return Number(match[1]);
      }
      const n = await this.#conn.read(this.#buffer);
      if (n === null) throw new Error("closed");
      this.#text += decoder.decode(this.#buffer.subarray(0, n));
    }
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
}

async function expect(replies: Replies, code: number): Promise<void> {
  const got = await replies.next();
  if (got !== code) throw new Error(`expected ${code}, got ${got}`);
}

/** Opens a session: greeting, EHLO, and STARTTLS + EHLO when asked. */
async function openSession(
  port: number,
  tls: boolean,
): Promise<{ conn: Deno.Conn; replies: Replies }> {
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
  // As MTAs do: without it, the last small TLS record of a message waits for a
  // delayed ACK (40 ms) and measures the client, not the server.
  tcp.setNoDelay(true);
  let conn: Deno.Conn = tcp;
  let replies = new Replies(conn);
  await expect(replies, 220);
  await writeAll(conn, encoder.encode("EHLO load.test\r\n"));
  await expect(replies, 250);
  if (tls) {
    await writeAll(conn, encoder.encode("STARTTLS\r\n"));
    await expect(replies, 220);
    conn = await Deno.startTls(conn as Deno.TcpConn, { hostname: "localhost", caCerts: [CA] });
    replies = new Replies(conn);
    await writeAll(conn, encoder.encode("EHLO load.test\r\n"));
    await expect(replies, 250);
  }
  return { conn, replies };
}

interface LoadResult {
  messages: number;
  seconds: number;
  latencies: number[];
  errors: number;
  /** CPU milliseconds the measured process (the server, or this one for the disk loop) used. */
  cpuMs?: number;
}

/**
 * C connections, each sending messages with PIPELINING until the time is up.
 * The clock starts once every session is open (and through STARTTLS), so
 * handshakes count in the connection rate, not here.
 */
async function smtpLoad(
  port: number,
  connections: number,
  size: number,
  tls: boolean,
  seconds: number,
  message: Uint8Array = wireMessage(size),
  recipient = "rcpt@example.com",
): Promise<LoadResult> {
  const envelope = encoder.encode(
    `MAIL FROM:<bench@load.test>\r\nRCPT TO:<${recipient}>\r\nDATA\r\n`,
  );
  const latencies: number[] = [];
  let errors = 0;
  const sessions = await Promise.all(
    Array.from({ length: connections }, () => openSession(port, tls).catch(() => undefined)),
  );
  const started = performance.now();
  const until = started + seconds * 1000;
  await Promise.all(sessions.map(async (session) => {
    if (!session) {
      errors++;
      return;
    }
    const { conn, replies } = session;
    try {
      while (performance.now() < until) {
        await writeAll(conn, envelope);
        await expect(replies, 250);
        await expect(replies, 250);
        await expect(replies, 354);
        await writeAll(conn, message);
        const sent = performance.now();
        await expect(replies, 250);
        latencies.push(performance.now() - sent);
      }
      await writeAll(conn, encoder.encode("QUIT\r\n")).catch(() => {});
    } catch {
      errors++;
    }
    conn.close();
  }));
  return {
    messages: latencies.length,
    seconds: (performance.now() - started) / 1000,
    latencies,
    errors,
  };
}

let diskSequence = 0;

/** The disk's ceiling: what a delivery must do, and nothing else, C at a time. */
async function diskLoad(
  dir: string,
  connections: number,
  size: number,
  seconds: number,
): Promise<LoadResult> {
  await Deno.mkdir(`${dir}/tmp`, { recursive: true });
  await Deno.mkdir(`${dir}/new`, { recursive: true });
  const content = wireMessage(size);
  const latencies: number[] = [];
  const started = performance.now();
  const until = started + seconds * 1000;
  await Promise.all(Array.from({ length: connections }, async () => {
    while (performance.now() < until) {
      const began = performance.now();
      const name = `${Date.now()}.${Deno.pid}_${diskSequence++}.bench`;
      const file = await Deno.open(`${dir}/tmp/${name}`, {
        write: true,
        createNew: true,
        mode: 0o600,
      });
      let offset = 0;
      while (offset < content.length) offset += await file.write(content.subarray(offset));
      await file.sync();
      file.close();
      await Deno.rename(`${dir}/tmp/${name}`, `${dir}/new/${name}`);
      const directory = await Deno.open(`${dir}/new`, { read: true });
      await directory.sync();
      directory.close();
      latencies.push(performance.now() - began);
    }
  }));
  return {
    messages: latencies.length,
    seconds: (performance.now() - started) / 1000,
    latencies,
    errors: 0,
  };
}

/** connect + EHLO (+ STARTTLS + EHLO) + QUIT, C at a time. */
async function connectionLoad(
  port: number,
  connections: number,
  tls: boolean,
  seconds: number,
): Promise<number> {
  let count = 0;
  const started = performance.now();
  const until = started + seconds * 1000;
  await Promise.all(Array.from({ length: connections }, async () => {
    while (performance.now() < until) {
      const { conn, replies } = await openSession(port, tls);
      await writeAll(conn, encoder.encode("QUIT\r\n"));
      await expect(replies, 221);
      conn.close();
      count++;
    }
  }));
  return count / ((performance.now() - started) / 1000);
}

async function emptyDir(dir: string): Promise<void> {
  for (const sub of ["new", "tmp", "cur"]) {
    await Deno.remove(`${dir}/${sub}`, { recursive: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------- servers

interface Started {
  port: number;
  pid: number;
  stop(): Promise<void>;
}

/** A running server: stop() ends it with SIGTERM, waits, then runs `cleanUp`. */
function started(child: Deno.ChildProcess, port: number, cleanUp?: () => Promise<void>): Started {
  return {
    port,
    pid: child.pid,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
      await cleanUp?.();
    },
  };
}

async function startLetterbox(
  maildir: string,
  root: string = ROOT,
  extra: readonly string[] = [],
): Promise<Started> {
  // Checks are off unless a mode turns them on: the plain rows measure receiving and storing.
  const knowsChecks = (await Deno.readTextFile(`${root}/src/config/settings.ts`).catch(() => ""))
    .includes(`flag: "authentication"`);
  const args = [
    "run",
    // The V8 flags make run and make build use, unless an experiment says otherwise.
    `--v8-flags=${flags["server-v8-flags"] ?? "--max-semi-space-size=4,--max-old-space-size=1024"}`,
    "--allow-net=127.0.0.1",
    `--allow-read=${maildir},${ROOT}/certs`,
    `--allow-write=${maildir}`,
    "--allow-env",
    "--allow-sys=hostname,uid",
    `${root}/main.ts`,
    "--listen",
    "127.0.0.1:0",
    "--maildir",
    maildir,
    "--hostname",
    "bench.test",
    "--tls-cert",
    `${ROOT}/certs/leaf.pem`,
    "--tls-key",
    `${ROOT}/certs/leaf-key.pem`,
    "--max-connections",
    "20000",
    "--max-connections-per-ip",
    "20000",
    "--max-message-size",
    "256M",
    ...(knowsChecks && !extra.includes("--authentication") ? ["--authentication", "off"] : []),
    ...extra,
  ];
  // The log goes to a file, as it would go to journald in production: a pipe
  // read by this busy load client would make the server wait on its own logging.
  const log = await Deno.makeTempFile({ prefix: "letterbox-bench-log-" });
  const quoted = [Deno.execPath(), ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
  const child = new Deno.Command("sh", {
    args: ["-c", `exec ${quoted} 2>>'${log}'`],
    stdout: "null",
    stderr: "null",
    stdin: "null",
  }).spawn();
  let port = 0;
  for (let tries = 0; !port; tries++) {
    if (tries > 300) throw new Error(`Letterbox did not start:\n${await Deno.readTextFile(log)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const text = await Deno.readTextFile(log);
    const match = /Listening on 127\.0\.0\.1:(\d+)/.exec(text);
    if (match && text.includes("ready")) port = Number(match[1]);
  }
  return started(child, port, () => Deno.remove(log));
}

const PEERS = `${ROOT}/.tools/peers`;

/**
 * nodemailer's smtp-server with a durable Maildir handler
 * (bench/peer/smtp_server_peer.mjs), when `make bench` installed it into
 * .tools/peers. Run from there, where Node resolves its package.
 */
async function startSmtpServerPeer(maildir: string, tls = false): Promise<Started | undefined> {
  try {
    await Deno.stat(`${PEERS}/node_modules/smtp-server`);
  } catch {
    return undefined;
  }
  await Deno.copyFile(`${ROOT}/bench/peer/smtp_server_peer.mjs`, `${PEERS}/smtp_server_peer.mjs`);
  const child = new Deno.Command("node", {
    args: [
      `${PEERS}/smtp_server_peer.mjs`,
      maildir,
      // STARTTLS with the certificate Letterbox's TLS rows use.
      ...(tls ? [`${ROOT}/certs/leaf.pem`, `${ROOT}/certs/leaf-key.pem`] : []),
    ],
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!/listening (\d+)/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error("smtp-server did not start");
    text += value;
  }
  reader.releaseLock();
  child.stdout.cancel().catch(() => {});
  return started(child, Number(/listening (\d+)/.exec(text)![1]));
}

async function startSink(): Promise<Started | undefined> {
  const binary = "/usr/sbin/smtp-sink";
  try {
    await Deno.stat(binary);
  } catch {
    return undefined;
  }
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const child = new Deno.Command(binary, {
    args: ["-u", "nobody", "-m", "1000", `127.0.0.1:${port}`, "1024"],
    stdout: "null",
    stderr: "null",
    stdin: "null",
  }).spawn();
  for (let i = 0; i < 50; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return started(child, port);
}

/**
 * DNS for the authentication rows: dnsmasq on a loopback port serving SPF,
 * a DKIM key and DMARC for the load client's domain, and the message of each
 * size signed with that key. Undefined without dnsmasq.
 */
async function startAuthDns(): Promise<
  (Started & { sign(size: number): Promise<Uint8Array> }) | undefined
> {
  try {
    await Deno.stat("/usr/sbin/dnsmasq");
  } catch {
    return undefined;
  }
  const key = await makeDkimKey();
  const dns = await startDns({
    txt: {
      "load.test": "v=spf1 ip4:127.0.0.1 -all",
      "sel._domainkey.load.test": key.record,
      "_dmarc.load.test": "v=DMARC1; p=none",
    },
  });
  return {
    port: dns.port,
    pid: 0,
    stop: async () => await dns[Symbol.asyncDispose](),
    async sign(size: number): Promise<Uint8Array> {
      const text = decoder.decode(wireMessage(size)).slice(0, -3); // without ".\r\n"
      return encoder.encode(await dkimSigned(key, "load.test", text) + ".\r\n");
    },
  };
}

// ---------------------------------------------------------------- run

// When the last run deleted its files: their inodes slow creates for up to
// 360 s on ext4 without a journal (see emptyCells), so a run started sooner
// waits that out, with 10 s to spare, instead of measuring it.
const INODE_REUSE_MS = 370_000;
const CLEANED_UP_AT = `${Deno.env.get("TMPDIR") ?? "/tmp"}/.letterbox-bench-cleaned-up-at`;
const sinceCleanUp = Date.now() - Number(await Deno.readTextFile(CLEANED_UP_AT).catch(() => "0"));
if (sinceCleanUp < INODE_REUSE_MS) {
  const wait = INODE_REUSE_MS - sinceCleanUp;
  console.log(
    `waiting ${Math.ceil(wait / 1000)} s: the last run's deleted files still slow creates`,
  );
  await new Promise((resolve) => setTimeout(resolve, wait));
}
const work = await Deno.makeTempDir({ prefix: "letterbox-bench-" });
const maildir = `${work}/Maildir`;
await Deno.mkdir(maildir);
const sink = await startSink();
// --no-checks leaves out the rows with checks on (for before/after runs of the plain path).
const CHECKS = flags["no-checks"] !== true;
const authDns = CHECKS ? await startAuthDns() : undefined;
// rspamd as tests/_rspamd.ts starts it (the DNS-based modules off: no internet here).
const rspamd = CHECKS && await haveRspamd() ? await startRspamd() : undefined;
// Delivery by LMTP into a private Dovecot (tests/_lmtp_dovecot.ts), beside Maildir.
const dovecot = CHECKS && canRunLmtpDovecot ? await startLmtpDovecot() : undefined;
type CheckName = "authentication" | "rspamd" | "lmtp";
/** The checks measured on their own servers beside plain, in every cell. */
const checkModes: {
  name: CheckName;
  args: string[];
  message(size: number): Promise<Uint8Array>;
}[] = [
  ...(authDns
    ? [{
      name: "authentication" as const,
      args: ["--authentication", "on", "--dns-server", `127.0.0.1:${authDns.port}`],
      // A DKIM-signed message, so that the signature is verified each time.
      message: (size: number) => authDns.sign(size),
    }]
    : []),
  ...(rspamd
    ? [{
      name: "rspamd" as const,
      args: ["--rspamd", rspamd.url],
      message: (size: number) => Promise.resolve(wireMessage(size)),
    }]
    : []),
  ...(dovecot
    ? [{
      name: "lmtp" as const,
      args: ["--lmtp", `127.0.0.1:${dovecot.lmtpPort}`],
      message: (size: number) => Promise.resolve(wireMessage(size)),
    }]
    : []),
];
const machine = {
  cpus: navigator.hardwareConcurrency,
  cpu:
    (/model name\s*:\s*(.+)/.exec(await Deno.readTextFile("/proc/cpuinfo").catch(() => ""))?.[1] ??
      "unknown").trim(),
  kernel: Deno.osRelease(),
  deno: Deno.version.deno,
  ...await filesystemOf(work),
};

/**
 * The file system under `dir`, and for ext4 whether it has a journal: without
 * one, an fsync of a new file also writes its directory, and concurrent
 * fsyncs are not merged into journal commits, which changes what durable
 * delivery costs.
 */
async function filesystemOf(dir: string): Promise<{ filesystem: string; journal?: string }> {
  const output = await new Deno.Command("df", { args: ["-T", dir], stdout: "piped" }).output();
  const [device, filesystem = "unknown"] = decoder.decode(output.stdout).split("\n")[1]?.split(
    /\s+/,
  ) ?? [];
  if (filesystem !== "ext4" || !device) return { filesystem };
  const task = await Deno.readTextFile(`/sys/fs/ext4/${device.split("/").pop()}/journal_task`)
    .catch(() => undefined);
  return {
    filesystem,
    journal: task === undefined ? "unknown" : task.trim() === "<none>" ? "none" : "jbd2",
  };
}
console.log(
  `Letterbox benchmark: ${ROUNDS} rounds of ${SECONDS} s slices a cell, ${machine.cpus} CPUs (${machine.cpu}), ${machine.filesystem}${
    machine.journal ? ` (journal: ${machine.journal})` : ""
  }, Deno ${machine.deno}`,
);

interface Row {
  connections: number;
  size: number;
  tls: boolean;
  /** The median of the slices' rates. */
  messagesPerSecond: number;
  megabytesPerSecond: number;
  /** Latency from the end of DATA to the 250, over every slice. */
  p50: number;
  p99: number;
  peakRss: number;
  errors: number;
  /** The median of the disk loop's slices. */
  diskCeiling: number;
  /** The median over rounds of Letterbox / disk loop within the round. */
  diskRatio: number;
  /** Each round's ratio, to show the spread. */
  diskRatios: number[];
  /** Each slice's rate, Letterbox's and the disk loop's, round by round. */
  slices: { letterbox: number[]; disk: number[] };
  sinkCeiling?: number;
  sinkRatio?: number;
  /**
   * nodemailer's smtp-server with a durable handler, plain or with STARTTLS
   * as the row is, and Letterbox's ratio to it.
   */
  peer?: {
    messagesPerSecond: number;
    ratio: number;
    cpuPerMessage: number;
    p50: number;
    p99: number;
    peakRss: number;
  };
  /** With --baseline: the baseline's msg/s and the median within-round ratio to it (plain only). */
  baselineRate?: number;
  baselineRatio?: number;
  /** With --baseline: the baseline's server CPU time per message in ms. */
  baselineCpuPerMessage?: number;
  /** Plain rows: the same cell with each check on, and its ratio to plain (same rounds). */
  checks?: Record<string, { messagesPerSecond: number; ratio: number; cpuPerMessage: number }>;
  /** Server CPU time per message in ms, over every slice; the disk loop's own beside it. */
  cpuPerMessage: number;
  diskCpuPerMessage: number;
}

type Mode = "disk" | "plain" | "tls" | "sink" | "peer" | "peerTls" | "baseline" | CheckName;
const rate = (result: LoadResult) => result.messages / result.seconds;
const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};
const cpuPerMessage = (runs: LoadResult[]) =>
  runs.reduce((ms, run) => ms + (run.cpuMs ?? 0), 0) /
  Math.max(1, runs.reduce((n, run) => n + run.messages, 0));
const roundRatios = (mine: LoadResult[], theirs: LoadResult[]) =>
  mine.map((result, round) => rate(result) / rate(theirs[round]));
const pairedRatio = (mine: LoadResult[], theirs: LoadResult[]) => median(roundRatios(mine, theirs));

/**
 * Empties what the cells wrote without freeing an inode: every file is
 * truncated to nothing (its blocks go), none is deleted until the run ends.
 * On ext4 without a journal, a new inode is never one freed in the last 60 s
 * (360 s while its inode-table block is dirty): a create then steps over
 * each such inode (`recently_deleted` and `find_inode_bit` were a quarter of
 * all CPU time in a profile). Measured here, after 20,000 deletions creates
 * took 130-330 us instead of 8-11 us, and still 126-262 us 62 s later; so
 * deleting the cells between message sizes and waiting 6 s, as this did
 * before, measured the clean-up, not the disk or the servers.
 */
async function emptyCells(dir: string): Promise<void> {
  await new Deno.Command("find", {
    args: [dir, "-type", "f", "-size", "+0", "-exec", "truncate", "-s", "0", "{}", "+"],
    stdout: "null",
    stderr: "null",
  }).output();
  await new Deno.Command("sync").output();
}

/** A row's smtp-server figures from its slices, beside Letterbox's `runs` of the same rounds. */
function peerRow(
  peer: Started | undefined,
  runs: LoadResult[],
  slices: LoadResult[],
): Row["peer"] {
  if (!peer || slices.length === 0) return undefined;
  const latencies = slices.flatMap((r) => r.latencies).sort((a, b) => a - b);
  return {
    messagesPerSecond: median(slices.map(rate)),
    ratio: pairedRatio(runs, slices),
    cpuPerMessage: cpuPerMessage(slices),
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    peakRss: memory(peer.pid, "VmHWM"),
  };
}

const rows: Row[] = [];
const cells = `${work}/cells`;
for (const size of SIZES) {
  for (const connections of CONCURRENCY) {
    if (ONLY && ONLY !== `${connections}x${size}`) continue;
    const cell = `${cells}/${connections}x${size}`;
    await Deno.mkdir(`${cell}/plain`, { recursive: true });
    await Deno.mkdir(`${cell}/tls`, { recursive: true });
    // Fresh servers for the cell, so that each peak RSS is this cell's own.
    const servers = {
      plain: await startLetterbox(`${cell}/plain`),
      tls: await startLetterbox(`${cell}/tls`),
    };
    if (BASELINE) await Deno.mkdir(`${cell}/baseline`, { recursive: true });
    const baseline = BASELINE ? await startLetterbox(`${cell}/baseline`, BASELINE) : undefined;
    // Each check on, plain: a server of its own and the message it gets.
    const checkServers: Partial<Record<CheckName, { server: Started; message: Uint8Array }>> = {};
    for (const check of checkModes) {
      await Deno.mkdir(`${cell}/${check.name}`, { recursive: true });
      checkServers[check.name] = {
        server: await startLetterbox(`${cell}/${check.name}`, ROOT, check.args),
        message: await check.message(size),
      };
    }
    const modes: Mode[] = ["disk", "plain", "tls"];
    if (sink) modes.push("sink");
    // The peer to beat: fresh smtp-servers for the cell, plain and with
    // STARTTLS, each with its own Maildir.
    await Deno.mkdir(`${cell}/peer`, { recursive: true });
    await Deno.mkdir(`${cell}/peer-tls`, { recursive: true });
    const peers = {
      peer: await startSmtpServerPeer(`${cell}/peer`),
      peerTls: await startSmtpServerPeer(`${cell}/peer-tls`, true),
    };
    if (peers.peer) modes.push("peer");
    if (peers.peerTls) modes.push("peerTls");
    if (baseline) modes.push("baseline");
    modes.push(...checkModes.map((check) => check.name));
    const results: Record<Mode, LoadResult[]> = {
      disk: [],
      plain: [],
      tls: [],
      sink: [],
      peer: [],
      peerTls: [],
      baseline: [],
      authentication: [],
      rspamd: [],
      lmtp: [],
    };
    // One unmeasured second of each first: fresh servers compile their hot
    // paths, and fresh directories grow their first blocks (the first
    // thousands of files in a new directory went at a third of the rate).
    await diskLoad(`${cell}/disk`, connections, size, 1);
    await smtpLoad(servers.plain.port, connections, size, false, 1);
    await smtpLoad(servers.tls.port, connections, size, true, 1);
    if (sink) await smtpLoad(sink.port, connections, size, false, 1);
    if (peers.peer) await smtpLoad(peers.peer.port, connections, size, false, 1);
    if (peers.peerTls) await smtpLoad(peers.peerTls.port, connections, size, true, 1);
    if (baseline) await smtpLoad(baseline.port, connections, size, false, 1);
    for (const { server, message } of Object.values(checkServers)) {
      await smtpLoad(server.port, connections, size, false, 1, message);
    }
    await new Deno.Command("sync").output();
    for (let round = 0; round < ROUNDS; round++) {
      // The order turns each round, so that no mode always follows the disk loop's flushes.
      for (let k = 0; k < modes.length; k++) {
        const mode = modes[(round + k) % modes.length];
        if (mode === "disk") {
          const before = cpuTime(Deno.pid);
          const result = await diskLoad(`${cell}/disk`, connections, size, SECONDS);
          results.disk.push({ ...result, cpuMs: cpuTime(Deno.pid) - before });
        } else if (mode === "sink") {
          results.sink.push(await smtpLoad(sink!.port, connections, size, false, SECONDS));
        } else if (mode === "peer" || mode === "peerTls") {
          const peer = peers[mode]!;
          const before = cpuTime(peer.pid);
          const result = await smtpLoad(peer.port, connections, size, mode === "peerTls", SECONDS);
          results[mode].push({ ...result, cpuMs: cpuTime(peer.pid) - before });
        } else if (mode === "authentication" || mode === "rspamd" || mode === "lmtp") {
          const { server, message } = checkServers[mode]!;
          const before = cpuTime(server.pid);
          const result = await smtpLoad(server.port, connections, size, false, SECONDS, message);
          results[mode].push({ ...result, cpuMs: cpuTime(server.pid) - before });
        } else if (mode === "baseline") {
          const before = cpuTime(baseline!.pid);
          const result = await smtpLoad(baseline!.port, connections, size, false, SECONDS);
          results.baseline.push({ ...result, cpuMs: cpuTime(baseline!.pid) - before });
        } else {
          const server = servers[mode];
          const before = cpuTime(server.pid);
          const result = await smtpLoad(server.port, connections, size, mode === "tls", SECONDS);
          results[mode].push({ ...result, cpuMs: cpuTime(server.pid) - before });
        }
        // Each slice starts with nothing left to write back: on ext4 without a
        // journal, the inode tables, bitmaps and directories a slice dirtied
        // are written back later, in the next slice's time, and whichever
        // mode followed the disk loop measured slower for it.
        if (mode !== "sink") await new Deno.Command("sync").output();
      }
    }
    const diskRate = median(results.disk.map(rate));
    const sinkRate = sink ? median(results.sink.map(rate)) : undefined;
    for (const mode of ["plain", "tls"] as const) {
      const runs = results[mode];
      const sorted = runs.flatMap((run) => run.latencies).sort((a, b) => a - b);
      const messagesPerSecond = median(runs.map(rate));
      const row: Row = {
        connections,
        size,
        tls: mode === "tls",
        messagesPerSecond,
        megabytesPerSecond: messagesPerSecond * size / 1e6,
        p50: percentile(sorted, 0.5),
        p99: percentile(sorted, 0.99),
        peakRss: memory(servers[mode].pid, "VmHWM"),
        errors: runs.reduce((n, r) => n + r.errors, 0),
        diskCeiling: diskRate,
        diskRatio: pairedRatio(runs, results.disk),
        diskRatios: roundRatios(runs, results.disk),
        slices: { letterbox: runs.map(rate), disk: results.disk.map(rate) },
        sinkCeiling: mode === "plain" ? sinkRate : undefined,
        sinkRatio: mode === "plain" && sink ? pairedRatio(runs, results.sink) : undefined,
        peer: peerRow(
          peers[mode === "tls" ? "peerTls" : "peer"],
          runs,
          results[mode === "tls" ? "peerTls" : "peer"],
        ),
        baselineRate: mode === "plain" && baseline ? median(results.baseline.map(rate)) : undefined,
        baselineRatio: mode === "plain" && baseline
          ? pairedRatio(runs, results.baseline)
          : undefined,
        baselineCpuPerMessage: mode === "plain" && baseline
          ? cpuPerMessage(results.baseline)
          : undefined,
        checks: mode === "plain" && checkModes.length > 0
          ? Object.fromEntries(checkModes.map(({ name }) => [name, {
            messagesPerSecond: median(results[name].map(rate)),
            ratio: pairedRatio(results[name], runs),
            cpuPerMessage: cpuPerMessage(results[name]),
          }]))
          : undefined,
        cpuPerMessage: cpuPerMessage(runs),
        diskCpuPerMessage: cpuPerMessage(results.disk),
      };
      rows.push(row);
      console.log(
        `${String(connections).padStart(3)} conn ${sizeName(size).padStart(7)} ${
          mode === "tls" ? "STARTTLS" : "plain   "
        } ` +
          `${messagesPerSecond.toFixed(0).padStart(6)} msg/s ${
            row.megabytesPerSecond.toFixed(1).padStart(7)
          } MB/s ` +
          `p50 ${row.p50.toFixed(1).padStart(6)} ms p99 ${row.p99.toFixed(1).padStart(7)} ms ` +
          `peak RSS ${(row.peakRss / 2 ** 20).toFixed(0).padStart(4)} MiB | disk ${
            diskRate.toFixed(0).padStart(6)
          } msg/s (${row.diskRatio.toFixed(2)}x) | CPU ${
            row.cpuPerMessage.toFixed(2)
          } ms/msg (disk loop ${row.diskCpuPerMessage.toFixed(2)})` +
          (row.sinkCeiling && row.sinkRatio
            ? ` | smtp-sink ${row.sinkCeiling.toFixed(0).padStart(6)} msg/s (${
              row.sinkRatio.toFixed(2)
            }x)`
            : "") +
          (row.baselineRate && row.baselineRatio
            ? ` | baseline ${row.baselineRate.toFixed(0).padStart(6)} msg/s (${
              row.baselineRatio.toFixed(2)
            }x), CPU ${row.baselineCpuPerMessage!.toFixed(2)} ms/msg`
            : "") +
          (row.peer
            ? ` | smtp-server ${row.peer.messagesPerSecond.toFixed(0).padStart(6)} msg/s (${
              row.peer.ratio.toFixed(2)
            }x), CPU ${row.peer.cpuPerMessage.toFixed(2)} ms/msg, p50 ${
              row.peer.p50.toFixed(1)
            } ms, p99 ${row.peer.p99.toFixed(1)} ms, peak RSS ${
              (row.peer.peakRss / 2 ** 20).toFixed(0)
            } MiB`
            : "") +
          Object.entries(row.checks ?? {}).map(([name, check]) =>
            ` | ${name} on ${check.messagesPerSecond.toFixed(0).padStart(6)} msg/s (${
              check.ratio.toFixed(2)
            }x of plain), CPU ${check.cpuPerMessage.toFixed(2)} ms/msg`
          ).join("") +
          (row.errors ? ` | ${row.errors} connection errors` : ""),
      );
    }
    await servers.plain.stop();
    await servers.tls.stop();
    await baseline?.stop();
    for (const { server } of Object.values(checkServers)) await server.stop();
    await peers.peer?.stop();
    await peers.peerTls?.stop();
  }
  await emptyCells(cells);
}
await emptyDir(maildir);

// Past one machine: one Letterbox against two in front of the same Dovecot
// LMTP proxy and two backends (tests/_cluster.ts), 16 connections of 1 KiB,
// half for alice (backend 127.0.0.2) and half for bob (127.0.0.3): on one
// host with two cores the second instance shares the same CPUs, so this shows
// the layout's cost, not a second machine's capacity.
let cluster: { one: number; two: number; ratio: number } | undefined;
if (CHECKS && canRunLmtpDovecot) {
  const backends = await startCluster();
  const args = ["--lmtp", `127.0.0.1:${backends.proxyPort}`];
  await Deno.mkdir(`${work}/cluster/a`, { recursive: true });
  await Deno.mkdir(`${work}/cluster/b`, { recursive: true });
  const a = await startLetterbox(`${work}/cluster/a`, ROOT, args);
  const b = await startLetterbox(`${work}/cluster/b`, ROOT, args);
  const both = async (first: Started, second: Started, seconds: number): Promise<LoadResult> => {
    const [x, y] = await Promise.all([
      smtpLoad(first.port, 8, 1024, false, seconds, undefined, "alice@example.com"),
      smtpLoad(second.port, 8, 1024, false, seconds, undefined, "bob@example.com"),
    ]);
    return {
      messages: x.messages + y.messages,
      seconds: Math.max(x.seconds, y.seconds),
      latencies: [...x.latencies, ...y.latencies],
      errors: x.errors + y.errors,
    };
  };
  await both(a, a, 1);
  await both(a, b, 1);
  const one: LoadResult[] = [];
  const two: LoadResult[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    if (round % 2 === 0) {
      one.push(await both(a, a, SECONDS));
      two.push(await both(a, b, SECONDS));
    } else {
      two.push(await both(a, b, SECONDS));
      one.push(await both(a, a, SECONDS));
    }
  }
  cluster = {
    one: median(one.map(rate)),
    two: median(two.map(rate)),
    ratio: pairedRatio(two, one),
  };
  console.log(
    `LMTP cluster (a Dovecot proxy, two backends), 16 x 1 KiB: one Letterbox ${
      cluster.one.toFixed(0)
    } msg/s, two ${cluster.two.toFixed(0)} msg/s (${cluster.ratio.toFixed(2)}x)`,
  );
  await a.stop();
  await b.stop();
  await backends.stop();
}

// Connection rate: connect + EHLO (+ STARTTLS + EHLO) + QUIT.
const letterbox = await startLetterbox(maildir);
const peakResettable = resetPeak(letterbox.pid);
const connectionRates = {
  plain: await connectionLoad(letterbox.port, 8, false, SECONDS),
  starttls: await connectionLoad(letterbox.port, 8, true, SECONDS),
  sinkPlain: sink ? await connectionLoad(sink.port, 8, false, SECONDS) : undefined,
};
console.log(
  `connections/s at 8 at a time: plain ${connectionRates.plain.toFixed(0)}, with STARTTLS ${
    connectionRates.starttls.toFixed(0)
  }` +
    (connectionRates.sinkPlain ? `; smtp-sink plain ${connectionRates.sinkPlain.toFixed(0)}` : ""),
);

await letterbox.stop();

// Memory per idle session, on a fresh server: open many, EHLO each, compare RSS.
const fresh = await startLetterbox(maildir);
await new Promise((resolve) => setTimeout(resolve, 500));
const idleBefore = memory(fresh.pid, "VmRSS");
const idle: Deno.Conn[] = [];
for (let i = 0; i < IDLE_SESSIONS; i += 100) {
  const batch = await Promise.all(
    Array.from({ length: Math.min(100, IDLE_SESSIONS - i) }, () => openSession(fresh.port, false)),
  );
  idle.push(...batch.map((session) => session.conn));
}
await new Promise((resolve) => setTimeout(resolve, 1000));
const idleAfter = memory(fresh.pid, "VmRSS");
const perSession = (idleAfter - idleBefore) / IDLE_SESSIONS;
for (const conn of idle) conn.close();
console.log(
  `idle sessions: ${IDLE_SESSIONS} after EHLO raise RSS by ${
    ((idleAfter - idleBefore) / 2 ** 20).toFixed(1)
  } MiB, ` +
    `${(perSession / 1024).toFixed(1)} KiB each`,
);
await fresh.stop();

// One large message on a fresh server: peak RSS over idle.
const LARGE = 48 * 1024 * 1024;
const big = await startLetterbox(maildir);
await new Promise((resolve) => setTimeout(resolve, 500));
const bigIdle = memory(big.pid, "VmRSS");
resetPeak(big.pid);
await smtpLoadOnce(big.port, LARGE);
const bigPeak = memory(big.pid, "VmHWM");
console.log(
  `large message: ${LARGE >> 20} MiB raises peak RSS from ${(bigIdle / 2 ** 20).toFixed(0)} to ${
    (bigPeak / 2 ** 20).toFixed(0)
  } MiB`,
);
await big.stop();
await emptyDir(maildir);

/** Sends one message of `size` octets. */
async function smtpLoadOnce(port: number, size: number): Promise<void> {
  const { conn, replies } = await openSession(port, false);
  await writeAll(
    conn,
    encoder.encode("MAIL FROM:<bench@load.test>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n"),
  );
  await expect(replies, 250);
  await expect(replies, 250);
  await expect(replies, 354);
  await writeAll(conn, wireMessage(size));
  await expect(replies, 250);
  conn.close();
}

await sink?.stop();
await authDns?.stop();
await rspamd?.[Symbol.asyncDispose]();
await dovecot?.[Symbol.asyncDispose]();
await Deno.remove(work, { recursive: true });
// Written back now. On ext4 without a journal the inodes freed here still slow
// the creates of whatever runs in the next minutes (see emptyCells); the next
// run waits until they are reusable.
await new Deno.Command("sync").output();
await Deno.writeTextFile(CLEANED_UP_AT, String(Date.now()));

const results = {
  date: new Date().toISOString(),
  command: `make bench${QUICK ? " ARGS=--quick" : ""}`,
  secondsPerSlice: SECONDS,
  rounds: ROUNDS,
  machine,
  peakRssReset: peakResettable,
  rows,
  connectionRates,
  cluster,
  idleSessions: { sessions: IDLE_SESSIONS, bytesPerSession: perSession },
  largeMessage: { bytes: LARGE, idleRss: bigIdle, peakRss: bigPeak },
};
const out = (flags.out as string | undefined) ??
  `${ROOT}/bench/results/${results.date.slice(0, 10)}.json`;
await Deno.writeTextFile(out, JSON.stringify(results, null, 2) + "\n");
// The chart beside the JSON, from the same rows.
const chart = out.replace(/\.json$/, "") + ".svg";
await Deno.writeTextFile(
  chart,
  chartSvg(
    rows,
    `make bench, ${
      results.date.slice(0, 10)
    }: ${machine.cpus} CPUs (${machine.cpu}), ${machine.filesystem}${
      machine.journal ? ` (journal: ${machine.journal})` : ""
    }, Deno ${machine.deno}, ${ROUNDS} rounds of ${SECONDS} s`,
  ),
);
console.log(`results: ${out}, chart: ${chart}`);

// The README's table, from these results.
const fixed = (value: number, digits: number) => value.toFixed(digits);
const lines = [
  "| connections | size | mode | msg/s | MB/s | p50 ms | p99 ms | peak RSS MiB | disk loop msg/s | vs disk loop (rounds' range) | vs smtp-sink | vs smtp-server, plain or STARTTLS as the row (its msg/s, p50 ms, CPU ms/msg, peak RSS MiB) | CPU ms/msg (disk loop's) |",
  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ...rows.map((row) =>
    `| ${row.connections} | ${sizeName(row.size)} | ${row.tls ? "STARTTLS" : "plain"} | ${
      fixed(row.messagesPerSecond, 0)
    } | ${fixed(row.megabytesPerSecond, 1)} | ${fixed(row.p50, 1)} | ${fixed(row.p99, 1)} | ${
      fixed(row.peakRss / 2 ** 20, 0)
    } | ${fixed(row.diskCeiling, 0)} | ${fixed(row.diskRatio, 2)}x (${
      fixed(Math.min(...row.diskRatios), 2)
    }–${fixed(Math.max(...row.diskRatios), 2)}) | ${
      row.sinkRatio === undefined ? "—" : `${fixed(row.sinkRatio, 2)}x`
    } | ${
      row.peer
        ? `${fixed(row.peer.ratio, 2)}x (${fixed(row.peer.messagesPerSecond, 0)}, ${
          fixed(row.peer.p50, 1)
        }, ${fixed(row.peer.cpuPerMessage, 2)}, ${fixed(row.peer.peakRss / 2 ** 20, 0)})`
        : "—"
    } | ${fixed(row.cpuPerMessage, 2)} (${fixed(row.diskCpuPerMessage, 2)}) |`
  ),
];
// What each check costs, as a ratio to the same cell without it, from the same rounds.
const checked = rows.filter((row) => row.checks);
if (checked.length > 0) {
  lines.push(
    "",
    "| connections | size | check or target | msg/s | vs plain Maildir (same rounds) | CPU ms/msg (plain) |",
    "| --- | --- | --- | --- | --- | --- |",
    ...checked.flatMap((row) =>
      Object.entries(row.checks!).map(([name, check]) =>
        `| ${row.connections} | ${sizeName(row.size)} | ${name} | ${
          fixed(check.messagesPerSecond, 0)
        } | ${fixed(check.ratio, 2)}x | ${fixed(check.cpuPerMessage, 2)} (${
          fixed(row.cpuPerMessage, 2)
        }) |`
      )
    ),
  );
}
console.log(`\n${lines.join("\n")}`);
