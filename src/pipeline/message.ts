/**
 * The DATA unit: reads one message from a data source, streams it into the
 * target and the checks, asks the checks for their verdict once it has all
 * arrived, and commits or aborts. Bytes in, an outcome out; it knows no
 * socket, so it is tested over an in-memory stream. A 250 comes only from
 * here, and only after the target's commit resolved with stored copies.
 *
 * @module
 */

import type { DataResult } from "../protocol/line_reader.ts";
import type { Check, CheckRun, Verdict } from "./checks/check.ts";
import { decide } from "./checks/check.ts";
import type { Envelope } from "./envelope.ts";
import { describeError } from "../log.ts";
import { replyFor } from "./failure.ts";
import { anyOf, type FieldPredicate, HeaderFilter } from "./header_filter.ts";
import { MessagePrefix } from "./inspect.ts";
import type { StoredCopy, Target, TargetTransaction } from "./targets/target.ts";
import type { DataOutcome } from "../protocol/session.ts";

/** Where message content comes from: the connection's reader, or a test's bytes. */
export interface DataSource {
  /** Reads one DATA section into `sink`, dropping content past `maxBytes` (see LineReader). */
  readData(
    sink: (content: Uint8Array, lines: number) => Promise<void> | void,
    maxBytes: number,
  ): Promise<DataResult>;
}

/** The stages a message passes through. */
export interface MessageStages {
  /** Where accepted messages are stored. */
  readonly target: Target;
  /** What decides about each message before it is stored, in order. */
  readonly checks: readonly Check[];
  /** Largest message, in octets on the wire. */
  readonly maxMessageSize: number;
}

/** What each check found, by check name, in check order. */
export type CheckFindings = readonly { readonly check: string; readonly verdict: Verdict }[];

/** How one message ended. */
export type MessageResult =
  /** The client went away before the end of data; nothing was stored. */
  | { readonly kind: "gone" }
  | EndedMessage;

/** A message that was read to its end, stored or not. */
export interface EndedMessage {
  readonly kind: "ended";
  /** What the session turns into the reply. */
  readonly outcome: DataOutcome;
  /** The stored copies; empty unless the outcome is `queued`. */
  readonly copies: readonly StoredCopy[];
  /** Why the message was not stored, for the log; undefined when it was. */
  readonly failure?: string;
  /** True when storing failed (our fault), rather than a check or the size limit refusing. */
  readonly storageFailed: boolean;
  /** Decoded octets (LF line ends). */
  readonly size: number;
  /** Octets on the wire, end marker excluded. */
  readonly wireBytes: number;
  /** The start of the message, for the log summary. */
  readonly prefix: MessagePrefix;
  /** performance.now() at the end of data: what follows is storing and checking. */
  readonly endOfData: number;
  /** Each check's verdict (empty when none ran). */
  readonly verdicts: CheckFindings;
}

/**
 * One message on its way in: the target's transaction and the checks, fed
 * chunk by chunk, then finished (checks decide, the target commits) or
 * aborted. DATA feeds it from one DATA section; BDAT from several chunks, with
 * commands and replies in between.
 */
export class OpenMessage {
  readonly #envelope: Envelope;
  readonly #transaction: TargetTransaction | undefined;
  readonly #runs: readonly { check: string; run: CheckRun }[];
  readonly #watchers: readonly CheckRun[];
  readonly #filter: HeaderFilter | undefined;
  readonly #prefix = new MessagePrefix();
  #failure: unknown;
  #size = 0;
  #closed = false;

  private constructor(
    envelope: Envelope,
    transaction: TargetTransaction | undefined,
    failure: unknown,
    stages: MessageStages,
  ) {
    this.#envelope = envelope;
    this.#transaction = transaction;
    this.#failure = failure;
    this.#runs = stages.checks.map((check) => ({ check: check.name, run: check.begin(envelope) }));
    this.#watchers = this.#runs.map(({ run }) => run).filter((run) => run.write !== undefined);
    const drop = droppedFields(stages);
    this.#filter = drop && new HeaderFilter(drop);
  }

  /** Begins a message: the target opens its transaction, each check starts. Never throws. */
  static async open(envelope: Envelope, stages: MessageStages): Promise<OpenMessage> {
    let transaction: TargetTransaction | undefined;
    let failure: unknown;
    try {
      transaction = await stages.target.begin(envelope);
    } catch (error) {
      failure = error;
    }
    return new OpenMessage(envelope, transaction, failure, stages);
  }

  /**
   * Adds decoded content holding `lines` LFs. A failed write ends storing, not
   * reading: the client still gets its reply after the end of the message.
   */
  async write(content: Uint8Array, lines: number): Promise<void> {
    this.#prefix.add(content);
    this.#size += content.length;
    for (const run of this.#watchers) run.write!(content);
    if (!this.#filter) return await this.#store(content, lines);
    for (const piece of this.#filter.push(content)) await this.#store(piece);
  }

  async #store(content: Uint8Array, lines?: number): Promise<void> {
    if (this.#transaction && this.#failure === undefined) {
      await this.#transaction.write(content, lines).catch((error) => this.#failure = error);
    }
  }

  /** Drops the message: nothing is stored. Never throws. */
  async abort(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#abortChecks();
    await this.#transaction?.abort();
  }

  #abortChecks(): void {
    for (const { run } of this.#runs) run.abort?.();
  }

  /**
   * Ends the message: `wireBytes` were received, `tooBig` when they passed
   * the limit (content past it was not written). Checks decide, then the
   * target commits or aborts. Never throws for a storage or check failure.
   */
  async finish(wireBytes: number, tooBig: boolean): Promise<EndedMessage> {
    this.#closed = true;
    const endOfData = performance.now();
    const transaction = this.#transaction;
    let verdicts: CheckFindings = [];
    const ended = (
      outcome: DataOutcome,
      copies: readonly StoredCopy[] = [],
      why?: string,
      storageFailed = false,
    ): EndedMessage => ({
      kind: "ended",
      outcome,
      copies,
      failure: why,
      storageFailed,
      size: this.#size,
      wireBytes,
      prefix: this.#prefix,
      endOfData,
      verdicts,
    });
    if (tooBig) {
      this.#abortChecks();
      await transaction?.abort();
      return ended({ kind: "too-big" }, [], "message too big");
    }
    for (const piece of this.#filter?.end() ?? []) await this.#store(piece);
    const failure = this.#failure;
    if (failure !== undefined || !transaction) {
      this.#abortChecks();
      await transaction?.abort();
      return ended({ kind: "refused", reply: replyFor(failure) }, [], describeError(failure), true);
    }
    // Without checks (the default) nothing is awaited here: one trip fewer per message.
    verdicts = this.#runs.length === 0
      ? verdicts
      : await Promise.all(this.#runs.map(async ({ check, run }) => ({
        check,
        verdict: await run.verdict().catch((error): Verdict => ({
          action: "refuse",
          reply: replyFor(error),
          reason: describeError(error),
        })),
      })));
    const decision = decide(verdicts);
    if (decision.kind === "refuse") {
      await transaction.abort();
      return ended(
        { kind: "refused", reply: decision.reply },
        [],
        `${decision.check}: ${decision.reason}`,
      );
    }
    try {
      const copies = await transaction.commit(decision.disposition);
      // Targets promise at least one copy; a 250 for none would lose the message.
      if (copies.length === 0) {
        return ended(
          { kind: "refused", reply: replyFor(undefined) },
          [],
          "no copy was stored",
          true,
        );
      }
      return ended({ kind: "queued", id: this.#envelope.id }, copies);
    } catch (error) {
      return ended({ kind: "refused", reply: replyFor(error) }, [], describeError(error), true);
    }
  }
}

// The checks' fields to drop, combined once per set of stages, not per message.
const dropped = new WeakMap<MessageStages, FieldPredicate | undefined>();
function droppedFields(stages: MessageStages): FieldPredicate | undefined {
  if (!dropped.has(stages)) {
    dropped.set(stages, anyOf(stages.checks.flatMap((check) => check.dropsField ?? [])));
  }
  return dropped.get(stages);
}

/** Reads one DATA section and stores it; never throws for a storage or check failure. */
export async function receiveMessage(
  source: DataSource,
  envelope: Envelope,
  stages: MessageStages,
): Promise<MessageResult> {
  const message = await OpenMessage.open(envelope, stages);
  let result: DataResult;
  try {
    result = await source.readData(
      (content, lines) => message.write(content, lines),
      stages.maxMessageSize,
    );
  } catch (error) {
    await message.abort();
    throw error;
  }
  if (result.kind === "eof") {
    await message.abort();
    return { kind: "gone" };
  }
  return await message.finish(result.wireBytes, result.tooBig);
}
