/**
 * The application: wires a {@link Config} into running parts (certificates,
 * recipients, the pipeline, hooks, metrics, listeners) and hands back what a
 * caller needs: the addresses it listens on, reload and shutdown. main.ts
 * calls it for the real program; tests call it in-process on port 0.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import { type Config, ConfigError, type ListenAddress } from "./config/config.ts";
import { grantAdvice, grantSentence } from "./config/grant.ts";
import { HookQueue } from "./hooks/queue.ts";
import { checkHooks } from "./hooks/startup.ts";
import { missingDnsPermission, Resolver } from "./dns/resolver.ts";
import type { Check } from "./pipeline/checks/check.ts";
import { RspamdCheck } from "./pipeline/checks/rspamd.ts";
import { formatLmtpAddress, LmtpPool } from "./lmtp/client.ts";
import { LmtpTarget } from "./pipeline/targets/lmtp.ts";
import { LIMITS } from "./limits.ts";
import { describeError, logger } from "./log.ts";
import { knownMaildirs, removeStaleTmpFiles } from "./maildir/cleanup.ts";
import { fileOwner, probeWritable } from "./maildir/maildir.ts";
import { maildirRootOf } from "./maildir/template.ts";
import { Metrics } from "./metrics.ts";
import { CertificateStore } from "./net/certificate_store.ts";
import type { ConnectionObserver } from "./net/connection.ts";
import { type MetricsEndpoint, serveMetrics } from "./net/metrics_endpoint.ts";
import { formatListen, Server } from "./net/server.ts";
import { AfterCommit } from "./pipeline/after_commit.ts";
import { Pipeline } from "./pipeline/pipeline.ts";
import { RecipientsFile } from "./pipeline/recipients_file.ts";
import { Router } from "./pipeline/route.ts";
import { MaildirTarget } from "./pipeline/targets/maildir.ts";
import { VERSION } from "./version.ts";

/** How the application is run, beyond its configuration. */
export interface AppOptions {
  /** The log category the instance logs under (default `["letterbox"]`). */
  readonly logRoot?: readonly string[];
}

/** A running Letterbox. */
export interface App {
  /** The plain (STARTTLS) listeners' addresses, in configuration order. */
  readonly listening: readonly ListenAddress[];
  /** The implicit-TLS listeners' addresses. */
  readonly listeningTls: readonly ListenAddress[];
  /** The metrics endpoint's address, when metrics are on. */
  readonly metricsAddress?: ListenAddress;
  /** Re-reads the recipients file and the certificate (SIGHUP). */
  reload(): Promise<void>;
  /** Stops accepting, lets messages in DATA finish for up to `graceMs`, and stops everything. */
  shutdown(graceMs?: number): Promise<void>;
}

/**
 * Starts Letterbox; throws {@link ConfigError} (one line for the operator)
 * when something the configuration names cannot be used.
 */
export async function startLetterbox(config: Config, options: AppOptions = {}): Promise<App> {
  const log = (name: string): Logger => logger(name, options.logRoot);
  const serverLog = log("server");

  // Warnings wait until the listeners are open, so that a start that fails
  // prints only its one line.
  const warnings: (() => void)[] = [];
  const certificates = await CertificateStore.load({
    tls: config.tls,
    certFile: config.tlsCert,
    keyFile: config.tlsKey,
    hostname: config.hostname,
  }, serverLog);
  if (certificates.selfSigned) {
    warnings.push(() =>
      serverLog.warn("No --tls-cert given: using a self-signed certificate for {hostname}", {
        hostname: config.hostname,
      })
    );
  }
  if (config.domains.length === 0 && !config.recipients) {
    warnings.push(() => serverLog.warn("No --domain given: accepting mail for any domain"));
  }
  const hookPayloads = config.hooks.length > 0
    ? config.hookConcurrency * config.maxMessageSize * 4
    : 0;
  if (hookPayloads > LIMITS.hookPayloadBudget) {
    warnings.push(() =>
      serverLog.warn(
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

  const maildirRoot = maildirRootOf(config.maildir);
  try {
    await probeWritable(maildirRoot);
  } catch (error) {
    throw new ConfigError(
      `Cannot write to the Maildir root ${JSON.stringify(maildirRoot)}: ${
        grantAdvice(error, "write", maildirRoot) ??
          `${describeError(error)}; Letterbox writes as the user it runs as (the mail user in ` +
            "deploy/letterbox.service): give that user the folder"
      }`,
    );
  }

  // Debris from a crash: files older than 36 hours in tmp/ (Maildir specification).
  let staleRemoved = 0;
  for (const maildir of await knownMaildirs(config.maildir)) {
    staleRemoved += await removeStaleTmpFiles(maildir, LIMITS.staleTmpAge).catch(() => 0);
  }
  if (staleRemoved > 0) {
    warnings.push(() =>
      serverLog.warn("Removed {count} stale files from tmp/ folders", { count: staleRemoved })
    );
  }

  const recipients = config.recipients
    ? await RecipientsFile.load(config.recipients, serverLog)
    : undefined;
  const router = new Router({
    maildir: config.maildir,
    domains: config.domains,
    defaultDomain: config.domains[0] ?? config.hostname,
    recipients: recipients && (() => recipients.table),
    subaddressFolders: config.subaddressFolders,
  });
  const metrics = config.metrics
    ? new Metrics({ version: VERSION, deno: Deno.version.deno })
    : undefined;
  if (metrics) {
    metrics.sources.certificateExpiry = () => {
      const notAfter = certificates.facts?.notAfter;
      return notAfter ? Math.floor(notAfter.getTime() / 1000) : undefined;
    };
  }
  let hooks: HookQueue | undefined;
  if (config.hooks.length > 0) {
    await checkHooks(config.hooks);
    const secret = await hookSecret(config);
    if (!secret && config.hooks.some((hook) => hook.target.kind === "webhook")) {
      warnings.push(() =>
        serverLog.warn(
          "Webhooks are unsigned: anyone who finds their URL can call them as Letterbox; " +
            "set --hook-secret-file",
        )
      );
    }
    hooks = new HookQueue({
      hooks: config.hooks,
      spool: config.hookSpool,
      secret,
      maxAttachmentBytes: config.hookMaxAttachmentBytes,
      retryFor: config.hookRetryFor,
      retryDelay: config.hookRetryDelay,
      timeout: config.hookTimeout,
      concurrency: config.hookConcurrency,
      log: log("hooks"),
      onJob: metrics && ((event) => metrics.hookJobs.inc({ result: event })),
    });
    if (metrics) {
      const queue = hooks;
      metrics.sources.hookJobsPending = () => queue.pending;
    }
    try {
      await hooks.start();
    } catch (error) {
      throw new ConfigError(
        `Cannot use the hook spool ${JSON.stringify(config.hookSpool)}: ${describeError(error)}`,
      );
    }
  }
  const checks: Check[] = [];
  if (config.authentication) {
    const { dnsServer, policy } = config.authentication;
    const missing = await missingDnsPermission(dnsServer);
    if (missing) {
      throw new ConfigError(
        `Cannot authenticate senders: ${grantSentence("net", missing, "DNS_SERVERS")} ` +
          "(or --dns-server HOST:PORT, or --authentication off)",
      );
    }
    // Loaded only when on: mailauth and its dependencies take about 20 MiB of
    // heap, which every garbage collection would walk for nothing.
    const { AuthenticationCheck } = await import("./pipeline/checks/authentication.ts");
    checks.push(
      new AuthenticationCheck(
        config.hostname,
        new Resolver(dnsServer),
        policy,
        metrics && ((method, result) => metrics.authentication.inc({ method, result })),
      ),
    );
  }
  if (config.rspamd) {
    const url = new URL(config.rspamd.url);
    const host = `${url.hostname}:${url.port || (url.protocol === "https:" ? 443 : 80)}`;
    if ((await Deno.permissions.query({ name: "net", host })).state !== "granted") {
      throw new ConfigError(
        `Cannot use --rspamd ${JSON.stringify(config.rspamd.url)}: ${
          grantSentence("net", host, "RSPAMD_HOSTS")
        }`,
      );
    }
    checks.push(
      new RspamdCheck(
        {
          ...config.rspamd,
          hostname: config.hostname,
          ownAuthenticationResults: config.authentication !== undefined,
        },
        log("rspamd"),
        metrics && ((action) => metrics.rspamdActions.inc({ action })),
      ),
    );
  }
  const afterCommit = new AfterCommit({ hooks, metrics });
  let lmtpPool: LmtpPool | undefined;
  if (config.lmtp) {
    const { address } = config.lmtp;
    const permission = address.kind === "unix"
      ? await Deno.permissions.query({ name: "write", path: address.path })
      : await Deno.permissions.query({ name: "net", host: `${address.hostname}:${address.port}` });
    if (permission.state !== "granted") {
      throw new ConfigError(
        `Cannot use --lmtp ${JSON.stringify(formatLmtpAddress(address))}: ${
          address.kind === "unix"
            ? grantSentence("write", address.path, "LMTP_SOCKETS")
            : grantSentence("net", `${address.hostname}:${address.port}`, "LMTP_HOSTS")
        }`,
      );
    }
    lmtpPool = new LmtpPool(address, config.hostname, config.lmtp.connections, config.lmtp.timeout);
  }
  const target = config.lmtp && lmtpPool
    ? new LmtpTarget(
      lmtpPool,
      {
        spool: config.lmtp.spool,
        memoryBytes: LIMITS.lmtpHeldInMemory,
        hostname: config.hostname,
        // Without checks nothing changes a message after its start: streamed as
        // it arrives (unless hooks need a copy kept here, written as it is sent).
        live: checks.length === 0 && !hooks,
        keepFor: hooks?.messages,
      },
      log("lmtp"),
      metrics && ((code) => metrics.lmtpReplies.inc({ code: String(code) })),
    )
    : new MaildirTarget(config.hostname, await fileOwner(maildirRoot));
  const pipeline = new Pipeline(
    router,
    {
      target,
      checks,
      maxMessageSize: config.maxMessageSize,
    },
    afterCommit,
  );
  const server = new Server({
    session: {
      hostname: config.hostname,
      maxMessageSize: config.maxMessageSize,
      maxRecipients: config.maxRecipients,
      maxErrors: config.maxErrors,
      requireTls: config.requireTls,
    },
    pipeline,
    tlsContext: () => certificates.context,
    commandTimeout: config.commandTimeout,
    dataTimeout: config.dataTimeout,
    greetDelay: config.greetDelay,
    rejectUnauthPipelining: config.rejectUnauthPipelining,
    log: log("smtp"),
    observer: metrics && metricsObserver(metrics),
  }, {
    maxConnections: config.maxConnections,
    maxConnectionsPerIp: config.maxConnectionsPerIp,
    proxyFrom: config.proxyFrom,
  });
  const stopHooks = async () => {
    hooks?.stop();
    await hooks?.settled();
  };
  let bound: ListenAddress[];
  try {
    bound = server.start([
      ...config.listen.map((address) => ({ address, implicitTls: false })),
      ...config.listenTls.map((address) => ({ address, implicitTls: true })),
    ]);
  } catch (error) {
    await stopHooks();
    throw error;
  }
  let endpoint: MetricsEndpoint | undefined;
  if (config.metrics && metrics) {
    try {
      endpoint = serveMetrics(config.metrics, metrics, () => afterCommit.health());
    } catch (error) {
      await server.shutdown(0);
      await stopHooks();
      throw new ConfigError(
        `Cannot serve --metrics on ${formatListen(config.metrics)}: ${
          (error as { code?: string }).code ?? error
        }`,
      );
    }
    serverLog.info("Metrics on http://{address}/metrics", {
      address: formatListen(endpoint.address),
    });
  }
  certificates.watch();
  for (const warn of warnings) warn();
  serverLog.info("Letterbox {version} ready, delivering to {maildir}", {
    version: VERSION,
    maildir: config.lmtp ? `LMTP ${formatLmtpAddress(config.lmtp.address)}` : config.maildir,
  });

  let stopped: Promise<void> | undefined;
  return {
    listening: bound.slice(0, config.listen.length),
    listeningTls: bound.slice(config.listen.length),
    metricsAddress: endpoint?.address,
    async reload() {
      await Promise.all([recipients?.reload(), certificates.reload("SIGHUP"), hooks?.rescan()]);
    },
    shutdown(graceMs = config.shutdownGrace) {
      stopped ??= (async () => {
        await server.shutdown(graceMs);
        await certificates.close();
        await endpoint?.shutdown();
        await pipeline.settled();
        lmtpPool?.close();
        await stopHooks();
      })();
      return stopped;
    },
  };
}

// The secret from --hook-secret, or the first line of --hook-secret-file.
async function hookSecret(config: Config): Promise<string | undefined> {
  if (!config.hookSecretFile) return config.hookSecret;
  let text: string;
  try {
    text = await Deno.readTextFile(config.hookSecretFile);
  } catch (error) {
    throw new ConfigError(
      `Cannot read --hook-secret-file ${JSON.stringify(config.hookSecretFile)}: ${
        describeError(error)
      }`,
    );
  }
  const secret = text.split(/\r?\n/)[0].trim();
  if (secret === "") {
    throw new ConfigError(
      `Cannot use --hook-secret-file ${JSON.stringify(config.hookSecretFile)}: it is empty`,
    );
  }
  return secret;
}

function metricsObserver(metrics: Metrics): ConnectionObserver {
  return {
    connectionOpened() {
      metrics.connections.inc({ outcome: "accepted" });
      metrics.connectionsOpen.add(1);
    },
    connectionRefused() {
      metrics.connections.inc({ outcome: "refused" });
    },
    connectionClosed() {
      metrics.connectionsOpen.add(-1);
    },
    acceptFailed(kind) {
      metrics.acceptErrors.inc({ kind });
    },
    commandRejected(code) {
      metrics.rejectedCommands.inc({ code: String(code) });
    },
    tlsHandshake(ok) {
      metrics.tlsHandshakes.inc({ result: ok ? "ok" : "failed" });
    },
    earlyTalker() {
      metrics.earlyTalkers.inc();
    },
    timeout(phase) {
      metrics.timeouts.inc({ phase });
    },
  };
}
