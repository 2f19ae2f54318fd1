/**
 * Letterbox: configuration -> logging -> certificates -> server -> signals.
 *
 * @module
 */

import type { SecureContext } from "node:tls";
import { ConfigError, HELP, parseConfig } from "./src/config.ts";
import { readKeyPair, secureContext, selfSignedKeyPair } from "./src/certificates.ts";
import { knownMaildirs, removeStaleTmpFiles } from "./src/delivery/cleanup.ts";
import { LocalDelivery } from "./src/delivery/local.ts";
import { LIMITS } from "./src/limits.ts";
import { parseRecipients, type RecipientTable } from "./src/delivery/recipients.ts";
import { Router } from "./src/delivery/router.ts";
import { configureLogging, logger } from "./src/log.ts";
import { Server } from "./src/server.ts";
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
  Deno.addSignalListener("SIGHUP", async () => {
    if (!config.recipients) return log.info("Received SIGHUP: nothing to reload");
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
  });
  Deno.addSignalListener("SIGTERM", () => void stop("SIGTERM"));
  Deno.addSignalListener("SIGINT", () => void stop("SIGINT"));
}

if (import.meta.main) await main();
