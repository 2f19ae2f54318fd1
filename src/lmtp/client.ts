/**
 * An LMTP client (RFC 2033) and a pool of its connections: connect over TCP
 * or a Unix socket, read the greeting, LHLO, then commands and replies, with
 * a time limit on every reply. Connections are reused (RSET between
 * transactions), at most a bounded number at once.
 *
 * @module
 */

import { describeError } from "../log.ts";
import type { Reply } from "../protocol/replies.ts";

/** Where the LMTP server listens. */
export type LmtpAddress =
  | { readonly kind: "tcp"; readonly hostname: string; readonly port: number }
  | { readonly kind: "unix"; readonly path: string };

/** Parses `HOST:PORT`, `[V6]:PORT` or `unix:/path`; returns the reason it is wrong as a string. */
export function parseLmtpAddress(text: string): LmtpAddress | string {
  if (text.startsWith("unix:")) {
    const path = text.slice(5);
    if (!path.startsWith("/")) {
      return "write unix: and an absolute path, e.g. unix:/run/dovecot/lmtp";
    }
    return { kind: "unix", path };
  }
  const match = /^\[([0-9a-fA-F:.]+)\]:(\d+)$/.exec(text) ?? /^([^\s:\[\]]+):(\d+)$/.exec(text);
  const port = match ? Number(match[2]) : NaN;
  if (!match || !Number.isInteger(port) || port < 1 || port > 65535) {
    return "write HOST:PORT, [V6]:PORT or unix:/path, e.g. 127.0.0.1:24 or unix:/run/dovecot/lmtp";
  }
  return { kind: "tcp", hostname: match[1], port };
}

/** The address as written, for logs and stored-copy names. */
export function formatLmtpAddress(address: LmtpAddress): string {
  if (address.kind === "unix") return `unix:${address.path}`;
  return address.hostname.includes(":")
    ? `[${address.hostname}]:${address.port}`
    : `${address.hostname}:${address.port}`;
}

/** The LMTP server did not answer in time, or the connection broke. */
export class LmtpError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LmtpError";
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One connection to the LMTP server, after its greeting and our LHLO. */
export class LmtpConnection {
  readonly #conn: Deno.Conn;
  readonly #timeout: number;
  #buffer = "";
  #broken = false;
  /** The extensions the server named in its LHLO reply, upper-case (PIPELINING, 8BITMIME, ...). */
  capabilities = new Set<string>();

  private constructor(conn: Deno.Conn, timeout: number) {
    this.#conn = conn;
    this.#timeout = timeout;
  }

  /** Connects, reads the greeting and says LHLO `ourName`; rejects with an {@link LmtpError}. */
  static async open(
    address: LmtpAddress,
    ourName: string,
    timeout: number,
  ): Promise<LmtpConnection> {
    let conn: Deno.Conn;
    try {
      conn = address.kind === "unix"
        ? await Deno.connect({ transport: "unix", path: address.path })
        : await Deno.connect({ hostname: address.hostname, port: address.port });
    } catch (error) {
      throw new LmtpError(
        `cannot connect to ${formatLmtpAddress(address)}: ${describeError(error)}`,
      );
    }
    const connection = new LmtpConnection(conn, timeout);
    try {
      const greeting = await connection.reply();
      if (greeting.code !== 220) throw new LmtpError(`greeting ${greeting.code}`);
      const lhlo = await connection.command(`LHLO ${ourName}`);
      if (lhlo.code !== 250) throw new LmtpError(`LHLO answered ${lhlo.code}`);
      connection.capabilities = new Set(
        lhlo.lines.slice(1).map((line) => line.split(" ")[0].toUpperCase()),
      );
      return connection;
    } catch (error) {
      connection.close();
      throw error;
    }
  }

  /** True once a write or read failed: the connection is not to be reused. */
  get broken(): boolean {
    return this.#broken;
  }

  /** Sends one command line and reads its reply. */
  async command(line: string): Promise<Reply> {
    await this.write(encoder.encode(`${line}\r\n`));
    return await this.reply();
  }

  /** Writes raw octets (message content, already dot-stuffed with CRLF line ends). */
  async write(bytes: Uint8Array): Promise<void> {
    try {
      let offset = 0;
      while (offset < bytes.length) offset += await this.#conn.write(bytes.subarray(offset));
    } catch (error) {
      this.#broken = true;
      throw new LmtpError(
        `the connection broke: ${describeError(error)}`,
      );
    }
  }

  /** Reads one reply (all lines of a multi-line one), within the time limit. */
  async reply(timeout: number = this.#timeout): Promise<Reply> {
    const lines: string[] = [];
    let code = 0;
    for (;;) {
      const line = await this.#line(timeout);
      const match = /^(\d{3})([ -])(.*)$/.exec(line);
      if (!match) {
        this.#broken = true;
        throw new LmtpError(`not a reply: ${JSON.stringify(line.slice(0, 80))}`);
      }
      code = Number(match[1]);
      lines.push(match[3]);
      if (match[2] === " ") break;
    }
    // "2.1.5 Ok": the enhanced code apart from the text, as our replies keep it.
    const enhanced = /^([245]\.\d{1,3}\.\d{1,3}) (.*)$/.exec(lines[0]);
    if (enhanced) {
      return { code, enhanced: enhanced[1], lines: [enhanced[2], ...lines.slice(1)] };
    }
    return { code, lines };
  }

  async #line(timeout: number): Promise<string> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const end = this.#buffer.indexOf("\r\n");
      if (end !== -1) {
        const line = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        return line;
      }
      if (this.#buffer.length > 65_536) {
        this.#broken = true;
        throw new LmtpError("a reply line longer than 64 KiB");
      }
      const chunk = new Uint8Array(16_384);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<"late">((resolve) => {
        timer = setTimeout(() => resolve("late"), Math.max(0, deadline - Date.now()));
      });
      let n: number | null | "late";
      try {
        n = await Promise.race([this.#conn.read(chunk), late]);
      } catch (error) {
        this.#broken = true;
        throw new LmtpError(
          `the connection broke: ${describeError(error)}`,
        );
      } finally {
        clearTimeout(timer);
      }
      if (n === "late") {
        this.#broken = true;
        throw new LmtpError(`no reply within ${timeout / 1000} s`);
      }
      if (n === null) {
        this.#broken = true;
        throw new LmtpError("the server closed the connection");
      }
      this.#buffer += decoder.decode(chunk.subarray(0, n));
    }
  }

  /** Closes the connection; never throws. */
  close(): void {
    this.#broken = true;
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }
}

/** Reused connections to one LMTP server, at most `max` at once. */
export class LmtpPool {
  readonly #address: LmtpAddress;
  readonly #ourName: string;
  readonly #max: number;
  readonly #timeout: number;
  readonly #idle: LmtpConnection[] = [];
  readonly #waiting: ((connection: LmtpConnection | undefined) => void)[] = [];
  #open = 0;
  #closed = false;

  /** A pool for `address`, saying LHLO `ourName`; `timeout` bounds every reply (ms). */
  constructor(address: LmtpAddress, ourName: string, max: number, timeout: number) {
    this.#address = address;
    this.#ourName = ourName;
    this.#max = max;
    this.#timeout = timeout;
  }

  /** The server's address, as written. */
  get name(): string {
    return formatLmtpAddress(this.#address);
  }

  /** An idle connection, a new one, or the next one given back; rejects with an {@link LmtpError}. */
  async take(): Promise<LmtpConnection> {
    if (this.#closed) throw new LmtpError("shutting down");
    const idle = this.#idle.pop();
    if (idle) return idle;
    if (this.#open >= this.#max) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const given = await new Promise<LmtpConnection | undefined>((resolve) => {
        this.#waiting.push(resolve);
        timer = setTimeout(() => {
          const index = this.#waiting.indexOf(resolve);
          if (index !== -1) this.#waiting.splice(index, 1);
          resolve(undefined);
        }, this.#timeout);
      });
      clearTimeout(timer);
      if (given) return given;
      if (this.#open >= this.#max) {
        throw new LmtpError(`all ${this.#max} connections busy for ${this.#timeout / 1000} s`);
      }
    }
    this.#open++;
    try {
      return await LmtpConnection.open(this.#address, this.#ourName, this.#timeout);
    } catch (error) {
      this.#open--;
      throw error;
    }
  }

  /**
   * Gives a connection back after its transaction: reset (RSET) and kept for
   * the next, or closed when it broke or the reset failed.
   */
  async give(connection: LmtpConnection): Promise<void> {
    if (!connection.broken && !this.#closed) {
      const reset = await connection.command("RSET").catch(() => undefined);
      if (reset?.code === 250 && !connection.broken) {
        const waiter = this.#waiting.shift();
        if (waiter) waiter(connection);
        else this.#idle.push(connection);
        return;
      }
    }
    connection.close();
    this.#open--;
    // Room for one more: a waiter may open its own.
    this.#waiting.shift()?.(undefined);
  }

  /** Closes every idle connection; those in use close when given back. */
  close(): void {
    this.#closed = true;
    for (const connection of this.#idle.splice(0)) {
      connection.close();
      this.#open--;
    }
  }
}
