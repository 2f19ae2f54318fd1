/**
 * DNS for sender authentication: `Deno.resolveDns` behind the resolver
 * function mailauth takes (Node's `dns.promises.resolve` shapes and error
 * codes), with a timeout per query, one query in flight per name and type,
 * and a bounded cache.
 *
 * `Deno.resolveDns` does not return TTLs, so answers are kept for a fixed,
 * short time ({@link DNS_LIMITS}); a local caching resolver (unbound) next to
 * Letterbox honours the real TTLs, and is what mail hosts run.
 *
 * @module
 */

import { describeError } from "../log.ts";

/** Where queries go: a server and port, or the system's resolver when undefined. */
export interface NameServer {
  readonly ipAddr: string;
  readonly port: number;
}

/** Fixed DNS limits, in milliseconds and entries. */
export const DNS_LIMITS = {
  /** One query; without a bound a dead server takes 15 s to fail. */
  queryTimeout: 2_000,
  /** How long an answer is reused. */
  answerLifetime: 60_000,
  /** How long "no such name / no such record" is reused (RFC 2308 caching, kept short). */
  negativeLifetime: 30_000,
  /** Entries kept; the oldest go first. */
  maxEntries: 10_000,
} as const;

/** A DNS failure as Node reports it: mailauth reads `code`. */
export class DnsError extends Error {
  /** `ENOTFOUND`, `ENODATA`, `ETIMEOUT` or `ESERVFAIL`. */
  readonly code: string;
  constructor(code: string, name: string, rrtype: string, why: string) {
    super(`${rrtype} ${name}: ${why}`);
    this.name = "DnsError";
    this.code = code;
  }
}

type Answer = unknown[];
interface Entry {
  readonly expires: number;
  readonly answer?: Answer;
  readonly error?: DnsError;
}

const SUPPORTED = new Set(["A", "AAAA", "MX", "TXT", "PTR", "CNAME", "NS"]);

/** A caching resolver; `resolve` is the function mailauth calls. */
export class Resolver {
  readonly #server: NameServer | undefined;
  readonly #timeout: number;
  readonly #cache = new Map<string, Entry>();
  readonly #inFlight = new Map<string, Promise<Answer>>();
  /** Queries sent (cache misses), for tests and metrics. */
  queries = 0;

  /** Creates a resolver asking `server` (the system's resolver when undefined). */
  constructor(server?: NameServer, timeout: number = DNS_LIMITS.queryTimeout) {
    this.#server = server;
    this.#timeout = timeout;
  }

  /** Resolves `name` for `rrtype` in Node's shapes; rejects with a {@link DnsError}. */
  readonly resolve = (name: string, rrtype = "A"): Promise<Answer> => {
    const type = rrtype.toUpperCase();
    const key = `${type} ${name.toLowerCase()}`;
    const cached = this.#cache.get(key);
    if (cached && cached.expires > Date.now()) {
      return cached.error ? Promise.reject(cached.error) : Promise.resolve(cached.answer!);
    }
    if (cached) this.#cache.delete(key);
    const running = this.#inFlight.get(key);
    if (running) return running;
    const query = this.#query(name, type, key);
    this.#inFlight.set(key, query);
    query.then(() => this.#inFlight.delete(key), () => this.#inFlight.delete(key));
    return query;
  };

  async #query(name: string, type: string, key: string): Promise<Answer> {
    if (!SUPPORTED.has(type)) throw new DnsError("ENOTIMP", name, type, "type not supported");
    this.queries++;
    try {
      const records = await Deno.resolveDns(name, type as "A", {
        ...(this.#server ? { nameServer: this.#server } : {}),
        signal: AbortSignal.timeout(this.#timeout),
      });
      const answer = nodeShape(type, records as unknown[]);
      this.#remember(key, { expires: Date.now() + DNS_LIMITS.answerLifetime, answer });
      return answer;
    } catch (error) {
      const failure = dnsError(error, name, type);
      // Only definite answers are kept; a timeout or server failure is asked again.
      if (failure.code === "ENOTFOUND" || failure.code === "ENODATA") {
        this.#remember(key, { expires: Date.now() + DNS_LIMITS.negativeLifetime, error: failure });
      }
      throw failure;
    }
  }

  #remember(key: string, entry: Entry): void {
    if (this.#cache.size >= DNS_LIMITS.maxEntries) {
      this.#cache.delete(this.#cache.keys().next().value!);
    }
    this.#cache.set(key, entry);
  }
}

// Deno's records in the shapes of Node's dns.promises.resolve, which mailauth expects.
function nodeShape(type: string, records: unknown[]): Answer {
  if (type === "MX") {
    return (records as Deno.MxRecord[]).map((mx) => ({
      exchange: mx.exchange.replace(/\.$/, ""),
      priority: mx.preference,
    }));
  }
  if (type === "TXT") return records;
  return (records as string[]).map((name) => name.replace(/\.$/, ""));
}

/** Maps a `Deno.resolveDns` failure to the Node error code mailauth understands. */
export function dnsError(error: unknown, name: string, type: string): DnsError {
  if (error instanceof DnsError) return error;
  const why = describeError(error);
  if (error instanceof Deno.errors.NotFound) return new DnsError("ENOTFOUND", name, type, why);
  if (
    error instanceof Deno.errors.TimedOut ||
    (error instanceof DOMException &&
      (error.name === "TimeoutError" || error.name === "AbortError"))
  ) {
    return new DnsError("ETIMEOUT", name, type, "no answer in time");
  }
  return new DnsError("ESERVFAIL", name, type, why);
}

/** Parses `HOST:PORT`, `[V6]:PORT` or `HOST` (port 53); returns the reason it is wrong as a string. */
export function parseNameServer(text: string): NameServer | string {
  const match = /^\[([0-9a-fA-F:.]+)\](?::(\d+))?$/.exec(text) ??
    /^([0-9.]+)(?::(\d+))?$/.exec(text) ?? /^([0-9a-fA-F:]+)()$/.exec(text);
  if (!match) return "write an IP address and port, e.g. 127.0.0.1:53 or [::1]:53";
  const port = match[2] ? Number(match[2]) : 53;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    return `the port ${match[2]} is not 1-65535`;
  }
  return { ipAddr: match[1], port };
}

/**
 * Whether this process may ask `server` (or the system's resolvers): the
 * missing `host:port` when it may not. Deno checks the permission before a
 * query leaves, so a query with a short deadline finds out without waiting
 * for an answer.
 */
export async function missingDnsPermission(server?: NameServer): Promise<string | undefined> {
  if (server) {
    const host = server.ipAddr.includes(":")
      ? `[${server.ipAddr}]:${server.port}`
      : `${server.ipAddr}:${server.port}`;
    const state = await Deno.permissions.query({ name: "net", host });
    return state.state === "granted" ? undefined : host;
  }
  try {
    await Deno.resolveDns("localhost", "A", { signal: AbortSignal.timeout(200) });
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) {
      return /access to "([^"]+)"/.exec(error.message)?.[1] ?? "the system's DNS server";
    }
  }
  return undefined;
}
