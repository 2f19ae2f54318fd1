/**
 * rspamd as the content filter, over its HTTP protocol (`POST /checkv2`), as
 * maddy's `check.rspamd` and Haraka's rspamd plugin do: Bayes, fuzzy hashes,
 * RBLs, greylisting and rspamd's web UI, without reinventing any of it. The
 * message is collected as it streams in (up to a size), sent with the
 * envelope once it has all arrived, and rspamd's action decides: refuse,
 * retry later, Junk folder, or inbox, with its score in the header.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import { describeError } from "../../log.ts";
import type { FieldRemoval } from "../../maildir/maildir.ts";
import { formatAddress } from "../../protocol/address.ts";
import { type Reply, reply } from "../../protocol/replies.ts";
import type { Envelope } from "../envelope.ts";
import type { Check, CheckRun, Findings, Verdict } from "./check.ts";

/** How Letterbox talks to rspamd; durations in milliseconds. */
export interface RspamdOptions {
  /** The worker's base URL, e.g. `http://127.0.0.1:11333`. */
  readonly url: string;
  /** One check, waiting for a free slot included. */
  readonly timeout: number;
  /** Requests in flight at once; the rest wait their turn. */
  readonly concurrency: number;
  /** rspamd down, slow or broken: deliver unchecked (`open`), or answer 451 (`tempfail`). */
  readonly fail: "open" | "tempfail";
  /** Larger messages are delivered unchecked (the whole message is held to send it). */
  readonly maxSize: number;
  /** Our host name, sent as MTA-Name (rspamd's authserv-id). */
  readonly hostname: string;
  /**
   * True when Letterbox authenticates senders itself: its Authentication-Results
   * is the one of ours, so rspamd's (same authserv-id) is not added, and the
   * other hosts' ones stay, as RFC 8601 asks.
   */
  readonly ownAuthenticationResults?: boolean;
}

/** What rspamd answered, as far as Letterbox reads it. */
interface RspamdReply {
  readonly action?: string;
  readonly score?: number;
  readonly required_score?: number;
  readonly subject?: string;
  readonly symbols?: Record<string, { readonly score?: number }>;
  readonly messages?: { readonly smtp_message?: string };
  readonly milter?: {
    readonly add_headers?: Record<string, MilterValue | MilterValue[]>;
    readonly remove_headers?: Record<string, number>;
  };
}
type MilterValue = string | { readonly value: string; readonly order?: number };

/** Replies of this check. */
export const RSPAMD_REPLIES = {
  reject: (text: string): Reply => reply(550, "5.7.1", text),
  later: (text: string): Reply => reply(451, "4.7.1", text),
  unavailable: reply(451, "4.7.1", "Spam filter unavailable, try again later"),
} as const;

/** Counts each message's outcome by action (`unchecked` when rspamd was not asked or failed). */
export type ActionCounter = (action: string) => void;

/** A slot gate: at most `limit` holders at once, the rest wait in order. */
class Slots {
  readonly #limit: number;
  #held = 0;
  readonly #waiting: (() => void)[] = [];
  constructor(limit: number) {
    this.#limit = limit;
  }
  async take(signal: AbortSignal): Promise<() => void> {
    if (this.#held >= this.#limit) {
      await new Promise<void>((resolve, reject) => {
        const wake = () => {
          signal.removeEventListener("abort", give);
          resolve();
        };
        const give = () => {
          const index = this.#waiting.indexOf(wake);
          if (index !== -1) this.#waiting.splice(index, 1);
          reject(signal.reason);
        };
        signal.addEventListener("abort", give, { once: true });
        this.#waiting.push(wake);
      });
    }
    this.#held++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#held--;
      this.#waiting.shift()?.();
    };
  }
}

/** Asks rspamd about every message. */
export class RspamdCheck implements Check {
  readonly name = "rspamd";
  readonly #options: RspamdOptions;
  readonly #endpoint: string;
  readonly #slots: Slots;
  readonly #log: Logger;
  readonly #count: ActionCounter | undefined;

  /** Creates the check; failures are logged to `log` as warnings. */
  constructor(options: RspamdOptions, log: Logger, count?: ActionCounter) {
    this.#options = options;
    this.#endpoint = new URL("/checkv2", options.url).href;
    this.#slots = new Slots(options.concurrency);
    this.#log = log;
    this.#count = count;
  }

  /** The sender's spam verdict fields never reach the mailbox: ours replace them. */
  readonly dropsField = (name: string): boolean =>
    name.startsWith("x-spam") || name.startsWith("x-rspamd-");

  begin(envelope: Envelope): CheckRun {
    let parts: Uint8Array[] | undefined = [];
    let size = 0;
    return {
      write: (content) => {
        if (!parts) return;
        size += content.length;
        if (size > this.#options.maxSize) parts = undefined;
        // A copy: the view is valid only during the call.
        else parts.push(content.slice());
      },
      abort: () => void (parts = undefined),
      verdict: async () => {
        if (!parts) {
          return this.#unchecked(`larger than ${this.#options.maxSize} octets`, false);
        }
        const body = new Blob(parts as BlobPart[]);
        parts = undefined;
        return await this.#ask(envelope, body);
      },
    };
  }

  async #ask(envelope: Envelope, body: Blob): Promise<Verdict> {
    const signal = AbortSignal.timeout(this.#options.timeout);
    let release: (() => void) | undefined;
    let answer: RspamdReply;
    try {
      release = await this.#slots.take(signal);
      const response = await fetch(this.#endpoint, {
        method: "POST",
        headers: requestHeaders(envelope, this.#options.hostname),
        body,
        signal,
      });
      if (!response.ok) {
        await response.body?.cancel();
        throw new Error(`HTTP ${response.status}`);
      }
      answer = await response.json();
      if (typeof answer?.action !== "string") throw new Error("no action in its reply");
    } catch (error) {
      const why = error instanceof DOMException && error.name === "TimeoutError"
        ? `no answer within ${this.#options.timeout / 1000} s`
        : describeError(error);
      return this.#unchecked(why, true);
    } finally {
      release?.();
    }
    return this.#act(answer);
  }

  #unchecked(why: string, failed: boolean): Verdict {
    this.#count?.("unchecked");
    const findings: Findings = { log: `unchecked (${why})`, facts: { action: "unchecked" } };
    if (failed) {
      this.#log.warn("rspamd did not check a message: {why}", { why });
      if (this.#options.fail === "tempfail") {
        return { action: "refuse", reply: RSPAMD_REPLIES.unavailable, reason: why, findings };
      }
    }
    return {
      action: "accept",
      headerFields: `X-Spam-Status: unchecked (${oneLine(why)})\n`,
      findings,
    };
  }

  #act(answer: RspamdReply): Verdict {
    const action = answer.action!;
    this.#count?.(action);
    const score = Number(answer.score ?? 0);
    const required = Number(answer.required_score ?? 0);
    const findings: Findings = {
      log: `action=${action} score=${score.toFixed(2)}/${required.toFixed(2)}`,
      facts: { action, score, requiredScore: required },
    };
    const text = answer.messages?.smtp_message ? oneLine(answer.messages.smtp_message) : undefined;
    if (action === "reject") {
      return {
        action: "refuse",
        reply: RSPAMD_REPLIES.reject(text ?? "Spam message rejected"),
        reason: `rspamd reject, score ${score.toFixed(2)}`,
        findings,
      };
    }
    if (action === "soft reject" || action === "greylist") {
      return {
        action: "refuse",
        reply: RSPAMD_REPLIES.later(
          text ?? (action === "greylist" ? "Greylisted, try again later" : "Try again later"),
        ),
        reason: `rspamd ${action}, score ${score.toFixed(2)}`,
        findings,
      };
    }
    const spam = action === "add header" || action === "rewrite subject";
    const ours = (name: string) =>
      this.#options.ownAuthenticationResults === true &&
      name.toLowerCase() === "authentication-results";
    const removeFields: FieldRemoval[] = Object.entries(answer.milter?.remove_headers ?? {})
      .filter(([name]) => isFieldName(name) && !ours(name))
      .map(([name, occurrence]) => ({ name: name.toLowerCase(), occurrence: Number(occurrence) }));
    let headerFields = (spam ? "X-Spam: Yes\n" : "") +
      `X-Spam-Status: ${spam ? "Yes" : "No"}, score=${score.toFixed(2)} required=${
        required.toFixed(2)
      } action=${action}\n` +
      `X-Spam-Score: ${score.toFixed(2)}\n` +
      foldField("X-Spamd-Result", spamdResult(answer, spam, score, required));
    for (const [name, value] of Object.entries(answer.milter?.add_headers ?? {})) {
      // Ours say the same; rspamd's own copies would only repeat them.
      if (!isFieldName(name) || ours(name) || /^x-spam(d-result|-status|-score)?$/i.test(name)) {
        continue;
      }
      for (const item of Array.isArray(value) ? value : [value]) {
        const text = typeof item === "string" ? item : item?.value;
        if (typeof text === "string") headerFields += `${name}: ${fieldValue(text)}\n`;
      }
    }
    if (action === "rewrite subject" && typeof answer.subject === "string") {
      removeFields.push({ name: "subject", occurrence: 0 });
      headerFields += `Subject: ${encodeWord(oneLine(answer.subject))}\n`;
    }
    return { action: spam ? "junk" : "accept", headerFields, removeFields, findings };
  }
}

/** The envelope as rspamd's protocol expects it. */
function requestHeaders(envelope: Envelope, hostname: string): Headers {
  const headers = new Headers({
    IP: envelope.clientAddress,
    Helo: oneLine(envelope.heloName),
    From: envelope.sender ? formatAddress(envelope.sender) : "<>",
    "Queue-Id": envelope.id,
    "MTA-Name": hostname,
  });
  // rspamd takes Rcpt repeated or as a comma-separated list (Headers joins repeats so).
  for (const route of envelope.routes) headers.append("Rcpt", formatAddress(route.recipient));
  if (envelope.tls) {
    headers.set("TLS-Version", envelope.tls.protocol);
    headers.set("TLS-Cipher", envelope.tls.cipher);
  }
  return headers;
}

// "default: False [1.20 / 15.00]; SYMBOL(0.50); ...", as rspamd's own X-Spamd-Result.
function spamdResult(answer: RspamdReply, spam: boolean, score: number, required: number): string {
  const symbols = Object.entries(answer.symbols ?? {})
    .sort(([a], [b]) => a < b ? -1 : 1)
    .map(([name, symbol]) => `${name}(${Number(symbol?.score ?? 0).toFixed(2)})`);
  return [`default: ${spam ? "True" : "False"} [${score.toFixed(2)} / ${required.toFixed(2)}]`]
    .concat(symbols).join("; ");
}

// Folds a long value at "; " so that no line passes 78 characters where it can be helped.
function foldField(name: string, value: string): string {
  const parts = value.split("; ");
  let out = `${name}: ${parts[0]}`;
  let line = out.length;
  for (const part of parts.slice(1)) {
    if (line + part.length + 2 > 78) {
      out += `;\n\t${part}`;
      line = part.length + 1;
    } else {
      out += `; ${part}`;
      line += part.length + 2;
    }
  }
  return `${out}\n`;
}

function isFieldName(name: string): boolean {
  return /^[!-9;-~]+$/.test(name);
}

// rspamd folds with CRLF + tab; the stored message uses LF. Nothing may end the field early.
function fieldValue(text: string): string {
  return text.replace(/\r\n/g, "\n").replace(/\r/g, "").replace(/\n(?![ \t])/g, "\n\t")
    .replace(/\n+$/, "");
}

function oneLine(text: string): string {
  // deno-lint-ignore no-control-regex -- control characters are what it removes
  return text.replace(/[\x00-\x1f\x7f]+/g, " ").trim().slice(0, 400);
}

// A subject with 8-bit text becomes RFC 2047 encoded words of at most 75
// characters (45 octets each, never splitting a character), folded.
function encodeWord(text: string): string {
  if (/^[\x20-\x7e]*$/.test(text)) return text;
  const encoder = new TextEncoder();
  const words: string[] = [];
  let chunk: number[] = [];
  const flush = () => {
    if (chunk.length > 0) words.push(`=?UTF-8?B?${btoa(String.fromCharCode(...chunk))}?=`);
    chunk = [];
  };
  for (const char of text) {
    const bytes = encoder.encode(char);
    if (chunk.length + bytes.length > 45) flush();
    chunk.push(...bytes);
  }
  flush();
  return words.join("\n ");
}
