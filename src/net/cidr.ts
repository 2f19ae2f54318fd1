/**
 * Address ranges (`192.0.2.0/24`, `2001:db8::/32`) and membership tests, for
 * the proxies we trust.
 *
 * @module
 */

import { parseIpv6 } from "./proxy_protocol.ts";

/** A parsed address range. */
export interface Cidr {
  readonly bytes: Uint8Array;
  readonly prefix: number;
  /** The range as written, for messages. */
  readonly text: string;
}

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Parses an IPv4 or IPv6 address into 4 or 16 bytes; IPv4-mapped IPv6 becomes IPv4. */
export function parseAddress(text: string): Uint8Array | undefined {
  const v4 = IPV4.exec(text);
  if (v4) {
    const bytes = v4.slice(1).map(Number);
    return bytes.every((b) => b <= 255) ? Uint8Array.from(bytes) : undefined;
  }
  const v6 = parseIpv6(text);
  if (v6 && v6.subarray(0, 10).every((b) => b === 0) && v6[10] === 0xff && v6[11] === 0xff) {
    return v6.slice(12);
  }
  return v6;
}

/** Parses `ADDRESS/PREFIX` (or a bare address, a range of one); undefined when invalid. */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf("/");
  const bytes = parseAddress(slash === -1 ? text : text.slice(0, slash));
  if (!bytes) return undefined;
  const max = bytes.length * 8;
  const prefix = slash === -1
    ? max
    : /^\d{1,3}$/.test(text.slice(slash + 1))
    ? Number(text.slice(slash + 1))
    : NaN;
  if (!(prefix >= 0 && prefix <= max)) return undefined;
  return { bytes, prefix, text };
}

/** True when `address` lies in one of the ranges. */
export function inRanges(address: string, ranges: readonly Cidr[]): boolean {
  const bytes = parseAddress(address);
  if (!bytes) return false;
  return ranges.some((range) => {
    if (range.bytes.length !== bytes.length) return false;
    const whole = range.prefix >> 3;
    for (let i = 0; i < whole; i++) if (bytes[i] !== range.bytes[i]) return false;
    const rest = range.prefix & 7;
    if (rest === 0) return true;
    const mask = (0xff << (8 - rest)) & 0xff;
    return (bytes[whole] & mask) === (range.bytes[whole] & mask);
  });
}

/** Loopback only: the default for --proxy-from. */
export const LOOPBACK: readonly string[] = ["127.0.0.0/8", "::1/128"];
