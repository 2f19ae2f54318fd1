/**
 * The check stage: what looks at a message before it is stored and decides
 * accept, refuse with a reply, or file as junk, and may add header fields
 * (maddy's checks; rspamd and sender authentication are the next two). A
 * check sees the envelope at the start of DATA and every decoded chunk as it
 * streams in; its verdict comes after the end of data, before any copy is
 * committed, so a refusal leaves nothing behind.
 *
 * @module
 */

import type { Reply } from "../../protocol/replies.ts";
import type { Envelope } from "../envelope.ts";
import type { FieldPredicate } from "../header_filter.ts";
import type { FieldRemoval } from "../../maildir/maildir.ts";
import type { Disposition } from "../targets/target.ts";

/** What a check found, beside its decision: for the log line and the hooks. */
export interface Findings {
  /** For the message's log line, e.g. `spf=pass dkim=pass dmarc=pass`. */
  readonly log: string;
  /** What a hook's payload carries under the check's name (JSON). */
  readonly facts?: Readonly<Record<string, unknown>>;
}

/** What one check decided about one message. */
export type Verdict =
  & (
    /**
     * Store it; `headerFields` (LF-terminated lines) go above the message,
     * and the fields `removeFields` names leave its header.
     */
    | {
      readonly action: "accept";
      readonly headerFields?: string;
      readonly removeFields?: readonly FieldRemoval[];
    }
    /** Store it in each recipient's Junk folder. */
    | {
      readonly action: "junk";
      readonly headerFields?: string;
      readonly removeFields?: readonly FieldRemoval[];
    }
    /** Store nothing and answer with `reply` (a 4xx asks the sender to retry, a 5xx refuses). */
    | { readonly action: "refuse"; readonly reply: Reply; readonly reason: string }
  )
  & { readonly findings?: Findings };

/** One check's work on one message. */
export interface CheckRun {
  /** Sees decoded content (LF line ends), in order; the view is valid only during the call. */
  write?(content: Uint8Array): void;
  /** Decides, once the whole message has been read. Rejecting counts as a 451 refusal. */
  verdict(): Promise<Verdict>;
  /** Gives up on a message that will not be stored (the client left, or it was too big). */
  abort?(): void;
}

/** A check the pipeline runs on every message. */
export interface Check {
  /** A short name for logs and metrics, e.g. `rspamd`. */
  readonly name: string;
  /** Starts the check for one message at the start of DATA. */
  begin(envelope: Envelope): CheckRun;
  /**
   * Header fields a sender must not plant, removed from the stored copy (the
   * check itself sees the message as it came).
   */
  readonly dropsField?: FieldPredicate;
}

/** The outcome of every check: a refusal, or how to store the message. */
export type Decision =
  | { readonly kind: "store"; readonly disposition: Disposition }
  | {
    readonly kind: "refuse";
    readonly check: string;
    readonly reply: Reply;
    readonly reason: string;
  };

/**
 * Combines the verdicts in check order: the first refusal wins; otherwise
 * header fields add up, and one junk verdict files the message as junk.
 */
export function decide(
  verdicts: readonly { readonly check: string; readonly verdict: Verdict }[],
): Decision {
  let headerFields = "";
  let junk = false;
  const removeFields: FieldRemoval[] = [];
  for (const { check, verdict } of verdicts) {
    if (verdict.action === "refuse") {
      return { kind: "refuse", check, reply: verdict.reply, reason: verdict.reason };
    }
    headerFields += verdict.headerFields ?? "";
    removeFields.push(...verdict.removeFields ?? []);
    if (verdict.action === "junk") junk = true;
  }
  return {
    kind: "store",
    disposition: { headerFields, junk, ...(removeFields.length > 0 ? { removeFields } : {}) },
  };
}
