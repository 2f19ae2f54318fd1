/**
 * One client socket behind one interface, plain or TLS, with the upgrade in
 * between. Built on `node:net` and `node:tls` because `Deno.startTls` is
 * client-only (denoland/deno#18451) and `node:tls`'s server-side `TLSSocket`
 * upgrades a live `net.Socket` in place.
 *
 * @module
 */

import type net from "node:net";
import tls from "node:tls";
import type { TlsInfo } from "./delivery/delivery.ts";
import type { ChunkSource } from "./line_reader.ts";

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
  /** Writes bytes, waiting only when the client is not reading (backpressure). */
  write(bytes: string | Uint8Array): Promise<void>;
  /** Drops unread input, then performs the server side of a TLS handshake. */
  startTls(context: tls.SecureContext, timeoutMs: number): Promise<void>;
  /** Flushes what was written, then closes. */
  close(): void;
}

/** A {@link Transport} over a `node:net` socket. */
export class SocketTransport implements Transport {
  #socket: net.Socket;
  #queue: Uint8Array[] = [];
  #waiter:
    | { resolve: (chunk: Uint8Array | null) => void; reject: (error: Error) => void }
    | undefined;
  #ended = false;
  #error: Error | undefined;
  #tls: TlsInfo | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly remoteAddress: string;
  readonly remotePort: number;
  deadline = Infinity;
  idleTimeout = Infinity;

  readonly #onData = (chunk: Uint8Array) => {
    this.#socket.pause();
    const waiter = this.#waiter;
    if (waiter) {
      this.#settle();
      waiter.resolve(chunk);
    } else {
      this.#queue.push(chunk);
    }
  };
  readonly #onEnd = () => {
    this.#ended = true;
    const waiter = this.#waiter;
    if (waiter) {
      this.#settle();
      if (this.#error) waiter.reject(this.#error);
      else waiter.resolve(null);
    }
  };
  readonly #onError = (error: Error) => {
    this.#error = error;
    this.#onEnd();
  };

  /** Wraps an accepted socket. */
  constructor(socket: net.Socket) {
    this.#socket = socket;
    this.remoteAddress = normaliseAddress(socket.remoteAddress ?? "unknown");
    this.remotePort = socket.remotePort ?? 0;
    socket.setNoDelay(true);
    this.#attach(socket);
  }

  get tls(): TlsInfo | undefined {
    return this.#tls;
  }

  read(): Promise<Uint8Array | null> {
    const queued = this.#queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.#ended) return this.#error ? Promise.reject(this.#error) : Promise.resolve(null);
    const wait = Math.min(this.deadline - Date.now(), this.idleTimeout);
    if (wait <= 0) return Promise.reject(new ReadTimeoutError());
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
      this.#timer = setTimeout(() => {
        this.#settle();
        reject(new ReadTimeoutError());
      }, wait);
      this.#socket.resume();
    });
  }

  write(bytes: string | Uint8Array): Promise<void> {
    const socket = this.#socket;
    if (socket.destroyed || !socket.writable) {
      return Promise.reject(this.#error ?? new Error("Connection closed"));
    }
    if (socket.write(bytes)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (error?: Error) => {
        socket.off("drain", onDrain);
        socket.off("close", onClose);
        if (error) reject(error);
        else resolve();
      };
      const onDrain = () => done();
      const onClose = () => done(this.#error ?? new Error("Connection closed"));
      socket.on("drain", onDrain);
      socket.on("close", onClose);
    });
  }

  async startTls(context: tls.SecureContext, timeoutMs: number): Promise<void> {
    const raw = this.#socket;
    this.#detach(raw);
    // Plaintext queued after the STARTTLS command is dropped, never executed
    // (CVE-2011-0411); bytes still inside the socket become handshake input
    // and fail it.
    this.#queue = [];
    const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: context });
    this.#socket = secure;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error("TLS handshake timed out")), timeoutMs);
      const finish = (error?: Error) => {
        clearTimeout(timer);
        secure.off("secure", onSecure);
        secure.off("error", finish);
        secure.off("close", onClose);
        if (error) {
          secure.destroy();
          reject(error);
        } else resolve();
      };
      const onSecure = () => finish();
      const onClose = () => finish(new Error("Connection closed during the TLS handshake"));
      secure.on("secure", onSecure);
      secure.on("error", finish);
      secure.on("close", onClose);
    });
    const cipher = secure.getCipher();
    this.#tls = { protocol: secure.getProtocol() ?? "TLS", cipher: cipher?.name ?? "unknown" };
    secure.pause();
    this.#attach(secure);
  }

  close(): void {
    const socket = this.#socket;
    // A read still waiting ends with the socket's 'close' event, as end of stream.
    if (socket.destroyed) return;
    socket.end();
    // A client that never reads would keep a half-closed socket forever.
    const timer = setTimeout(() => socket.destroy(), 5_000);
    socket.once("close", () => clearTimeout(timer));
  }

  /** Closes at once, without flushing. */
  destroy(): void {
    this.#settle();
    this.#socket.destroy();
  }

  #attach(socket: net.Socket): void {
    socket.on("data", this.#onData);
    socket.on("end", this.#onEnd);
    socket.on("close", this.#onEnd);
    socket.on("error", this.#onError);
  }

  #detach(socket: net.Socket): void {
    socket.off("data", this.#onData);
    socket.off("end", this.#onEnd);
    socket.off("close", this.#onEnd);
    socket.off("error", this.#onError);
    // The TLS socket reports errors from now on; this keeps a late error on
    // the raw socket from becoming an uncaught exception.
    socket.on("error", () => {});
    socket.pause();
  }

  #settle(): void {
    this.#waiter = undefined;
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }
}

/** Shows IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) as plain IPv4. */
export function normaliseAddress(address: string): string {
  return address.startsWith("::ffff:") && address.includes(".") ? address.slice(7) : address;
}
