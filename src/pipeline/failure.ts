/**
 * Errors that already are their SMTP reply, decided where the failure
 * happens (go-smtp's SMTPError): a full disk becomes 452 4.3.1 in the
 * Maildir writer, not in the connection. Anything else that goes wrong while
 * storing is our own fault, so temporary: 451 4.3.0, and the sender retries.
 *
 * @module
 */

import { describeError } from "../log.ts";
import { REPLIES, type Reply } from "../protocol/replies.ts";

/** A failure and the reply it earns. */
export class ReplyError extends Error {
  /** Creates the error; `cause` is what went wrong underneath, for the log. */
  constructor(readonly reply: Reply, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ReplyError";
  }
}

/** The reply an error earns: its own when it is a {@link ReplyError}, else 451 4.3.0. */
export function replyFor(error: unknown): Reply {
  return error instanceof ReplyError ? error.reply : REPLIES.localError;
}

/**
 * Wraps a storage error: no space or quota left becomes 452 4.3.1 (RFC 5321
 * 4.2.2's "insufficient system storage"), anything else 451 4.3.0.
 */
export function storageFailure(error: unknown): ReplyError {
  if (error instanceof ReplyError) return error;
  const code = (error as { code?: unknown } | null)?.code;
  const full = code === "ENOSPC" || code === "EDQUOT";
  return new ReplyError(full ? REPLIES.storageFull : REPLIES.localError, describeError(error), {
    cause: error,
  });
}
