/**
 * The trace header lines a final delivery prepends (RFC 5321 4.4):
 * `Return-Path`, `Delivered-To` and `Received`. Pure text; every value that
 * came from the client was checked for control characters before it got here,
 * and is checked again, so a header stays one header.
 *
 * @module
 */

import { type Address, formatAddress, isDomainName } from "../protocol/address.ts";
import type { Envelope } from "./envelope.ts";

const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** Formats a date as RFC 5322 3.3 wants it, in UTC: `Sun, 29 Nov 2026 08:54:08 +0000`. */
export function formatMailDate(date: Date): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${DAYS[date.getUTCDay()]}, ${date.getUTCDate()} ${
    MONTHS[date.getUTCMonth()]
  } ${date.getUTCFullYear()} ` +
    `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())} +0000`;
}

/**
 * The protocol word of the Received `with` clause: SMTP or ESMTP, S for TLS
 * (RFC 3848), UTF8SMTP for SMTPUTF8 sessions (RFC 6531 3.7.3).
 */
export function withProtocol(envelope: Pick<Envelope, "extended" | "tls" | "smtpUtf8">): string {
  const secure = envelope.tls ? "S" : "";
  if (envelope.smtpUtf8 && envelope.extended) return `UTF8SMTP${secure}`;
  return `${envelope.extended ? "E" : ""}SMTP${secure}`;
}

// Anything outside printable text is replaced rather than trusted: a header
// line must never be split or ended by client input.
function headerSafe(text: string): string {
  // deno-lint-ignore no-control-regex
  return text.replace(/[\x00-\x1f\x7f]/g, "?");
}

const NON_ASCII = /[\u0080-\uffff]/;

/**
 * The EHLO name as the Received header may hold it. 8-bit header text is
 * allowed only in SMTPUTF8 mail (RFC 6532); in any other message a name that
 * is a domain with U-labels is written as its A-labels (punycode, as IDNA
 * maps it), and anything else non-ASCII as \u escapes, so a 7-bit message
 * stays 7-bit.
 */
export function heloForHeader(name: string, smtpUtf8: boolean): string {
  const safe = headerSafe(name);
  if (smtpUtf8 || !NON_ASCII.test(safe)) return safe;
  if (isDomainName(safe)) {
    try {
      const ascii = new URL(`http://${safe}`).hostname;
      if (!NON_ASCII.test(ascii)) return ascii;
    } catch { /* not a name IDNA maps: escaped below */ }
  }
  return safe.replace(
    /[\u0080-\uffff]/g,
    (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/**
 * A client address as an address literal (RFC 5321 4.1.3): `[192.0.2.1]`,
 * or `[IPv6:2001:db8::1]` for IPv6, as Postfix writes it.
 */
export function addressLiteral(address: string): string {
  const safe = headerSafe(address);
  return safe.includes(":") ? `[IPv6:${safe}]` : `[${safe}]`;
}

/**
 * The trace lines for one copy, LF-terminated, in the order they go on top of
 * the message: Return-Path, Delivered-To (one per recipient of this copy),
 * Received.
 */
export function traceHeaders(
  envelope: Envelope,
  hostname: string,
  mailboxes: readonly string[],
  recipients: readonly Address[],
): string {
  const sender = envelope.sender ? formatAddress(envelope.sender) : "";
  let text = `Return-Path: <${headerSafe(sender)}>\n`;
  for (const mailbox of mailboxes) text += `Delivered-To: ${headerSafe(mailbox)}\n`;
  return text + receivedHeader(envelope, hostname, recipients);
}

/**
 * Our Received line alone, LF-terminated: what goes on top of a message
 * handed on by LMTP, whose server adds Return-Path and Delivered-To itself.
 */
export function receivedHeader(
  envelope: Envelope,
  hostname: string,
  recipients: readonly Address[],
): string {
  let text = `Received: from ${heloForHeader(envelope.heloName, envelope.smtpUtf8)} (unknown ${
    addressLiteral(envelope.clientAddress)
  })\n`;
  if (envelope.tls) {
    text += `\t(using ${headerSafe(envelope.tls.protocol)} with cipher ${
      headerSafe(envelope.tls.cipher)
    })\n`;
  }
  text += `\tby ${headerSafe(hostname)} (Letterbox) with ${
    withProtocol(envelope)
  } id ${envelope.id}`;
  // Postfix names the recipient only when there is one: listing all of them
  // would disclose Bcc recipients to each other.
  if (recipients.length === 1) text += `\n\tfor <${headerSafe(formatAddress(recipients[0]))}>`;
  text += `; ${formatMailDate(envelope.receivedAt)}\n`;
  return text;
}
