/**
 * The after-commit stage: what follows a message's storing. Hook jobs are
 * written to the spool before the 250 (a failure there cannot take the
 * message back, so it is logged, not answered); then the metrics and the one
 * log line per message, after the reply is known.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type { HookQueue } from "../hooks/queue.ts";
import { LIMITS } from "../limits.ts";
import { describeError, logLine, LogTemplate } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import { formatAddress } from "../protocol/address.ts";
import { formatReply, type Reply } from "../protocol/replies.ts";
import type { Envelope } from "./envelope.ts";
import { inspectMessage } from "./inspect.ts";
import type { EndedMessage, MessageResult } from "./message.ts";
import type { AuthenticationFacts } from "./checks/authentication.ts";

/** Whether deliveries work, and if not, why (for /healthz). */
export interface Health {
  readonly ok: boolean;
  readonly reason?: string;
}

/** What the after-commit stage reports to. */
export interface AfterCommitOptions {
  /** The hook queue, when hooks are configured. */
  readonly hooks?: HookQueue;
  /** Where counts go, when metrics are on. */
  readonly metrics?: Metrics;
}

/** The work that follows each message. */
export class AfterCommit {
  readonly #options: AfterCommitOptions;
  readonly #pending = new Set<Promise<void>>();
  #failuresInARow = 0;
  #lastFailure = "";

  /** Creates the stage. */
  constructor(options: AfterCommitOptions) {
    this.#options = options;
  }

  /**
   * Writes the hook jobs for a stored message; the promise resolves once they
   * are durable. Without hooks there is nothing to wait for (no promise).
   */
  committed(
    envelope: Envelope,
    result: EndedMessage,
    log: Logger,
  ): Promise<void> | undefined {
    const hooks = this.#options.hooks;
    if (!hooks) return undefined;
    return this.#enqueue(hooks, envelope, result, log);
  }

  async #enqueue(
    hooks: HookQueue,
    envelope: Envelope,
    result: EndedMessage,
    log: Logger,
  ): Promise<void> {
    const copies = result.copies;
    const authentication = result.verdicts.find(({ check }) => check === "authentication")
      ?.verdict.findings?.facts as AuthenticationFacts | undefined;
    try {
      const queued = await hooks.enqueue({
        queueId: envelope.id,
        sender: envelope.sender ? formatAddress(envelope.sender) : "",
        recipients: envelope.routes.map((route) => formatAddress(route.recipient)),
        clientAddress: envelope.clientAddress,
        heloName: envelope.heloName,
        tls: envelope.tls ? `${envelope.tls.protocol} ${envelope.tls.cipher}` : null,
        receivedAt: envelope.receivedAt.toISOString(),
        ...(authentication ? { authentication } : {}),
        files: copies.map((copy) => ({
          ...(copy.local ??
            { maildir: copy.maildir, name: copy.path.slice(copy.path.lastIndexOf("/") + 1) }),
          recipients: copy.recipients.map(formatAddress),
        })),
      });
      // A copy kept only for hooks that none of them wanted.
      const kept = copies.find((copy) => copy.local)?.local;
      if (queued === 0 && kept) {
        await Deno.remove(`${kept.maildir}/new/${kept.name}`).catch(() => {});
      }
    } catch (error) {
      log.error("Could not queue hooks for {id}: {error}", {
        id: envelope.id,
        error: describeError(error),
      });
    }
  }

  /**
   * Counts the message once its reply is known, and returns the writing of
   * its one line, for the caller to run once the reply is on its way: the
   * header summary and the log write cost 0.09 ms before the 250 at one
   * connection. (The same turn of the event loop: a timer for it was one more
   * wake-up a message, and slower.)
   */
  answered(
    envelope: Envelope,
    result: Extract<MessageResult, { kind: "ended" }>,
    reply: Reply,
    log: Logger,
  ): () => void {
    const metrics = this.#options.metrics;
    const queued = result.outcome.kind === "queued";
    if (queued) this.#failuresInARow = 0;
    else if (result.storageFailed) {
      this.#failuresInARow++;
      this.#lastFailure = result.failure ?? "unknown";
    }
    if (metrics) {
      metrics.messages.inc({ code: String(reply.code) });
      metrics.receivedBytes.inc({}, result.wireBytes);
      metrics.recipientsPerMessage.observe(envelope.routes.length);
      if (queued) metrics.deliverySeconds.observe((performance.now() - result.endOfData) / 1000);
    }
    if (!queued) {
      // Our own faults (4xx from storing) are errors for the operator; a
      // refusal by a check or the size limit is the system working.
      if (result.storageFailed) {
        log.error("Delivery of {id} failed: {error}", { id: envelope.id, error: result.failure });
      }
      const checks = checksSummary(result);
      log.info(`Message {id} refused: {reply} ({why})${checks ? "; checks {checks}" : ""}`, {
        id: envelope.id,
        reply: formatReply(reply).trimEnd(),
        why: result.failure,
        checks,
      });
      return NOTHING;
    }
    // Below the log level, no header summary is made for a line nobody writes.
    if (!log.isEnabledFor("info")) return NOTHING;
    const ms = Date.now() - envelope.receivedAt.getTime();
    const checks = checksSummary(result);
    return () => this.#logDelivered(envelope, result, log, checks, ms);
  }

  #logDelivered(
    envelope: Envelope,
    result: EndedMessage,
    log: Logger,
    checks: string,
    ms: number,
  ): void {
    const summary = inspectMessage(result.prefix.bytes(), result.prefix.truncated).then(
      (summary) => {
        logLine(
          log,
          "info",
          checks ? DELIVERED_CHECKED : DELIVERED,
          {
            id: envelope.id,
            sender: envelope.sender ? formatAddress(envelope.sender) : "<>",
            // A list, not a joined string: JSON logs keep it a list.
            recipients: envelope.routes.map((route) => formatAddress(route.recipient)),
            client: envelope.clientAddress,
            helo: envelope.heloName,
            transfer: envelope.transfer ?? "DATA",
            folders: result.copies.map((copy) => copy.maildir),
            checks,
            size: result.size,
            messageId: summary.messageId,
            subject: summary.subject,
            from: summary.from,
            attachments: summary.truncated ? `${summary.attachments}+` : summary.attachments,
            ms: Math.round(ms),
          },
        );
      },
    );
    this.#pending.add(summary);
    summary.finally(() => this.#pending.delete(summary));
  }

  /** Unhealthy once the last few deliveries all failed to store, with the last reason. */
  health(): Health {
    if (this.#failuresInARow < LIMITS.unhealthyAfterFailures) return { ok: true };
    return {
      ok: false,
      reason: `the last ${this.#failuresInARow} deliveries failed: ${this.#lastFailure}`,
    };
  }

  /** Resolves once every log line under way is written (for shutdown). */
  async settled(): Promise<void> {
    await Promise.all(this.#pending);
  }
}

const NOTHING = () => {};

// The line of every delivered message, parsed once (see LogTemplate).
const DELIVERED_TEMPLATE = "Delivered {id} from {sender} to {recipients}, {size} bytes, " +
  "message-id {messageId}, subject {subject}, from {from}, {attachments} attachments, " +
  "in {ms} ms; client {client} {helo}, by {transfer}, stored in {folders}";
const DELIVERED = new LogTemplate(DELIVERED_TEMPLATE);
const DELIVERED_CHECKED = new LogTemplate(`${DELIVERED_TEMPLATE}; checks {checks}`);

// "authentication spf=pass dkim=pass ...; rspamd action=..." for the log line, or "" without checks.
function checksSummary(result: EndedMessage): string {
  return result.verdicts.flatMap(({ check, verdict }) =>
    verdict.findings ? [`${check} ${verdict.findings.log}`] : []
  ).join("; ");
}
