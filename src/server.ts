/**
 * Listeners, the accept loop, the registry of live connections, and graceful
 * shutdown.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import net from "node:net";
import { ConfigError, type ListenAddress } from "./config.ts";
import { Connection, type ConnectionOptions } from "./connection.ts";
import { formatReply, REPLIES } from "./replies.ts";
import { normaliseAddress, SocketTransport } from "./transport.ts";

/** A listener to open: where, and whether TLS starts at once. */
export interface ListenerSpec {
  readonly address: ListenAddress;
  readonly implicitTls: boolean;
}

/** How many connections the server holds at once. */
export interface ConnectionLimits {
  /** Across all listeners. */
  readonly maxConnections: number;
  /** From one IP address. */
  readonly maxConnectionsPerIp: number;
}

/** The SMTP server: every listener and every connection. */
export class Server {
  readonly #options: Omit<ConnectionOptions, "implicitTls">;
  readonly #limits: ConnectionLimits;
  readonly #log: Logger;
  readonly #listeners: net.Server[] = [];
  readonly #connections = new Set<Connection>();
  readonly #perIp = new Map<string, number>();
  readonly #served = new Set<Promise<void>>();

  /** Creates a server; nothing listens until {@link start}. */
  constructor(options: Omit<ConnectionOptions, "implicitTls">, limits: ConnectionLimits) {
    this.#options = options;
    this.#limits = limits;
    this.#log = options.log;
  }

  /** Connections open now. */
  get connectionCount(): number {
    return this.#connections.size;
  }

  /** Opens every listener; throws {@link ConfigError} when one cannot be opened. */
  async start(specs: readonly ListenerSpec[]): Promise<ListenAddress[]> {
    const bound: ListenAddress[] = [];
    for (const spec of specs) {
      const listener = net.createServer(
        { pauseOnConnect: true },
        (socket) => this.#accept(socket, spec.implicitTls),
      );
      await new Promise<void>((resolve, reject) => {
        listener.once("error", (error: Error & { code?: string }) => {
          const where = formatListen(spec.address);
          reject(new ConfigError(`Cannot listen on ${where}: ${error.code ?? error.message}`));
        });
        listener.listen({ host: spec.address.hostname, port: spec.address.port }, () => resolve());
      });
      listener.on(
        "error",
        (error) => this.#log.error("Listener error: {error}", { error: error.message }),
      );
      this.#listeners.push(listener);
      const address = listener.address() as net.AddressInfo;
      const actual = { hostname: address.address, port: address.port };
      bound.push(actual);
    }
    // Logged once all are open: a start that fails prints only its error.
    specs.forEach((spec, i) =>
      this.#log.info("Listening on {address} ({kind})", {
        address: formatListen(bound[i]),
        kind: spec.implicitTls ? "implicit TLS" : "SMTP",
      })
    );
    return bound;
  }

  /**
   * Stops accepting, asks every connection to finish (idle ones get 421 4.3.2,
   * messages in DATA complete), and waits up to `graceMs` before cutting the
   * rest off.
   */
  async shutdown(graceMs: number): Promise<void> {
    // close() stops accepting at once; its callback would wait for every
    // connection, which is what the grace period below is for.
    for (const listener of this.#listeners) listener.close();
    for (const connection of this.#connections) connection.shutdown();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const grace = new Promise<"timeout">((resolve) =>
      timer = setTimeout(() => resolve("timeout"), graceMs)
    );
    const result = await Promise.race([Promise.all(this.#served), grace]);
    clearTimeout(timer);
    if (result === "timeout") {
      this.#log.warn("Shutdown grace ended with {count} connections open", {
        count: this.#connections.size,
      });
    }
  }

  #accept(socket: net.Socket, implicitTls: boolean): void {
    // Limits come first, before any TLS or protocol work: the excess costs
    // one write and a close.
    const ip = normaliseAddress(socket.remoteAddress ?? "unknown");
    const fromIp = this.#perIp.get(ip) ?? 0;
    const { maxConnections, maxConnectionsPerIp } = this.#limits;
    const refusal = this.#connections.size >= maxConnections
      ? REPLIES.tooManyConnections
      : fromIp >= maxConnectionsPerIp
      ? REPLIES.tooManyConnectionsFromYou
      : undefined;
    if (refusal) {
      this.#log.info("Refused {peer}: {reply}", {
        peer: ip,
        reply: formatReply(refusal).trimEnd(),
      });
      socket.on("error", () => {});
      // On an implicit-TLS port the client expects a handshake, not text: just close.
      if (implicitTls) socket.destroy();
      else socket.end(formatReply(refusal));
      setTimeout(() => socket.destroy(), 1_000);
      return;
    }
    this.#perIp.set(ip, fromIp + 1);
    const transport = new SocketTransport(socket);
    const connection = new Connection(transport, { ...this.#options, implicitTls });
    this.#connections.add(connection);
    const served = connection.serve().finally(() => {
      this.#connections.delete(connection);
      const left = (this.#perIp.get(ip) ?? 1) - 1;
      if (left === 0) this.#perIp.delete(ip);
      else this.#perIp.set(ip, left);
      this.#served.delete(served);
    });
    this.#served.add(served);
  }
}

/** Formats a listen address as `host:port`, with brackets around IPv6. */
export function formatListen(address: ListenAddress): string {
  return address.hostname.includes(":")
    ? `[${address.hostname}]:${address.port}`
    : `${address.hostname}:${address.port}`;
}
