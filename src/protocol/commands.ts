/**
 * Pure parsers for SMTP command lines: the verb, MAIL and RCPT paths, their
 * ESMTP parameters, and the EHLO argument. Nothing here does I/O; every
 * function returns data or a named failure that the session turns into a reply.
 *
 * @module
 */

import { LIMITS } from "../limits.ts";
import { type Address, parseMailbox } from "./address.ts";

/** A command line split into its upper-cased verb and the rest. */
export interface CommandLine {
  /** The command verb, upper-cased (`MAIL`, `EHLO`, ...). */
  readonly verb: string;
  /** Everything after the first space, without surrounding spaces. */
  readonly argument: string;
}

/** Why a path or parameter list was refused. */
export type ParseFailure =
  | "syntax"
  | "bad-address"
  | "too-long"
  | "needs-smtputf8"
  | "unknown-parameter"
  /** One parameter given twice with different values: `parameter` names it. */
  | "conflicting-parameter";

/** The body types MAIL's `BODY=` may declare. */
export type BodyType = "7BIT" | "8BITMIME" | "BINARYMIME";

/** The size and kind of one BDAT chunk (RFC 3030 2). */
export interface BdatArgument {
  /** Octets that follow the command line, exactly. */
  readonly size: number;
  /** True for the message's last chunk. */
  readonly last: boolean;
}

/** Parses `BDAT <size> [LAST]`; undefined when the argument is not of that form. */
export function parseBdatArgument(argument: string): BdatArgument | undefined {
  const match = /^(\d{1,15})(?: +(LAST))?$/i.exec(argument);
  if (!match) return undefined;
  return { size: Number(match[1]), last: match[2] !== undefined };
}

/** A parsed `MAIL FROM:` argument. */
export interface MailArgument {
  /** The reverse-path; `null` is the null sender `<>`. */
  readonly sender: Address | null;
  /** The declared size from `SIZE=` (RFC 1870), if any. */
  readonly size?: number;
  /** The declared body type from `BODY=` (RFC 6152; BINARYMIME from RFC 3030), if any. */
  readonly body?: BodyType;
  /** True when the client asked for SMTPUTF8 (RFC 6531). */
  readonly smtpUtf8: boolean;
}

/** The outcome of a parser: a value or the reason it failed. */
export type Parsed<T> = { readonly ok: true; readonly value: T } | {
  readonly ok: false;
  readonly failure: ParseFailure;
  /** The parameter a `conflicting-parameter` failure is about. */
  readonly parameter?: string;
};

/** Splits a command line into its verb and argument. */
export function parseCommandLine(line: string): CommandLine {
  const space = line.indexOf(" ");
  if (space === -1) return { verb: line.toUpperCase(), argument: "" };
  return { verb: line.slice(0, space).toUpperCase(), argument: line.slice(space + 1).trim() };
}

/** True when the text holds a C0 control character or DEL, which no command may carry. */
export function hasControlCharacters(text: string): boolean {
  // deno-lint-ignore no-control-regex
  return /[\x00-\x1f\x7f]/.test(text);
}

// ESMTP parameters (RFC 5321 4.1.2 esmtp-keyword and esmtp-value; RFC 6531 3.3).
const PARAMETER_KEYWORD = /^[A-Za-z0-9][A-Za-z0-9-]*$/;
const PARAMETER_VALUE = /^[\x21-\x3c\x3e-\x7e\u0080-\u{10FFFF}]+$/u;

/** Splits `FROM:<path> params` or `TO:<path> params` into the path and the parameters text. */
function splitPathArgument(
  argument: string,
  keyword: "FROM:" | "TO:",
): { path: string; parameters: string } | undefined {
  if (argument.slice(0, keyword.length).toUpperCase() !== keyword) return undefined;
  // Postfix and most servers allow a space after the colon; RFC 5321 does not, but
  // real clients send it.
  const rest = argument.slice(keyword.length).trimStart();
  if (!rest.startsWith("<")) return undefined;
  const close = rest.indexOf(">");
  if (close === -1) return undefined;
  const after = rest.slice(close + 1);
  if (after !== "" && !after.startsWith(" ")) return undefined;
  return { path: rest.slice(1, close), parameters: after.trim() };
}

/**
 * Parses `KEY=VALUE KEY2` into upper-cased keys. A key given again with the
 * same value (case aside) counts once, as Postfix takes it: Python's
 * smtplib sends `SMTPUTF8 SMTPUTF8` when asked for it twice. A key given
 * again with another value is a conflict that names the key.
 */
export function parseParameters(text: string): Parsed<Map<string, string | true>> {
  const parameters = new Map<string, string | true>();
  if (text === "") return { ok: true, value: parameters };
  for (const item of text.split(/ +/)) {
    const equals = item.indexOf("=");
    const key = (equals === -1 ? item : item.slice(0, equals)).toUpperCase();
    const value = equals === -1 ? true : item.slice(equals + 1);
    if (!PARAMETER_KEYWORD.test(key)) return { ok: false, failure: "syntax" };
    if (value !== true && !PARAMETER_VALUE.test(value)) return { ok: false, failure: "syntax" };
    const known = parameters.get(key);
    if (known !== undefined) {
      const same = known === true || value === true
        ? known === value
        : known.toUpperCase() === value.toUpperCase();
      if (!same) return { ok: false, failure: "conflicting-parameter", parameter: key };
      continue;
    }
    parameters.set(key, value);
  }
  return { ok: true, value: parameters };
}

/** Parses the argument of `MAIL` (`FROM:<path> [SIZE=n] [BODY=...] [SMTPUTF8]`). */
export function parseMailArgument(argument: string): Parsed<MailArgument> {
  const split = splitPathArgument(argument, "FROM:");
  if (!split) return { ok: false, failure: "syntax" };
  if (new TextEncoder().encode(split.path).length + 2 > LIMITS.maxPath) {
    return { ok: false, failure: "too-long" };
  }
  const parameters = parseParameters(split.parameters);
  if (!parameters.ok) return parameters;
  let size: number | undefined;
  let body: BodyType | undefined;
  let smtpUtf8 = false;
  for (const [key, value] of parameters.value) {
    if (key === "SIZE" && typeof value === "string" && /^\d{1,20}$/.test(value)) {
      size = Number(value);
    } else if (key === "BODY" && typeof value === "string") {
      const upper = value.toUpperCase();
      if (upper !== "7BIT" && upper !== "8BITMIME" && upper !== "BINARYMIME") {
        return { ok: false, failure: "syntax" };
      }
      body = upper;
    } else if (key === "SMTPUTF8" && value === true) {
      smtpUtf8 = true;
    } else if (key === "SIZE" || key === "SMTPUTF8") {
      return { ok: false, failure: "syntax" };
    } else {
      return { ok: false, failure: "unknown-parameter" };
    }
  }
  if (split.path === "") return { ok: true, value: { sender: null, size, body, smtpUtf8 } };
  const sender = parseMailbox(split.path, false);
  if (!sender.ok) return sender;
  if (sender.value.utf8 && !smtpUtf8) return { ok: false, failure: "needs-smtputf8" };
  return { ok: true, value: { sender: sender.value, size, body, smtpUtf8 } };
}

/** Parses the argument of `RCPT` (`TO:<path>`); Letterbox supports no RCPT parameters. */
export function parseRcptArgument(argument: string, smtpUtf8: boolean): Parsed<Address> {
  const split = splitPathArgument(argument, "TO:");
  if (!split || split.path === "") return { ok: false, failure: "syntax" };
  if (new TextEncoder().encode(split.path).length + 2 > LIMITS.maxPath) {
    return { ok: false, failure: "too-long" };
  }
  const parameters = parseParameters(split.parameters);
  if (!parameters.ok) return parameters;
  if (parameters.value.size > 0) return { ok: false, failure: "unknown-parameter" };
  const recipient = parseMailbox(split.path, true);
  if (!recipient.ok) return recipient;
  if (recipient.value.utf8 && !smtpUtf8) return { ok: false, failure: "needs-smtputf8" };
  return recipient;
}

/**
 * Parses the EHLO/HELO argument: one word, a domain or an address literal.
 * Like Postfix by default, Letterbox accepts any single printable word, since
 * many honest clients send a bare or malformed name; control characters
 * were refused before this point, so the name is safe to put in a header.
 */
export function parseHeloArgument(argument: string): string | undefined {
  if (argument === "" || /\s/.test(argument) || argument.length > LIMITS.maxDomain) {
    return undefined;
  }
  return argument;
}
