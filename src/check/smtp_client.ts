/**
 * A small SMTP client for `letterbox check`: raw writes (the probes must
 * control every byte and how they are split), reply parsing, STARTTLS with
 * `Deno.startTls`, and a deadline on every wait, so a server that says
 * nothing cannot hang the check.
 *
 * @module
 */

import { concatBytes } from "../bytes.ts";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A reply as read from the wire. */
export interface WireReply {
  readonly code: number;
  /** The raw text, every line with its CRLF. */
  readonly text: string;
  /** How many reads it took to arrive (1: in one write, as RFC 5321 servers should send it). */
  readonly reads: number;
}

/** One connection to the server under test. */
export class SmtpClient {
  #conn: Deno.TcpConn | Deno.TlsConn;
  #buffer = "";
  #reads = 0;
  #closed = false;
  #pendingRead: Promise<number | null> | undefined;
  readonly #readBuffer = new Uint8Array(16_384);
  readonly host: string;

  readonly #timeoutMs: number;

  private constructor(conn: Deno.TcpConn | Deno.TlsConn, host: string, timeoutMs: number) {
    this.#conn = conn;
    this.host = host;
    this.#timeoutMs = timeoutMs;
  }

  /** Connects over plain TCP. */
  static async connect(host: string, port: number, timeoutMs: number): Promise<SmtpClient> {
    const conn = await withTimeout(Deno.connect({ hostname: host, port }), timeoutMs, "connect");
    conn.setNoDelay(true);
    return new SmtpClient(conn, host, timeoutMs);
  }

  /**
   * Sends raw text or bytes in one write. A write has a deadline too: inside
   * TLS it waits for a handshake that a broken server may never finish.
   */
  async send(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    await withTimeout(
      (async () => {
        let offset = 0;
        while (offset < bytes.length) offset += await this.#conn.write(bytes.subarray(offset));
      })(),
      this.#timeoutMs,
      "write",
    );
  }

  /** Reads one (possibly multi-line) reply, or undefined when the server closed or stayed silent. */
  async reply(timeoutMs: number): Promise<WireReply | undefined> {
    const deadline = Date.now() + timeoutMs;
    this.#reads = 0;
    for (;;) {
      const match = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/.exec(this.#buffer);
      if (match) {
        this.#buffer = this.#buffer.slice(match[0].length);
        return {
          code: Number(match[0].slice(0, 3)),
          text: match[0],
          reads: Math.max(1, this.#reads),
        };
      }
      const chunk = await this.#read(deadline - Date.now());
      if (chunk === undefined) return undefined;
      this.#buffer += chunk;
    }
  }

  /** Everything that arrives within `ms` (for "did the server answer what it must not?"). */
  async drain(ms: number): Promise<string> {
    const deadline = Date.now() + ms;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      const chunk = await this.#read(left);
      if (chunk === undefined) break;
      this.#buffer += chunk;
    }
    const text = this.#buffer;
    this.#buffer = "";
    return text;
  }

  /** Sends a line and reads its reply. */
  async command(line: string, timeoutMs: number): Promise<WireReply | undefined> {
    await this.send(`${line}\r\n`);
    return await this.reply(timeoutMs);
  }

  /** Upgrades to TLS after the server's 220 (no read may be pending). */
  async startTls(timeoutMs: number, caCerts?: string[]): Promise<void> {
    const secure = await withTimeout(
      Deno.startTls(this.#conn as Deno.TcpConn, {
        hostname: this.host,
        ...(caCerts ? { caCerts } : {}),
      }),
      timeoutMs,
      "TLS handshake",
    );
    // The handshake happens on first use: the deadlines of send() and reads bound it.
    this.#conn = secure;
  }

  /** Closes the connection (idempotent). */
  close(): void {
    try {
      this.#conn.close();
    } catch { /* closed */ }
  }

  /**
   * The raw octets that arrive within `ms` (for TLS records, which are not
   * text), stopping early once `enough` of them came.
   */
  async readBytes(ms: number, enough = 5): Promise<Uint8Array> {
    const deadline = Date.now() + ms;
    const parts: Uint8Array[] = [];
    let length = 0;
    while (length < enough && !this.#closed) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      this.#pendingRead ??= this.#conn.read(this.#readBuffer).catch(() => null);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((resolve) =>
        timer = setTimeout(() => resolve("timeout"), left)
      );
      const result = await Promise.race([this.#pendingRead, timeout]);
      clearTimeout(timer);
      if (result === "timeout") break;
      this.#pendingRead = undefined;
      if (result === null) {
        this.#closed = true;
        break;
      }
      parts.push(this.#readBuffer.slice(0, result));
      length += result;
    }
    return parts.length === 0 ? new Uint8Array(0) : concatBytes(parts);
  }

  /** True once the server closed the connection. */
  get closed(): boolean {
    return this.#closed;
  }

  // One read at a time: a read that outlived its wait is picked up by the next.
  async #read(ms: number): Promise<string | undefined> {
    if (ms <= 0 || this.#closed) return undefined;
    this.#pendingRead ??= this.#conn.read(this.#readBuffer).catch(() => null);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) =>
      timer = setTimeout(() => resolve("timeout"), ms)
    );
    try {
      const result = await Promise.race([this.#pendingRead, timeout]);
      if (result === "timeout") return undefined;
      this.#pendingRead = undefined;
      if (result === null) {
        this.#closed = true;
        return undefined;
      }
      this.#reads++;
      return decoder.decode(this.#readBuffer.subarray(0, result));
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Rejects with "<what> timed out" unless `promise` settles within `ms`. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) =>
        timer = setTimeout(() => reject(new Error(`${what} timed out`)), ms)
      ),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
