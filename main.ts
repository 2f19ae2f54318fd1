/**
 * Letterbox: configuration -> logging -> certificates -> server -> signals.
 *
 * @module
 */

import type { SecureContext } from "node:tls";
import { ConfigError, HELP, type ListenAddress, parseConfig } from "./src/config.ts";
import { readKeyPair, secureContext, selfSignedKeyPair } from "./src/certificates.ts";
import { knownMaildirs, removeStaleTmpFiles } from "./src/delivery/cleanup.ts";
import { LocalDelivery } from "./src/delivery/local.ts";
import { LIMITS } from "./src/limits.ts";
import { parseRecipients, type RecipientTable } from "./src/delivery/recipients.ts";
import { Router } from "./src/delivery/router.ts";
import { configureLogging, logger } from "./src/log.ts";
import { HookQueue } from "./src/hooks/queue.ts";
import { Metrics } from "./src/metrics.ts";
import { formatListen, Server } from "./src/server.ts";
import { VERSION } from "./src/version.ts";

function fail(error: unknown): never {
  const message = error instanceof ConfigError
    ? error.message
    : `Cannot start: ${error instanceof Error ? error.message : error}`;
  Deno.stderr.writeSync(new TextEncoder().encode(`letterbox: ${message}\n`));
  Deno.exit(2);
}

async function main(): Promise<void> {
  let invocation;
  try {
    invocation = parseConfig(Deno.args, (name) => Deno.env.get(name), () => Deno.hostname());
  } catch (error) {
    fail(error);
  }
  if (invocation.kind === "help") return void Deno.stdout.writeSync(new TextEncoder().encode(HELP));
  if (invocation.kind === "version") {
    return void Deno.stdout.writeSync(
      new TextEncoder().encode(`letterbox ${VERSION} (deno ${Deno.version.deno})\n`),
    );
  }
  const config = invocation.config;
  await configureLogging(config.logLevel, config.logFormat);
  const log = logger("server");

  // Warnings wait until the listeners are open, so that a start that fails
  // prints only its one line.
  const warnings: (() => void)[] = [];
  let tlsContext: SecureContext | undefined;
  try {
    if (config.tls && config.tlsCert && config.tlsKey) {
      tlsContext = secureContext(await readKeyPair(config.tlsCert, config.tlsKey));
    } else if (config.tls) {
      tlsContext = secureContext(await selfSignedKeyPair(config.hostname));
      warnings.push(() =>
        log.warn("No --tls-cert given: using a self-signed certificate for {hostname}", {
          hostname: config.hostname,
        })
      );
    }
  } catch (error) {
    fail(error);
  }
  if (config.domains.length === 0 && !config.recipients) {
    warnings.push(() => log.warn("No --domain given: accepting mail for any domain"));
  }
  const hookPayloads = config.hooks.length > 0
    ? config.hookConcurrency * config.maxMessageSize * 4
    : 0;
  if (hookPayloads > LIMITS.hookPayloadBudget) {
    warnings.push(() =>
      log.warn(
        "--hook-concurrency {concurrency} x --max-message-size {size}: hook payloads may need " +
          "{mib} MiB at once, near the 1 GiB heap; lower either",
        {
          concurrency: config.hookConcurrency,
          size: config.maxMessageSize,
          mib: Math.round(hookPayloads / 2 ** 20),
        },
      )
    );
  }

  // Debris from a crash: files older than 36 hours in tmp/ (Maildir specification).
  let staleRemoved = 0;
  for (const maildir of await knownMaildirs(config.maildir)) {
    staleRemoved += await removeStaleTmpFiles(maildir, LIMITS.staleTmpAge).catch(() => 0);
  }
  if (staleRemoved > 0) {
    warnings.push(() =>
      log.warn("Removed {count} stale files from tmp/ folders", { count: staleRemoved })
    );
  }

  // The recipients file: read now (a mistake stops the start), again on SIGHUP
  // (a mistake then keeps the table in force).
  let recipients: RecipientTable | undefined;
  if (config.recipients) {
    try {
      recipients = parseRecipients(await Deno.readTextFile(config.recipients));
    } catch (error) {
      fail(
        new ConfigError(
          `Cannot use --recipients ${JSON.stringify(config.recipients)}: ${
            error instanceof Error ? error.message : error
          }`,
        ),
      );
    }
  }
  const router = new Router({
    maildir: config.maildir,
    domains: config.domains,
    defaultDomain: config.domains[0] ?? config.hostname,
    recipients: () => recipients,
    subaddressFolders: config.subaddressFolders,
  });
  const metrics = config.metrics ? new Metrics() : undefined;
  let hooks: HookQueue | undefined;
  if (config.hooks.length > 0) {
    hooks = new HookQueue({
      hooks: config.hooks,
      spool: config.hookSpool,
      secret: config.hookSecret,
      maxAttachmentBytes: config.hookMaxAttachmentBytes,
      retryFor: config.hookRetryFor,
      retryDelay: config.hookRetryDelay,
      timeout: config.hookTimeout,
      concurrency: config.hookConcurrency,
      log: logger("hooks"),
    });
    try {
      await hooks.start();
    } catch (error) {
      fail(
        new ConfigError(
          `Cannot use the hook spool ${JSON.stringify(config.hookSpool)}: ${
            error instanceof Error ? error.message : error
          }`,
        ),
      );
    }
  }
  const server = new Server({
    session: {
      hostname: config.hostname,
      maxMessageSize: config.maxMessageSize,
      maxRecipients: config.maxRecipients,
      maxErrors: config.maxErrors,
      requireTls: config.requireTls,
      checkRecipient: (recipient) => router.check(recipient),
    },
    delivery: new LocalDelivery(router, config.hostname),
    tlsContext: () => tlsContext,
    commandTimeout: config.commandTimeout,
    dataTimeout: config.dataTimeout,
    greetDelay: config.greetDelay,
    log: logger("smtp"),
    metrics,
    hooks,
  }, {
    maxConnections: config.maxConnections,
    maxConnectionsPerIp: config.maxConnectionsPerIp,
    proxyFrom: config.proxyFrom,
  });
  try {
    server.start([
      ...config.listen.map((address) => ({ address, implicitTls: false })),
      ...config.listenTls.map((address) => ({ address, implicitTls: true })),
    ]);
  } catch (error) {
    fail(error);
  }
  if (config.metrics && metrics) {
    let bound = config.metrics;
    try {
      bound = serveMetrics(config.metrics, metrics);
    } catch (error) {
      fail(
        new ConfigError(
          `Cannot serve --metrics on ${formatListen(config.metrics)}: ${
            (error as { code?: string }).code ?? error
          }`,
        ),
      );
    }
    log.info("Metrics on http://{address}/metrics", { address: formatListen(bound) });
  }
  for (const warn of warnings) warn();
  log.info("Letterbox {version} ready, delivering to {maildir}", {
    version: VERSION,
    maildir: config.maildir,
  });

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info("Received {signal}: shutting down", { signal });
    await server.shutdown(config.shutdownGrace);
    log.info("Stopped");
    Deno.exit(0);
  };
  // SIGHUP (systemctl reload, certbot's deploy hook) re-reads the recipients
  // file and the certificate; a change to the certificate files does too.
  // Whatever fails to load leaves what is in force, and says why.
  const reloadRecipients = async () => {
    if (!config.recipients) return;
    try {
      const table = parseRecipients(await Deno.readTextFile(config.recipients));
      recipients = table;
      log.info("Reloaded {file}: {count} addresses", {
        file: config.recipients,
        count: table.mailboxes.size + table.aliases.size + table.catchAll.size,
      });
    } catch (error) {
      log.error("Kept the recipients in force: cannot use {file}: {error}", {
        file: config.recipients,
        error: error instanceof Error ? error.message : String(error),
      });
    }
  };
  const reloadCertificate = async (why: string) => {
    if (!config.tlsCert || !config.tlsKey) return;
    try {
      tlsContext = secureContext(await readKeyPair(config.tlsCert, config.tlsKey));
      log.info("Reloaded the TLS certificate ({why}): new connections use it", { why });
    } catch (error) {
      log.error("Kept the TLS certificate in force ({why}): {error}", {
        why,
        error: error instanceof Error ? error.message : String(error),
      });
    }
  };
  Deno.addSignalListener("SIGHUP", () => {
    log.info("Received SIGHUP: reloading");
    void reloadRecipients();
    void reloadCertificate("SIGHUP");
  });
  if (config.tlsCert && config.tlsKey) {
    void watchCertificate(config.tlsCert, config.tlsKey, reloadCertificate);
  }
  Deno.addSignalListener("SIGTERM", () => void stop("SIGTERM"));
  Deno.addSignalListener("SIGINT", () => void stop("SIGINT"));
}

/**
 * Watches the folders of the certificate and key (files are often replaced by
 * a rename, which a watch on the file itself would miss) and reloads once
 * things have been quiet for a moment, so that a certificate and its key
 * written one after the other are read together.
 */
async function watchCertificate(
  cert: string,
  key: string,
  reload: (why: string) => Promise<void>,
): Promise<void> {
  const folders = [
    ...new Set([cert, key].map((file) => file.slice(0, Math.max(1, file.lastIndexOf("/"))))),
  ];
  const names = new Set([cert, key].map((file) => file.slice(file.lastIndexOf("/") + 1)));
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    for await (const event of Deno.watchFs(folders, { recursive: false })) {
      if (!event.paths.some((path) => names.has(path.slice(path.lastIndexOf("/") + 1)))) continue;
      clearTimeout(timer);
      timer = setTimeout(() => void reload("files changed"), 500);
    }
  } catch (error) {
    logger("server").warn("Not watching the certificate files: {error}", {
      error: error instanceof Error ? error.message : String(error),
    });
  }
}

/** Prometheus text on /metrics, "ok" on /healthz, 404 elsewhere; returns the bound address. */
function serveMetrics(address: ListenAddress, metrics: Metrics): ListenAddress {
  const server = Deno.serve(
    { hostname: address.hostname, port: address.port, onListen: () => {} },
    (request) => {
      const path = new URL(request.url).pathname;
      if (path === "/metrics") {
        return new Response(metrics.render(), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      }
      if (path === "/healthz") return new Response("ok\n");
      return new Response("Not found\n", { status: 404 });
    },
  );
  // onListen reports the port asked for; the server's own address has the one given.
  return { hostname: server.addr.hostname, port: server.addr.port };
}

if (import.meta.main) await main();
