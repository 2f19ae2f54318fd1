/**
 * Mailbox addresses (RFC 5321 4.1.2, with RFC 6531's UTF-8): the parsed form
 * every part of Letterbox passes around, its parser and its envelope text.
 * Pure.
 *
 * @module
 */

import { LIMITS } from "../limits.ts";
import type { Parsed } from "./commands.ts";

/** A mailbox address: `local@domain`; `domain` is empty only for `<postmaster>`. */
export interface Address {
  /** The local part as sent, quotes included when it was a quoted string. */
  readonly local: string;
  /** The local part without quotes and quoted-pair escapes. */
  readonly localText: string;
  /** The domain as sent (a name or an address literal). */
  readonly domain: string;
  /** True when local part or domain holds non-ASCII characters (RFC 6531). */
  readonly utf8: boolean;
}

// RFC 5321 4.1.2: atext, extended by RFC 6531 3.3 with every non-ASCII character.
const ATOM = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\u{10FFFF}]+$/u;
// RFC 5321 4.1.2: qtextSMTP and quoted-pairSMTP inside double quotes.
const QUOTED_STRING = /^"((?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\u{10FFFF}]|\\[\x20-\x7e])*)"$/u;
// A domain label (RFC 5321 4.1.2 sub-domain), with U-labels allowed (RFC 6531 3.3).
const LABEL =
  /^[A-Za-z0-9\u0080-\u{10FFFF}](?:[A-Za-z0-9\-\u0080-\u{10FFFF}]*[A-Za-z0-9\u0080-\u{10FFFF}])?$/u;
// An address literal (RFC 5321 4.1.3): kept to the characters IPv4 and IPv6 use.
const ADDRESS_LITERAL = /^\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]{2,45})\]$/;
const NON_ASCII = /[\u0080-\u{10FFFF}]/u;

/** True when `domain` is a syntactically valid domain name (RFC 5321 4.1.2). */
export function isDomainName(domain: string): boolean {
  if (domain.length === 0 || new TextEncoder().encode(domain).length > LIMITS.maxDomain) {
    return false;
  }
  return domain.split(".").every((label) => label.length <= 63 && LABEL.test(label));
}

/** True when `domain` is a name or an address literal such as `[192.0.2.1]`. */
export function isDomainOrLiteral(domain: string): boolean {
  return ADDRESS_LITERAL.test(domain) || isDomainName(domain);
}

/**
 * Parses the mailbox inside angle brackets (without the brackets), dropping an
 * obsolete source route (`@a,@b:`) as RFC 5321 4.1.1.3 says servers should.
 */
export function parseMailbox(text: string, allowPostmaster: boolean): Parsed<Address> {
  let mailbox = text;
  if (mailbox.startsWith("@")) {
    const colon = mailbox.indexOf(":");
    if (colon === -1) return { ok: false, failure: "bad-address" };
    mailbox = mailbox.slice(colon + 1);
  }
  const at = mailbox.lastIndexOf("@");
  if (at === -1) {
    // RFC 5321 4.5.1: <postmaster> without a domain must be accepted for RCPT.
    if (allowPostmaster && mailbox.toLowerCase() === "postmaster") {
      return {
        ok: true,
        value: { local: mailbox, localText: mailbox, domain: "", utf8: false },
      };
    }
    return { ok: false, failure: "bad-address" };
  }
  const local = mailbox.slice(0, at);
  const domain = mailbox.slice(at + 1);
  let localText: string;
  const quoted = QUOTED_STRING.exec(local);
  if (quoted) {
    localText = quoted[1].replace(/\\(.)/g, "$1");
  } else if (local.split(".").every((atom) => ATOM.test(atom))) {
    localText = local;
  } else {
    return { ok: false, failure: "bad-address" };
  }
  const encoder = new TextEncoder();
  if (encoder.encode(local).length > LIMITS.maxLocalPart) return { ok: false, failure: "too-long" };
  if (!isDomainOrLiteral(domain)) return { ok: false, failure: "bad-address" };
  return {
    ok: true,
    value: { local, localText, domain, utf8: NON_ASCII.test(mailbox) },
  };
}

/** Formats an address for the envelope (`local@domain`, or `postmaster`). */
export function formatAddress(address: Address): string {
  return address.domain === "" ? address.local : `${address.local}@${address.domain}`;
}
