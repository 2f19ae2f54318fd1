/**
 * Listeners, the accept loop, the registry of live connections, and graceful
 * shutdown.
 *
 * @module
 */

import { describeError } from "../log.ts";
import type { Logger } from "@logtape/logtape";
import { ConfigError, type ListenAddress } from "../config/config.ts";
import { Connection, type ConnectionOptions } from "./connection.ts";
import { formatReply, REPLIES } from "../protocol/replies.ts";
import { type Cidr, inRanges } from "./cidr.ts";
import { LIMITS } from "../limits.ts";
import { parseProxyHeader, type ProxyHeader } from "./proxy_protocol.ts";
import { ConnTransport } from "./transport.ts";

const encoder = new TextEncoder();

/** A listener to open: where, whether TLS starts at once, whether a PROXY header comes first. */
export interface ListenerSpec {
  readonly address: ListenAddress;
  readonly implicitTls: boolean;
}

/** How many connections the server holds at once, and whom it trusts as a proxy. */
export interface ConnectionLimits {
  /** Address ranges allowed to send PROXY headers on PROXY listeners. */
  readonly proxyFrom: readonly Cidr[];
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
  readonly #listeners: Deno.TcpListener[] = [];
  readonly #accepting: Promise<void>[] = [];
  readonly #connections = new Set<Connection>();
  readonly #perIp = new Map<string, number>();
  // Proxied connections still sending their header count against the total.
  #handshaking = 0;
  readonly #served = new Set<Promise<void>>();

  /** Creates a server; nothing listens until {@link start}. */
  constructor(options: Omit<ConnectionOptions, "implicitTls">, limits: ConnectionLimits) {
    this.#options = options;
    this.#limits = limits;
    this.#log = options.log;
  }

  /**
   * Opens every listener; throws {@link ConfigError} when one cannot be
   * opened, saying what to do. Returns each spec's address, in spec order.
   *
   * `[::]:P` and `0.0.0.0:P` together are the usual way to say "IPv4 and
   * IPv6", but on Linux (net.ipv6.bindv6only = 0, the default) the IPv6
   * wildcard socket takes IPv4 too and the second bind fails. So IPv6
   * wildcards bind first, and an IPv4 wildcard on the same port that is then
   * in use is served by it (dual-stack); with bindv6only = 1 both bind.
   */
  start(specs: readonly ListenerSpec[]): ListenAddress[] {
    const bound: (ListenAddress | undefined)[] = new Array(specs.length);
    const opened: { listener: Deno.TcpListener; spec: ListenerSpec; index: number }[] = [];
    const order = specs.map((spec, index) => ({ spec, index }))
      .sort((a, b) => wildcardRank(a.spec) - wildcardRank(b.spec));
    for (const { spec, index } of order) {
      const { hostname, port } = spec.address;
      let listener: Deno.TcpListener;
      try {
        listener = Deno.listen({ hostname, port });
      } catch (error) {
        const dualStack = hostname === "0.0.0.0" && port !== 0 &&
          error instanceof Deno.errors.AddrInUse &&
          opened.some(({ spec: other }) =>
            other.address.hostname === "::" && other.address.port === port &&
            other.implicitTls === spec.implicitTls && !!other.address.proxy === !!spec.address.proxy
          );
        if (dualStack) {
          bound[index] = { hostname, port };
          this.#log.info("{address} is served by the IPv6 wildcard listener (dual-stack)", {
            address: formatListen(spec.address),
          });
          continue;
        }
        for (const { listener } of opened) listener.close();
        throw new ConfigError(
          `Cannot listen on ${formatListen(spec.address)}: ${listenAdvice(error, port)}`,
        );
      }
      opened.push({ listener, spec, index });
      const address = listener.addr as Deno.NetAddr;
      bound[index] = { hostname: address.hostname, port: address.port };
    }
    this.#listeners.push(...opened.map(({ listener }) => listener));
    // Logged once all are open: a start that fails prints only its error.
    opened.sort((a, b) => a.index - b.index);
    for (const { listener, spec, index } of opened) {
      this.#log.info("Listening on {address} ({kind})", {
        address: formatListen(bound[index]!),
        kind: (spec.implicitTls ? "implicit TLS" : "SMTP") +
          (spec.address.proxy ? ", PROXY protocol" : ""),
      });
      this.#accepting.push(this.#acceptLoop(listener, spec));
    }
    return bound as ListenAddress[];
  }

  /**
   * Stops accepting, asks every connection to finish (idle ones get 421 4.3.2,
   * messages in DATA complete), and waits up to `graceMs` before cutting the
   * rest off.
   */
  async shutdown(graceMs: number): Promise<void> {
    for (const listener of this.#listeners) {
      try {
        listener.close();
      } catch { /* already closed */ }
    }
    await Promise.all(this.#accepting);
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

  async #acceptLoop(listener: Deno.TcpListener, spec: ListenerSpec): Promise<void> {
    let pause = 0;
    let lastLogged = -Infinity;
    let unlogged = 0;
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
        pause = 0;
      } catch (error) {
        if (error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted) {
          return;
        }
        // A client that reset before we took its connection (ENOTCONN and
        // relatives) is that client's problem: skip it at once. Backing off
        // here let one client stall every other (a flood of resets).
        if (isConnectionError(error)) {
          this.#options.observer?.acceptFailed("connection");
          this.#log.debug("Skipped a connection that failed before accept: {error}", {
            error: describeError(error),
          });
          continue;
        }
        // Out of file descriptors or memory: breathe, longer each time, and say
        // so at most once per interval, with how many were not said.
        this.#options.observer?.acceptFailed("resources");
        pause = Math.min(Math.max(pause * 2, LIMITS.acceptBackoffMin), LIMITS.acceptBackoffMax);
        const now = Date.now();
        if (now - lastLogged >= LIMITS.acceptErrorLogInterval) {
          this.#log.error("Accept failed ({more} more since the last report): {error}", {
            error: describeError(error),
            more: unlogged,
          });
          lastLogged = now;
          unlogged = 0;
        } else {
          unlogged++;
        }
        await new Promise((resolve) => setTimeout(resolve, pause));
        continue;
      }
      if (spec.address.proxy) void this.#acceptProxied(conn, spec.implicitTls);
      else this.#accept(new ConnTransport(conn), spec.implicitTls);
    }
  }

  // A PROXY listener: the peer must be a trusted proxy and must send a valid
  // header first; anything else is closed without a greeting (the client
  // behind a misconfigured proxy must not be told it reached us).
  async #acceptProxied(conn: Deno.TcpConn, implicitTls: boolean): Promise<void> {
    const transport = new ConnTransport(conn);
    const peer = transport.remoteAddress;
    if (!inRanges(peer, this.#limits.proxyFrom)) {
      this.#log.warn("Refused {peer}: not an allowed proxy (--proxy-from)", { peer });
      return transport.close();
    }
    if (this.#connections.size + this.#handshaking >= this.#limits.maxConnections) {
      this.#log.info("Refused proxy connection from {peer}: too many connections", { peer });
      return transport.close();
    }
    this.#handshaking++;
    let header: ProxyHeader = { kind: "incomplete" };
    try {
      transport.deadline = Date.now() + LIMITS.proxyHeaderTimeout;
      let received = new Uint8Array(0);
      while (header.kind === "incomplete") {
        const chunk = await transport.read();
        if (chunk === null) break;
        const joined = new Uint8Array(received.length + chunk.length);
        joined.set(received);
        joined.set(chunk, received.length);
        received = joined;
        header = parseProxyHeader(received);
      }
      if (header.kind === "ok") {
        transport.unread(received.subarray(header.length));
        if (header.source) transport.setRemote(header.source.address, header.source.port);
      }
    } catch {
      /* timed out or reset: handled below */
    } finally {
      this.#handshaking--;
      transport.deadline = Infinity;
    }
    if (header.kind !== "ok") {
      const reason = header.kind === "invalid" ? header.reason : "no complete PROXY header";
      this.#log.warn("Closed proxy connection from {peer}: {reason}", { peer, reason });
      return transport.close();
    }
    this.#accept(transport, implicitTls);
  }

  #accept(transport: ConnTransport, implicitTls: boolean): void {
    // Limits come first, before any TLS or protocol work: the excess costs
    // one write and a close.
    const ip = transport.remoteAddress;
    const fromIp = this.#perIp.get(ip) ?? 0;
    const { maxConnections, maxConnectionsPerIp } = this.#limits;
    const refusal = this.#connections.size >= maxConnections
      ? REPLIES.tooManyConnections
      : fromIp >= maxConnectionsPerIp
      ? REPLIES.tooManyConnectionsFromYou
      : undefined;
    if (refusal) {
      this.#options.observer?.connectionRefused();
      this.#log.info("Refused {peer}: {reply}", {
        peer: ip,
        reply: formatReply(refusal).trimEnd(),
      });
      // On an implicit-TLS port the client expects a handshake, not text: just close.
      if (implicitTls) return transport.close();
      transport.write(encoder.encode(formatReply(refusal))).catch(() => {}).finally(() =>
        transport.close()
      );
      return;
    }
    this.#perIp.set(ip, fromIp + 1);
    this.#options.observer?.connectionOpened();
    const connection = new Connection(transport, { ...this.#options, implicitTls });
    this.#connections.add(connection);
    const served = connection.serve().finally(() => {
      this.#connections.delete(connection);
      this.#options.observer?.connectionClosed();
      const left = (this.#perIp.get(ip) ?? 1) - 1;
      if (left === 0) this.#perIp.delete(ip);
      else this.#perIp.set(ip, left);
      this.#served.delete(served);
    });
    this.#served.add(served);
  }
}

// Errors about one connection, not the listener: the client reset or went
// away between the kernel's handshake and our accept, or a firewall said no.
const CONNECTION_ERROR_CODES = new Set([
  "ENOTCONN",
  "ECONNABORTED",
  "ECONNRESET",
  "EPROTO",
  "EPERM",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
]);

/** True when an accept error is about the one connection, not the listener. */
export function isConnectionError(error: unknown): boolean {
  if (
    error instanceof Deno.errors.NotConnected || error instanceof Deno.errors.ConnectionAborted ||
    error instanceof Deno.errors.ConnectionReset
  ) return true;
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && CONNECTION_ERROR_CODES.has(code);
}

// IPv6 wildcards first, so that an IPv4 wildcard on the same port can be
// recognised as already served by them.
function wildcardRank(spec: ListenerSpec): number {
  return spec.address.hostname === "::" ? 0 : 1;
}

/** What went wrong opening a listener, and what to do about it, in one clause. */
export function listenAdvice(error: unknown, port: number): string {
  if (error instanceof Deno.errors.AddrInUse) {
    return `another program holds the port (see which with: ss -ltnp 'sport = :${port}'); ` +
      "stop it (on a new VPS, usually the distribution's exim4 or postfix) or choose another --listen";
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return port < 1024
      ? "ports below 1024 need CAP_NET_BIND_SERVICE; run it as deploy/letterbox.service does " +
        "(AmbientCapabilities=CAP_NET_BIND_SERVICE), or: setcap cap_net_bind_service=+ep dist/letterbox"
      : "the system refused the address (EACCES)";
  }
  if (error instanceof Deno.errors.NotCapable) {
    return "Letterbox may not listen there; add the address to LISTEN_HOSTS for make build";
  }
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return "no interface has this address";
  }
  return (error as { code?: string }).code ?? describeError(error);
}

/** Formats a listen address as `host:port`, with brackets around IPv6. */
export function formatListen(address: ListenAddress): string {
  return address.hostname.includes(":")
    ? `[${address.hostname}]:${address.port}`
    : `${address.hostname}:${address.port}`;
}
