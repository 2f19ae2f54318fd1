/**
 * The receiving pipeline, in the order a message meets it: RCPT -> route
 * (decided once), then at DATA the message unit (checks, then the target),
 * then the after-commit stage (hook jobs before the 250; metrics and the log
 * line after). The connection drives the protocol and hands each recipient
 * and each DATA stream here.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type { Address } from "../protocol/address.ts";
import type { Reply } from "../protocol/replies.ts";
import type { Session, Transaction } from "../protocol/session.ts";
import { formatAddress } from "../protocol/address.ts";
import { formatReply } from "../protocol/replies.ts";
import type { AfterCommit } from "./after_commit.ts";
import type { Envelope } from "./envelope.ts";
import {
  type DataSource,
  type EndedMessage,
  type MessageStages,
  OpenMessage,
  receiveMessage,
} from "./message.ts";
import type { Route, Router } from "./route.ts";

/**
 * The end of a message: its reply, and the writing of its log line, which the
 * connection runs once the reply is on its way (the client waits for the
 * reply, not for the line).
 */
export interface Answer {
  readonly reply: Reply;
  readonly report: () => void;
}

/** Every stage, wired once for the whole server. */
export class Pipeline {
  readonly #router: Router;
  readonly #stages: MessageStages;
  readonly #afterCommit: AfterCommit;

  /** Creates the pipeline from its stages. */
  constructor(router: Router, stages: MessageStages, afterCommit: AfterCommit) {
    this.#router = router;
    this.#stages = stages;
    this.#afterCommit = afterCommit;
  }

  /** RCPT: the recipient's route, or the reply that refuses it. */
  route(recipient: Address): Route | Reply {
    return this.#router.route(recipient);
  }

  /** True when the target confirms each routed recipient with the next hop (LMTP). */
  get verifiesRecipients(): boolean {
    return this.#stages.target.verify !== undefined;
  }

  /** RCPT, after routing: the next hop's refusal, or undefined when it accepts. */
  async verify(
    transaction: Transaction<Route>,
    route: Route,
    log: Logger,
  ): Promise<Reply | undefined> {
    const refusal = await this.#stages.target.verify?.(
      {
        transaction,
        sender: transaction.sender,
        smtpUtf8: transaction.smtpUtf8,
        body: transaction.body,
      },
      route,
    );
    if (refusal) {
      log.info("The next hop refused {recipient}: {reply}", {
        recipient: formatAddress(route.recipient),
        reply: formatReply(refusal).trimEnd(),
      });
    }
    return refusal;
  }

  /**
   * The SMTP transaction ended: the target lets go of what it held for it.
   * Undefined (nothing to wait for) when the target holds nothing.
   */
  ended(transaction: Transaction<Route>): Promise<void> | undefined {
    return this.#stages.target.ended?.(transaction);
  }

  /**
   * DATA: reads the message from `source`, stores it, and returns the reply
   * (the session's, so that the transaction ends with it) with its log line,
   * or undefined when the client went away before the end of data.
   */
  async receive(
    source: DataSource,
    envelope: Envelope,
    session: Session<Route>,
    log: Logger,
  ): Promise<Answer | undefined> {
    const result = await receiveMessage(source, envelope, this.#stages);
    if (result.kind === "gone") {
      log.info("Lost connection in DATA, message {id} discarded", { id: envelope.id });
      return undefined;
    }
    return await this.#complete(result, envelope, session, log);
  }

  /** BDAT: begins a message whose chunks come one command at a time. */
  open(envelope: Envelope): Promise<OpenMessage> {
    return OpenMessage.open(envelope, this.#stages);
  }

  /** BDAT LAST: ends a message begun with {@link open} and returns the reply with its log line. */
  async finish(
    message: OpenMessage,
    envelope: Envelope,
    session: Session<Route>,
    log: Logger,
    wireBytes: number,
    tooBig: boolean,
  ): Promise<Answer> {
    return await this.#complete(await message.finish(wireBytes, tooBig), envelope, session, log);
  }

  // After the end of a message, however it came: hook jobs, the reply, metrics and the log line.
  async #complete(
    result: EndedMessage,
    envelope: Envelope,
    session: Session<Route>,
    log: Logger,
  ): Promise<Answer> {
    if (result.outcome.kind === "queued") {
      const jobs = this.#afterCommit.committed(envelope, result, log);
      if (jobs) await jobs;
    }
    const reply = session.finishData(result.outcome);
    return { reply, report: this.#afterCommit.answered(envelope, result, reply, log) };
  }

  /** Resolves once after-commit work under way is done (for shutdown). */
  settled(): Promise<void> {
    return this.#afterCommit.settled();
  }
}
