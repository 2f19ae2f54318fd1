/**
 * The target stage: where accepted messages are stored (today Maildir; LMTP
 * is the next one). A target is begin / write / commit / abort, as maddy's
 * targets are; the pipeline answers 250 only after {@link
 * TargetTransaction.commit} resolved, and a failure is a {@link ReplyError}
 * that already is the reply.
 *
 * @module
 */

import type { Address } from "../../protocol/address.ts";
import type { FieldRemoval } from "../../maildir/maildir.ts";
import type { Envelope } from "../envelope.ts";
import type { Reply } from "../../protocol/replies.ts";
import type { Route } from "../route.ts";

/** What the checks decided, as the target applies it at commit. */
export interface Disposition {
  /** Header fields to add above the message (LF-terminated lines), or "". */
  readonly headerFields: string;
  /** True when the message goes to each recipient's Junk folder instead of the inbox. */
  readonly junk: boolean;
  /** Fields of the message's own header to take out (rspamd's remove_headers, a rewritten Subject). */
  readonly removeFields?: readonly FieldRemoval[];
}

/** One stored copy of a message. */
export interface StoredCopy {
  /** The Maildir it went into. */
  readonly maildir: string;
  /** The file's path inside `new/`. */
  readonly path: string;
  /** The recipients this copy is for. */
  readonly recipients: readonly Address[];
  /**
   * A copy on this machine for the hooks to read, when the copy itself is
   * elsewhere (LMTP): a Maildir-like folder and the file's name in its new/.
   */
  readonly local?: { readonly maildir: string; readonly name: string };
}

/** A message being stored. Exactly one of `commit` or `abort` ends it. */
export interface TargetTransaction {
  /** Appends decoded message content (LF line ends) holding `lines` LFs (counted when not given). */
  write(content: Uint8Array, lines?: number): Promise<void>;
  /**
   * Makes every copy durable; resolves only when each is synced and in place,
   * with at least one copy. Rejects with a {@link ReplyError} and leaves
   * nothing behind.
   */
  commit(disposition: Disposition): Promise<StoredCopy[]>;
  /** Discards everything written; leaves nothing behind. Never throws. */
  abort(): Promise<void>;
}

/** What a target that confirms recipients at RCPT is told of the transaction. */
export interface TransactionStart {
  /** Identifies the SMTP transaction (the same object as {@link Envelope.transaction}). */
  readonly transaction: object;
  readonly sender: Address | null;
  readonly smtpUtf8: boolean;
  readonly body?: "7BIT" | "8BITMIME" | "BINARYMIME";
}

/** Somewhere messages can be stored. */
export interface Target {
  /** Starts storing one message for the envelope's routes; rejects with a {@link ReplyError}. */
  begin(envelope: Envelope): Promise<TargetTransaction>;
  /**
   * Confirms a recipient with the next hop before our RCPT reply (LMTP):
   * undefined accepts it, a reply refuses it. Targets without it accept
   * every routed recipient.
   */
  verify?(start: TransactionStart, route: Route): Promise<Reply | undefined>;
  /** The SMTP transaction ended (stored, reset or gone): what was held for it goes. */
  ended?(transaction: object): Promise<void>;
}
