/**
 * Test helpers: start Letterbox in-process on a free loopback port (the
 * application unit, as main.ts starts it), or as the real program (`deno run
 * main.ts` with the narrow permissions `make build` bakes in) for tests of
 * signals, permissions and whole-process behaviour; and a small raw SMTP
 * client over `Deno.connect` / `Deno.startTls`.
 *
 * @module
 */

import { configure, getJsonLinesFormatter, type LogRecord } from "@logtape/logtape";
import { type App, startLetterbox } from "../src/app.ts";
import { parseConfig } from "../src/config/config.ts";
import { LOG_LEVELS } from "../src/log.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
/** The repository root. */
export const REPO = ROOT;
/** The test CA, leaf certificate and key made by `make certs`. */
export const CERTS = {
  ca: `${ROOT}/certs/ca.pem`,
  cert: `${ROOT}/certs/leaf.pem`,
  key: `${ROOT}/certs/leaf-key.pem`,
};
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A running Letterbox, in this process or another. */
export interface TestServer {
  readonly port: number;
  readonly tlsPort?: number;
  readonly maildir: string;
  /** Every log line so far, as the JSON log format writes it. */
  readonly logs: Record<string, unknown>[];
  /** Stops the server and waits for it; returns its exit code. */
  stop(): Promise<number>;
}

/** A Letterbox started in this process. */
export interface InProcessServer extends TestServer {
  /** Every plain listener's address, in configuration order. */
  readonly listening: readonly { hostname: string; port: number }[];
  /** Re-reads the recipients file and the certificate, as SIGHUP does. */
  reload(): Promise<void>;
}

/** A running Letterbox process. */
export interface RunningServer extends TestServer {
  /** Stops the process (SIGTERM unless told) and waits for it; returns its exit code. */
  stop(signal?: Deno.Signal): Promise<number>;
  /** The process, for tests that need it. */
  readonly process: Deno.ChildProcess;
}

interface ServerOptions {
  tlsListener?: boolean;
  maildir?: string;
  useTestCert?: boolean;
}

/** A free loopback port, found by binding port 0 and letting it go. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** The arguments every test server starts with, before the test's own (which win). */
function baseArgs(maildir: string, options: ServerOptions): string[] {
  return [
    "--listen",
    "127.0.0.1:0",
    ...(options.tlsListener ? ["--listen-tls", "127.0.0.1:0"] : []),
    "--maildir",
    maildir,
    "--hostname",
    "mx.test",
    "--log-format",
    "json",
    // No DNS here: tests that authenticate senders turn it on with their own DNS server.
    "--authentication",
    "off",
    ...(options.useTestCert === false ? [] : ["--tls-cert", CERTS.cert, "--tls-key", CERTS.key]),
  ];
}

// In-process servers log under ["letterbox", "tN"]; one sink hands each
// record, as JSON, to its server's list, at that server's level.
const instances = new Map<string, { logs: Record<string, unknown>[]; level: number }>();
let configured: Promise<void> | undefined;
let instanceCount = 0;
const jsonLine = getJsonLinesFormatter();

function routeLog(record: LogRecord): void {
  const instance = instances.get(String(record.category[1]));
  if (!instance || LOG_LEVELS.indexOf(record.level as typeof LOG_LEVELS[number]) < instance.level) {
    return;
  }
  instance.logs.push(JSON.parse(jsonLine(record)));
}

/**
 * Starts Letterbox in this process with `args` on 127.0.0.1:0 (plus an
 * implicit-TLS listener when `tlsListener` is set), a fresh Maildir, and the
 * test certificate.
 */
export async function startServer(
  args: string[] = [],
  options: ServerOptions = {},
): Promise<InProcessServer> {
  configured ??= configure({
    sinks: { tests: routeLog },
    loggers: [{ category: ["letterbox"], lowestLevel: "trace", sinks: ["tests"] }],
  });
  await configured;
  const maildir = options.maildir ?? await Deno.makeTempDir({ prefix: "letterbox-test-" });
  const invocation = parseConfig(
    [...baseArgs(maildir, options), ...args],
    () => undefined,
    () => "mx.test",
  );
  if (invocation.kind !== "run") throw new Error("not a run");
  const name = `t${++instanceCount}`;
  const logs: Record<string, unknown>[] = [];
  instances.set(name, { logs, level: LOG_LEVELS.indexOf(invocation.config.logLevel) });
  let app: App;
  try {
    app = await startLetterbox(invocation.config, { logRoot: ["letterbox", name] });
  } catch (error) {
    instances.delete(name);
    if (!options.maildir) await Deno.remove(maildir, { recursive: true }).catch(() => {});
    throw error;
  }
  return {
    port: app.listening[0].port,
    tlsPort: app.listeningTls[0]?.port,
    listening: app.listening,
    maildir,
    logs,
    reload: () => app.reload(),
    async stop() {
      await app.shutdown();
      instances.delete(name);
      if (!options.maildir) await Deno.remove(maildir, { recursive: true }).catch(() => {});
      return 0;
    },
  };
}

/**
 * The flags the tests run the server with: the V8 setting `make run` and
 * `make build` use, and the narrowest permissions that work.
 */
export function serverPermissions(maildirRoot: string): string[] {
  return [
    "--v8-flags=--max-semi-space-size=4,--max-old-space-size=1024",
    "--allow-net=127.0.0.1,[::1]",
    `--allow-read=${maildirRoot},${ROOT}/certs`,
    `--allow-write=${maildirRoot}`,
    "--allow-env",
    "--allow-sys=hostname,uid",
  ];
}

/**
 * Starts the real program with `args` on 127.0.0.1:0 (plus an implicit-TLS
 * listener when `tlsListener` is set), a fresh Maildir, and the test
 * certificate: for tests of signals, permissions and the whole process.
 */
export async function spawnServer(
  args: string[] = [],
  options: ServerOptions & { permissions?: string[] } = {},
): Promise<RunningServer> {
  const maildir = options.maildir ?? await Deno.makeTempDir({ prefix: "letterbox-test-" });
  const process = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...serverPermissions(maildir),
      ...(options.permissions ?? []),
      `${ROOT}/main.ts`,
      ...baseArgs(maildir, options),
      ...args,
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const logs: Record<string, unknown>[] = [];
  const ports: number[] = [];
  const listeners = options.tlsListener ? 2 : 1;
  const { promise: ready, resolve: resolveReady, reject: rejectReady } = Promise.withResolvers<
    void
  >();
  const pump = (async () => {
    let buffered = "";
    for await (const chunk of process.stderr.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      let newline;
      while ((newline = buffered.indexOf("\n")) !== -1) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        let record: Record<string, unknown>;
        try {
          record = JSON.parse(line);
        } catch {
          record = { message: line };
        }
        logs.push(record);
        const address = (record.properties as Record<string, unknown> | undefined)?.address;
        if (typeof address === "string" && String(record.message).startsWith("Listening on")) {
          ports.push(Number(address.slice(address.lastIndexOf(":") + 1)));
        }
        // The ready line comes after every listener and every start-up warning.
        if (String(record.message).startsWith("Letterbox ") && ports.length === listeners) {
          resolveReady();
        }
      }
    }
    rejectReady(
      new Error(`Server exited before listening:\n${logs.map((l) => l.message).join("\n")}`),
    );
  })();
  const timeout = setTimeout(() => rejectReady(new Error("Server did not start in 30 s")), 30_000);
  try {
    await ready;
  } catch (error) {
    process.kill("SIGKILL");
    await process.status;
    await pump;
    throw error;
  } finally {
    clearTimeout(timeout);
  }
  return {
    port: ports[0],
    tlsPort: ports[1],
    maildir,
    logs,
    process,
    async stop(signal: Deno.Signal = "SIGTERM") {
      try {
        process.kill(signal);
      } catch { /* already gone */ }
      const status = await process.status;
      await pump;
      if (!options.maildir) await Deno.remove(maildir, { recursive: true }).catch(() => {});
      return status.code;
    },
  };
}

/** Lists the files in `dir/new`, sorted; empty when the folder does not exist. */
export async function newFiles(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(`${dir}/new`)) names.push(entry.name);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return names.sort();
}

/** Reads every message in `dir/new` as text. */
export async function readMessages(dir: string): Promise<string[]> {
  return await Promise.all(
    (await newFiles(dir)).map((name) => Deno.readTextFile(`${dir}/new/${name}`)),
  );
}

/** The body of a stored message: everything after our three trace headers and the message's own header. */
export function bodyOf(message: string): string {
  return message.slice(message.indexOf("\n\n") + 2);
}

/** A reply as read from the wire. */
export interface WireReply {
  readonly code: number;
  /** Every line, with code and separator. */
  readonly lines: string[];
  /** The raw text. */
  readonly text: string;
}

/** A minimal SMTP client for tests: raw writes, reply parsing, STARTTLS. */
export class TestClient {
  #conn: Deno.TcpConn | Deno.TlsConn;
  #buffer = "";
  #closed = false;

  private constructor(conn: Deno.TcpConn | Deno.TlsConn) {
    this.#conn = conn;
  }

  /** Connects to 127.0.0.1:`port`, with TLS at once when `tls` is set. */
  static async connect(port: number, tls = false): Promise<TestClient> {
    const conn = tls
      ? await Deno.connectTls({
        hostname: "127.0.0.1",
        port,
        caCerts: [await Deno.readTextFile(CERTS.ca)],
      })
      : await Deno.connect({ hostname: "127.0.0.1", port });
    if ("setNoDelay" in conn) conn.setNoDelay(true);
    return new TestClient(conn);
  }

  /**
   * Connects, sends `header` (a PROXY header) first, then upgrades to TLS at
   * once when `tls` is set (an implicit-TLS listener behind a proxy).
   */
  static async connectProxied(port: number, header: Uint8Array, tls = false): Promise<TestClient> {
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
    tcp.setNoDelay(true);
    let offset = 0;
    while (offset < header.length) offset += await tcp.write(header.subarray(offset));
    if (!tls) return new TestClient(tcp);
    return new TestClient(
      await Deno.startTls(tcp, {
        hostname: "localhost",
        caCerts: [await Deno.readTextFile(CERTS.ca)],
      }),
    );
  }

  /** Sends raw text or bytes. */
  async send(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    let offset = 0;
    while (offset < bytes.length) offset += await this.#conn.write(bytes.subarray(offset));
  }

  /** Reads one (possibly multi-line) reply; rejects when the server closes first. */
  async reply(timeoutMs = 10_000): Promise<WireReply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/.exec(this.#buffer);
      if (match) {
        const text = match[0];
        this.#buffer = this.#buffer.slice(text.length);
        const lines = text.split("\r\n").filter((l) => l !== "");
        return { code: Number(text.slice(0, 3)), lines, text };
      }
      const chunk = await this.#read(deadline);
      if (chunk === null) {
        throw new Error(`Connection closed; unread: ${JSON.stringify(this.#buffer)}`);
      }
      this.#buffer += chunk;
    }
  }

  /** Sends a command and returns its reply. */
  async command(line: string): Promise<WireReply> {
    await this.send(`${line}\r\n`);
    return await this.reply();
  }

  /**
   * Runs EHLO (unless `ehlo` is false), MAIL, one RCPT per recipient and DATA (unless `dataCommand` is false),
   * failing the test unless each is accepted; the next thing to send is the message.
   */
  async startMessage(
    from: string,
    recipients: string[],
    { ehlo = true, mailParameters = "", dataCommand = true }: {
      ehlo?: boolean;
      mailParameters?: string;
      /** False to stop after RCPT (for BDAT). */
      dataCommand?: boolean;
    } = {},
  ): Promise<void> {
    const expect = async (line: string, code: number) => {
      const reply = await this.command(line);
      if (reply.code !== code) throw new Error(`${line} got ${reply.text.trim()}, not ${code}`);
    };
    if (ehlo) await expect("EHLO client.test", 250);
    await expect(`MAIL FROM:<${from}>${mailParameters ? ` ${mailParameters}` : ""}`, 250);
    for (const recipient of recipients) await expect(`RCPT TO:<${recipient}>`, 250);
    if (dataCommand) await expect("DATA", 354);
  }

  /** Resolves with everything until the server closes (or the timeout). */
  async readToClose(timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const chunk = await this.#read(deadline);
      if (chunk === null) break;
      this.#buffer += chunk;
    }
    const rest = this.#buffer;
    this.#buffer = "";
    return rest;
  }

  /** Upgrades the connection with the test CA (after the server's 220). */
  async startTls(): Promise<void> {
    this.#conn = await Deno.startTls(this.#conn as Deno.TcpConn, {
      hostname: "localhost",
      caCerts: [await Deno.readTextFile(CERTS.ca)],
    });
  }

  /** EHLO, STARTTLS and the handshake: the session is then encrypted and needs a new EHLO. */
  async upgrade(): Promise<void> {
    await this.command("EHLO client.test");
    const ready = await this.command("STARTTLS");
    if (ready.code !== 220) throw new Error(`STARTTLS got ${ready.text.trim()}`);
    await this.startTls();
  }

  /** Bytes received and not yet parsed as a reply. */
  get unread(): string {
    return this.#buffer;
  }

  /** Half-closes: the server sees end of input. */
  async closeWrite(): Promise<void> {
    await this.#conn.closeWrite();
  }

  /** Closes the connection (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }

  async #read(deadline: number): Promise<string | null> {
    const buffer = new Uint8Array(65_536);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) =>
      timer = setTimeout(() => resolve("timeout"), deadline - Date.now())
    );
    try {
      const result = await Promise.race([this.#conn.read(buffer), timeout]);
      if (result === "timeout") {
        throw new Error(
          `Timed out waiting for the server; unread: ${JSON.stringify(this.#buffer)}`,
        );
      }
      if (result === null) return null;
      return decoder.decode(buffer.subarray(0, result));
    } catch (error) {
      if (
        error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.BadResource
      ) return null;
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Runs a command to completion and returns its exit code and output. */
export async function run(
  command: string,
  args: string[],
  options: { stdin?: string; env?: Record<string, string>; cwd?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(command, {
    args,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: options.env,
    cwd: options.cwd,
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(encoder.encode(options.stdin));
    await writer.close();
  }
  const output = await child.output();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** True when `command` can be run here. */
export async function have(command: string): Promise<boolean> {
  try {
    const { code } = await run("sh", ["-c", `command -v ${command}`]);
    return code === 0;
  } catch {
    return false;
  }
}

/** Waits until a log line (after the first `after` lines) starts with `start`. */
export async function waitForLog(
  logs: Record<string, unknown>[],
  start: string,
  after = 0,
): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (logs.slice(after).some((l) => String(l.message).startsWith(start))) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`No log line starting with ${start}`);
}
