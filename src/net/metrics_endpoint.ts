/**
 * The HTTP side of observability: Prometheus text on /metrics, "ok" on
 * /healthz, 404 elsewhere.
 *
 * @module
 */

import type { ListenAddress } from "../config/config.ts";
import type { Metrics } from "../metrics.ts";
import type { Health } from "../pipeline/after_commit.ts";

/** A running metrics endpoint. */
export interface MetricsEndpoint {
  /** Where it listens (the port the system chose when 0 was asked for). */
  readonly address: ListenAddress;
  /** Stops listening. */
  shutdown(): Promise<void>;
}

/**
 * Serves the metrics; throws when the address cannot be bound. /healthz says
 * `ok`, or 503 with the reason when `health` reports deliveries failing.
 */
export function serveMetrics(
  address: ListenAddress,
  metrics: Metrics,
  health: () => Health = () => ({ ok: true }),
): MetricsEndpoint {
  const server = Deno.serve(
    { hostname: address.hostname, port: address.port, onListen: () => {} },
    (request) => {
      const path = new URL(request.url).pathname;
      if (path === "/metrics") {
        return new Response(metrics.render(), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      }
      if (path === "/healthz") {
        const now = health();
        return now.ok
          ? new Response("ok\n")
          : new Response(`unhealthy: ${now.reason}\n`, { status: 503 });
      }
      return new Response("Not found\n", { status: 404 });
    },
  );
  return {
    // onListen reports the port asked for; the server's own address has the one given.
    address: { hostname: server.addr.hostname, port: server.addr.port },
    shutdown: () => server.shutdown(),
  };
}
