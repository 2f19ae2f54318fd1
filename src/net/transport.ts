/**
 * One client connection behind one interface, plain or TLS, with the upgrade
 * in between.
 *
 * Plain connections are `Deno.listen` connections read into one reused
 * buffer: no allocation per read, so a 200 MB message passes with flat memory
 * (measured: a `node:net` socket allocates a fresh buffer per read, and the
 * server's peak RSS grew by 44 MB over such a message; this reader by under
 * 10 MB), and plain reads are 1.8x faster (bench/transport_bench.ts).
 *
 * TLS, after STARTTLS or at once on an implicit-TLS listener, is `node:tls`'s
 * server-side `TLSSocket` over the same connection, adopted as a `node:net`
 * socket (or, where that is not possible, bridged into a Duplex):
 * `Deno.startTls` is client-only (denoland/deno#18451), and `Deno.listenTls`
 * cannot take over a connection that began in plain text. Both TLS paths use
 * the same code, which also reports the protocol and cipher for Received.
 *
 * @module
 */

import net from "node:net";
import process from "node:process";
import { Duplex } from "node:stream";
import tls from "node:tls";
import type { TlsInfo } from "../pipeline/envelope.ts";
import type { ChunkSource } from "../protocol/line_reader.ts";

/** Raised by {@link Transport.read} when the read deadline passed. */
export class ReadTimeoutError extends Error {
  /** Creates the error. */
  constructor() {
    super("Read timed out");
    this.name = "ReadTimeoutError";
  }
}

/** A client connection as the SMTP driver sees it. */
export interface Transport extends ChunkSource {
  /** The client's IP address (IPv4-mapped IPv6 addresses are shown as IPv4). */
  readonly remoteAddress: string;
  /** The client's port. */
  readonly remotePort: number;
  /** The TLS session, once there is one. */
  readonly tls: TlsInfo | undefined;
  /** Absolute time (ms since the epoch) after which a waiting read fails with {@link ReadTimeoutError}. */
  deadline: number;
  /** Longest wait for any one read, in milliseconds, whatever the deadline. */
  idleTimeout: number;
  /** True while a message streams in: reads may then fill a larger buffer. */
  bulk: boolean;
  /**
   * Resolves with the next chunk, `null` at end of stream. The chunk is valid
   * only until the next call: the buffer behind it is reused.
   */
  read(): Promise<Uint8Array | null>;
  /** Writes bytes; resolves once the system took them. */
  write(bytes: Uint8Array): Promise<void>;
  /** Drops unread input, then performs the server side of a TLS handshake. */
  startTls(context: tls.SecureContext, timeoutMs: number): Promise<void>;
  /** Sends what was written, then closes. */
  close(): void;
}

// Per connection, idle ones included: 16 KiB keeps an idle session near 20 KiB
// in all (64 KiB made it 73 KiB).
const READ_BUFFER_BYTES = 16 * 1024;
// While a message streams in, a read that fills the 16 KiB buffer moves the
// connection to one of 64 KiB: a quarter of the reads (each a trip through the
// event loop) for large messages, +9% msg/s at 64 x 64 KiB. Reads go back to
// 16 KiB when the message ends; the large buffer is kept for the session's
// next messages, and a session that never gets a large message never has one.
const BULK_READ_BYTES = 64 * 1024;
// One TLS record is at most 16 KiB of plaintext plus overhead.
const TLS_READ_BYTES = 17 * 1024;
// Decrypted records a TLS connection holds unread before it stops reading.
const MAX_QUEUED_RECORDS = 4;
// After our last reply, how long unread input may keep a closing connection
// open: closing with unread input would send a reset that can destroy that reply.
const LINGER_MS = 2_000;

/** A {@link Transport} over a `Deno.listen` connection. */
export class ConnTransport implements Transport {
  readonly #conn: Deno.TcpConn;
  readonly #small = new Uint8Array(READ_BUFFER_BYTES);
  #buffer = this.#small;
  // Made on the first large message and kept for the session's next ones.
  #large: Uint8Array<ArrayBuffer> | undefined;
  #bulk = false;
  // A read the system has not answered yet: a timed-out wait leaves it
  // running, and the next read takes it over (a connection allows one read).
  #pendingRead: Promise<number | null> | undefined;
  // The buffer that read fills.
  #pendingBuffer = this.#small;
  readonly #timer = new ReadTimer();
  #secure: TlsReader | undefined;
  #tls: TlsInfo | undefined;
  #closed = false;
  // Bytes read past a PROXY header, handed out before anything else.
  #unread: Uint8Array | undefined;
  remoteAddress: string;
  remotePort: number;
  deadline = Infinity;
  idleTimeout = Infinity;

  /** Wraps an accepted connection. */
  constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
    const address = conn.remoteAddr as Deno.NetAddr;
    this.remoteAddress = normaliseAddress(address.hostname);
    this.remotePort = address.port;
    try {
      conn.setNoDelay(true);
    } catch { /* already reset by the peer */ }
  }

  get tls(): TlsInfo | undefined {
    return this.#tls;
  }

  get bulk(): boolean {
    return this.#bulk;
  }

  set bulk(on: boolean) {
    this.#bulk = on;
    if (!on) this.#buffer = this.#small;
  }

  /** Gives bytes back: the next read returns them first. */
  unread(bytes: Uint8Array): void {
    if (bytes.length > 0) this.#unread = bytes.slice();
  }

  /** Names the real client, as a trusted proxy told us (PROXY protocol). */
  setRemote(address: string, port: number): void {
    this.remoteAddress = normaliseAddress(address);
    this.remotePort = port;
  }

  async read(): Promise<Uint8Array | null> {
    if (this.#unread && !this.#secure) {
      const bytes = this.#unread;
      this.#unread = undefined;
      return bytes;
    }
    const wait = Math.min(this.deadline - Date.now(), this.idleTimeout);
    if (wait <= 0) throw new ReadTimeoutError();
    if (this.#secure) return await this.#secure.read(wait, this.#timer);
    if (!this.#pendingRead) {
      this.#pendingBuffer = this.#buffer;
      this.#pendingRead = this.#conn.read(this.#buffer).catch((error) => {
        if (
          error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.BadResource
        ) return null;
        throw error;
      });
    }
    const count = await this.#timer.wait(this.#pendingRead, wait);
    this.#pendingRead = undefined;
    if (count === null) return null;
    const filled = this.#pendingBuffer;
    if (this.#bulk && count === filled.length && filled === this.#small) {
      this.#buffer = this.#large ??= new Uint8Array(BULK_READ_BYTES);
    }
    return filled.subarray(0, count);
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.#secure) return await this.#secure.write(bytes);
    let offset = 0;
    while (offset < bytes.length) offset += await this.#conn.write(bytes.subarray(offset));
  }

  async startTls(context: tls.SecureContext, timeoutMs: number): Promise<void> {
    // Whatever the client sent after STARTTLS and is still in the system's
    // buffer becomes handshake input and fails it; it is never executed
    // (CVE-2011-0411). What was already read is dropped by the line reader.
    // Bytes given back after a PROXY header may already hold the ClientHello.
    const leftover = this.#unread;
    this.#unread = undefined;
    // A read still in flight would race the TLS layer for the first bytes.
    const native = leftover || this.#pendingRead ? undefined : nativeSocket(this.#conn);
    const stream = native?.socket ?? connDuplex(this.#conn, leftover) as unknown as net.Socket;
    const socket = new tls.TLSSocket(stream, {
      isServer: true,
      secureContext: context,
    });
    this.#secure = new TlsReader(socket, native?.handle);
    await this.#secure.handshake(timeoutMs);
    const cipher = socket.getCipher();
    this.#tls = { protocol: socket.getProtocol() ?? "TLS", cipher: cipher?.name ?? "unknown" };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#timer.stop();
    if (this.#secure) return this.#secure.close(() => this.#closeConn());
    void this.#lingerThenClose();
  }

  // Half-close, then read (and drop) until the client closes or the linger
  // time passes, so that the client reads our last reply before any reset.
  async #lingerThenClose(): Promise<void> {
    try {
      await this.#conn.closeWrite();
      const until = Date.now() + LINGER_MS;
      for (;;) {
        const wait = until - Date.now();
        if (wait <= 0) break;
        this.#pendingRead ??= this.#conn.read(this.#small).catch(() => null);
        const count = await this.#timer.wait(this.#pendingRead, wait).catch(() => null);
        this.#pendingRead = undefined;
        if (count === null) break;
      }
    } catch { /* the peer is gone */ }
    this.#closeConn();
  }

  #closeConn(): void {
    this.#timer.stop();
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }
}

/** Reads a `node:tls` socket chunk by chunk, with the same pull interface. */
class TlsReader {
  readonly #socket: tls.TLSSocket;
  #queue: Uint8Array[] = [];
  #waiter: ((chunk: Uint8Array | null) => void) | undefined;
  #failer: ((error: Error) => void) | undefined;
  #ended = false;
  #closing = false;
  #paused = true;
  // The adopted socket under TLS, if any (see nativeSocket), and whether its
  // reading is stopped.
  readonly #raw: RawHandle | undefined;
  #rawStopped = false;
  #error: Error | undefined;

  constructor(socket: tls.TLSSocket, raw?: RawHandle) {
    this.#socket = socket;
    this.#raw = raw;
    socket.pause();
    socket.on("data", (buffer: Uint8Array) => {
      if (this.#closing) return;
      // Paused only once a few records wait unread: pausing and resuming the
      // socket for every record cost more than the record's decryption.
      if (this.#queue.length >= MAX_QUEUED_RECORDS - 1) this.#pause();
      // A plain view of the Buffer: Buffer's own indexOf (Deno's Node layer,
      // in JavaScript) was 8% of the time at 64 x 64 KiB with STARTTLS; the
      // Uint8Array one is native.
      const chunk = new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
      const waiter = this.#waiter;
      this.#settle();
      if (waiter) waiter(chunk);
      else this.#queue.push(chunk);
    });
    const end = () => {
      this.#ended = true;
      const waiter = this.#waiter;
      const failer = this.#failer;
      this.#settle();
      if (this.#error && failer) failer(this.#error);
      else if (waiter) waiter(null);
    };
    socket.on("end", end);
    socket.on("close", end);
    socket.on("error", (error: Error) => {
      this.#error = error;
      end();
    });
  }

  handshake(timeoutMs: number): Promise<void> {
    const socket = this.#socket;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error("TLS handshake timed out")), timeoutMs);
      const finish = (error?: Error) => {
        clearTimeout(timer);
        socket.off("secure", onSecure);
        socket.off("error", finish);
        socket.off("close", onClose);
        if (error) {
          socket.destroy();
          reject(error);
        } else resolve();
      };
      const onSecure = () => finish();
      const onClose = () => finish(new Error("Connection closed during the TLS handshake"));
      socket.on("secure", onSecure);
      socket.on("error", finish);
      socket.on("close", onClose);
    });
  }

  read(wait: number, timer: ReadTimer): Promise<Uint8Array | null> {
    const queued = this.#queue.shift();
    if (queued) {
      if (this.#queue.length === 0 && !this.#ended) this.#resume();
      return Promise.resolve(queued);
    }
    if (this.#ended) return this.#error ? Promise.reject(this.#error) : Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const ticket = timer.start(wait, () => {
        this.#settle();
        this.#pause();
        reject(new ReadTimeoutError());
      });
      this.#waiter = (chunk) => {
        timer.cancel(ticket);
        resolve(chunk);
      };
      this.#failer = (error) => {
        timer.cancel(ticket);
        reject(error);
      };
      this.#resume();
    });
  }

  write(bytes: Uint8Array): Promise<void> {
    const socket = this.#socket;
    if (socket.destroyed || !socket.writable) {
      return Promise.reject(this.#error ?? new Error("Connection closed"));
    }
    return new Promise((resolve, reject) => {
      socket.write(bytes, (error?: Error | null) => error ? reject(error) : resolve());
    });
  }

  close(then: () => void): void {
    const socket = this.#socket;
    this.#closing = true;
    const timer = setTimeout(() => socket.destroy(), LINGER_MS);
    socket.once("close", () => {
      clearTimeout(timer);
      then();
    });
    if (socket.destroyed) {
      clearTimeout(timer);
      return then();
    }
    socket.end();
    // Keep reading (and dropping) so that the peer's close_notify and FIN arrive.
    this.#resume();
  }

  #settle(): void {
    this.#waiter = undefined;
    this.#failer = undefined;
  }

  #pause(): void {
    if (this.#paused) return;
    this.#paused = true;
    this.#socket.pause();
    // Over an adopted socket, Deno's TLS layer goes on reading and decrypting
    // into memory while the TLSSocket is paused (a paused reader took 1.3 GiB
    // in 4 s from a client that kept sending): reading stops at the socket.
    if (this.#raw && !this.#rawStopped) {
      this.#rawStopped = true;
      this.#raw.readStop();
    }
  }

  #resume(): void {
    if (this.#rawStopped) {
      this.#rawStopped = false;
      this.#raw!.readStart();
    }
    if (!this.#paused) return;
    this.#paused = false;
    this.#socket.resume();
  }
}

/**
 * The connection as a `node:net` socket over the same file descriptor, for
 * `TLSSocket` to do TLS in Deno's native layer: no bytes pass through
 * JavaScript between the socket and the decryption (at 8 x 1 KiB with
 * STARTTLS the Duplex bridge below was a quarter of the main thread's time).
 * Deno exposes this only through Node's internal `tcp_wrap` binding, which
 * `openFromRid` adopts a `Deno.Conn` into, so any failure falls back to the
 * bridge. The socket does not own the descriptor: closing the `Deno.Conn`
 * after TLS is done closes it. The handle under the socket comes too, for
 * {@link TlsReader} to stop reading at it.
 */
export function nativeSocket(
  conn: Deno.TcpConn,
): { socket: net.Socket; handle: RawHandle } | undefined {
  try {
    denoRid ??= Object.getOwnPropertySymbols(conn).find((symbol) =>
      symbol.description === "Deno.internal.rid"
    );
    const rid = denoRid && (conn as unknown as Record<symbol, unknown>)[denoRid];
    if (typeof rid !== "number") return undefined;
    // deno-lint-ignore no-explicit-any -- Node's internal binding has no types
    tcpWrap ??= (process as any).binding("tcp_wrap");
    const handle = new tcpWrap!.TCP(tcpWrap!.constants.SOCKET);
    if (handle.openFromRid(rid) !== 0) return undefined;
    const socket = new net.Socket(
      { handle, readable: true, writable: true } as net.SocketConstructorOpts,
    );
    return { socket, handle };
  } catch {
    return undefined;
  }
}

/** What pausing needs of an adopted socket's handle (Node's internal `TCP`). */
export interface RawHandle {
  readStop(): number;
  readStart(): number;
}

// Found on the first TLS connection and kept: the key of a Deno.Conn's
// resource id (not a registered symbol), and Node's internal TCP binding.
let denoRid: symbol | undefined;
let tcpWrap:
  | {
    TCP: new (type: number) => RawHandle & { openFromRid(rid: number): number };
    constants: { SOCKET: number };
  }
  | undefined;

/**
 * The connection as a Node Duplex for `TLSSocket`, reading only when TLS asks
 * for more, one 16 KiB read at a time. (`Duplex.from` over the web streams
 * read ahead without limit: 64 STARTTLS connections sending 4 MiB each held
 * hundreds of MiB.) `leftover` comes first: bytes read past a PROXY header.
 */
function connDuplex(conn: Deno.TcpConn, leftover: Uint8Array | undefined): Duplex {
  let first = leftover;
  const duplex = new Duplex({
    // The peer's end of input ends the whole stream, so that TLS sees a close
    // (a handshake with a client that left must fail, not wait).
    allowHalfOpen: false,
    readableHighWaterMark: TLS_READ_BYTES,
    writableHighWaterMark: TLS_READ_BYTES,
    read() {
      if (first) {
        const bytes = first;
        first = undefined;
        this.push(bytes);
        return;
      }
      const buffer = new Uint8Array(TLS_READ_BYTES);
      conn.read(buffer).then(
        (count) => this.push(count === null ? null : buffer.subarray(0, count)),
        (error) => this.destroy(error),
      );
    },
    write(chunk: Uint8Array, _encoding, callback) {
      (async () => {
        let offset = 0;
        while (offset < chunk.length) offset += await conn.write(chunk.subarray(offset));
      })().then(() => callback(), (error) => callback(error));
    },
    final(callback) {
      conn.closeWrite().then(() => callback(), () => callback());
    },
  });
  // A failed handshake must still send its alert (RFC 8446 6.2), e.g. to a
  // client offering only TLS 1.0. Deno's node:tls destroys this stream
  // synchronously inside the failed handshake and writes the alert its TLS
  // library queued one microtask later, which a destroyed stream refuses: so
  // the destroy waits one macrotask. (Should Deno reorder this, the alert is
  // lost again, as before, and nothing worse happens.)
  const destroy = duplex.destroy.bind(duplex);
  duplex.destroy = ((error?: Error) => {
    setTimeout(() => destroy(error), 0);
    return duplex;
  }) as typeof duplex.destroy;
  return duplex;
}

/**
 * One timer per connection for its read timeouts, set again only when a wait
 * must end sooner than the timer fires. Deadlines mostly move later, so a
 * read costs no timer operations (setting and clearing one per read was
 * about 2% of the event loop at 64 connections).
 */
class ReadTimer {
  #handle: ReturnType<typeof setTimeout> | undefined;
  #firesAt = Infinity;
  #expiresAt = Infinity;
  #onExpiry: (() => void) | undefined;
  #ticket = 0;

  /** Calls `onExpiry` after `ms` unless {@link cancel} comes first; returns the ticket for it. */
  start(ms: number, onExpiry: () => void): number {
    this.#expiresAt = Date.now() + ms;
    this.#onExpiry = onExpiry;
    if (this.#firesAt > this.#expiresAt) this.#arm(ms);
    return ++this.#ticket;
  }

  /** Cancels the wait with this ticket, if it is still the current one. */
  cancel(ticket: number): void {
    if (ticket === this.#ticket) this.#onExpiry = undefined;
  }

  /** Waits for `promise` for at most `ms`, then rejects with {@link ReadTimeoutError}. */
  wait<T>(promise: Promise<T>, ms: number): Promise<T> {
    if (ms === Infinity) return promise;
    return new Promise<T>((resolve, reject) => {
      const ticket = this.start(ms, () => reject(new ReadTimeoutError()));
      promise.then((value) => {
        this.cancel(ticket);
        resolve(value);
      }, (error) => {
        this.cancel(ticket);
        reject(error);
      });
    });
  }

  /** Drops the timer (the connection is closing). */
  stop(): void {
    this.#onExpiry = undefined;
    if (this.#handle !== undefined) clearTimeout(this.#handle);
    this.#handle = undefined;
    this.#firesAt = Infinity;
  }

  #arm(ms: number): void {
    if (this.#handle !== undefined) clearTimeout(this.#handle);
    this.#firesAt = Date.now() + ms;
    this.#handle = setTimeout(() => this.#fire(), ms);
  }

  #fire(): void {
    this.#handle = undefined;
    this.#firesAt = Infinity;
    const onExpiry = this.#onExpiry;
    if (!onExpiry) return;
    const left = this.#expiresAt - Date.now();
    if (left > 0) return this.#arm(left);
    this.#onExpiry = undefined;
    onExpiry();
  }
}

/** Shows IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) as plain IPv4. */
export function normaliseAddress(address: string): string {
  return address.startsWith("::ffff:") && address.includes(".") ? address.slice(7) : address;
}
