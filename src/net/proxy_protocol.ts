/**
 * HAProxy's PROXY protocol, versions 1 (text) and 2 (binary): the header a
 * proxy in front of us sends first, naming the real client. Pure parsing;
 * the server decides where it is allowed.
 *
 * @module
 */

/** The address a PROXY header names. */
export interface ProxiedAddress {
  readonly address: string;
  readonly port: number;
}

/** The outcome of parsing the start of a connection. */
export type ProxyHeader =
  /** More bytes are needed. */
  | { readonly kind: "incomplete" }
  /** Not a valid header: the connection must be closed. */
  | { readonly kind: "invalid"; readonly reason: string }
  /**
   * A valid header of `length` octets; `source` is absent for v1 UNKNOWN and
   * v2 LOCAL (health checks), where the connection's own address stands.
   */
  | { readonly kind: "ok"; readonly length: number; readonly source?: ProxiedAddress };

/** The v2 signature (section 2.2 of HAProxy's specification). */
export const V2_SIGNATURE = Uint8Array.of(
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
);
/** A v1 header is at most 107 octets, CRLF included (section 2.1). */
export const V1_MAX_LENGTH = 107;
/**
 * The largest v2 header we read: addresses plus room for TLVs. The format
 * allows 64 KiB; a proxy that sends more than this is not one we configured.
 */
export const V2_MAX_LENGTH = 16 + 216 + 512;

const V1_PREFIX = "PROXY ";
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const PORT = /^(0|[1-9]\d{0,4})$/;

/** Parses a PROXY header at the start of `bytes`. */
export function parseProxyHeader(bytes: Uint8Array): ProxyHeader {
  if (bytes.length === 0) return { kind: "incomplete" };
  if (bytes[0] === V2_SIGNATURE[0]) return parseV2(bytes);
  return parseV1(bytes);
}

function parseV1(bytes: Uint8Array): ProxyHeader {
  const prefix = new TextDecoder("latin1").decode(bytes.subarray(0, V1_PREFIX.length));
  if (!V1_PREFIX.startsWith(prefix)) return { kind: "invalid", reason: "no PROXY header" };
  const end = bytes.indexOf(0x0a);
  if (end === -1) {
    return bytes.length >= V1_MAX_LENGTH
      ? { kind: "invalid", reason: "v1 header too long" }
      : { kind: "incomplete" };
  }
  if (end + 1 > V1_MAX_LENGTH || bytes[end - 1] !== 0x0d) {
    return { kind: "invalid", reason: "malformed v1 header" };
  }
  const line = new TextDecoder("latin1").decode(bytes.subarray(0, end - 1));
  const parts = line.split(" ");
  if (parts[1] === "UNKNOWN") return { kind: "ok", length: end + 1 };
  if (parts.length !== 6) return { kind: "invalid", reason: "malformed v1 header" };
  const [, family, source, destination, sourcePort, destinationPort] = parts;
  const valid = family === "TCP4"
    ? IPV4.test(source) && IPV4.test(destination)
    : family === "TCP6" && isIpv6(source) && isIpv6(destination);
  if (
    !valid || !PORT.test(sourcePort) || !PORT.test(destinationPort) || Number(sourcePort) > 65535
  ) {
    return { kind: "invalid", reason: "malformed v1 header" };
  }
  return {
    kind: "ok",
    length: end + 1,
    source: { address: source.toLowerCase(), port: Number(sourcePort) },
  };
}

function parseV2(bytes: Uint8Array): ProxyHeader {
  const have = Math.min(bytes.length, V2_SIGNATURE.length);
  for (let i = 0; i < have; i++) {
    if (bytes[i] !== V2_SIGNATURE[i]) return { kind: "invalid", reason: "no PROXY header" };
  }
  if (bytes.length < 16) return { kind: "incomplete" };
  const versionCommand = bytes[12];
  if (versionCommand >> 4 !== 2) return { kind: "invalid", reason: "unsupported PROXY version" };
  const command = versionCommand & 0x0f;
  const family = bytes[13];
  const length = (bytes[14] << 8) | bytes[15];
  if (16 + length > V2_MAX_LENGTH) return { kind: "invalid", reason: "v2 header too long" };
  if (bytes.length < 16 + length) return { kind: "incomplete" };
  if (command === 0x0) return { kind: "ok", length: 16 + length }; // LOCAL: a health check
  if (command !== 0x1) return { kind: "invalid", reason: "unknown v2 command" };
  const body = bytes.subarray(16, 16 + length);
  if (family === 0x11 && length >= 12) {
    const address = `${body[0]}.${body[1]}.${body[2]}.${body[3]}`;
    return { kind: "ok", length: 16 + length, source: { address, port: (body[8] << 8) | body[9] } };
  }
  if (family === 0x21 && length >= 36) {
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(((body[i] << 8) | body[i + 1]).toString(16));
    return {
      kind: "ok",
      length: 16 + length,
      source: { address: compressIpv6(groups), port: (body[32] << 8) | body[33] },
    };
  }
  // UNSPEC, UNIX sockets or UDP: nothing we can use as a client address.
  if (family === 0x00) return { kind: "ok", length: 16 + length };
  return { kind: "invalid", reason: "unsupported v2 address family" };
}

function isIpv6(text: string): boolean {
  return /^[0-9a-fA-F:.]{2,45}$/.test(text) && text.includes(":") && parseIpv6(text) !== undefined;
}

/** Parses an IPv6 address into 16 bytes, or undefined. */
export function parseIpv6(text: string): Uint8Array | undefined {
  let head = text;
  let tail = "";
  const double = text.indexOf("::");
  if (double !== -1) {
    head = text.slice(0, double);
    tail = text.slice(double + 2);
    if (tail.includes("::")) return undefined;
  }
  const toGroups = (part: string): number[] | undefined => {
    if (part === "") return [];
    const groups: number[] = [];
    const pieces = part.split(":");
    for (const [i, piece] of pieces.entries()) {
      if (i === pieces.length - 1 && piece.includes(".")) {
        if (!IPV4.test(piece)) return undefined;
        const [a, b, c, d] = piece.split(".").map(Number);
        groups.push((a << 8) | b, (c << 8) | d);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(piece)) return undefined;
        groups.push(parseInt(piece, 16));
      }
    }
    return groups;
  };
  const first = toGroups(head);
  const last = toGroups(tail);
  if (!first || !last) return undefined;
  const missing = 8 - first.length - last.length;
  if (double === -1 ? missing !== 0 : missing < 1) return undefined;
  const groups = [...first, ...new Array(double === -1 ? 0 : missing).fill(0), ...last];
  const bytes = new Uint8Array(16);
  groups.forEach((group, i) => {
    bytes[i * 2] = group >> 8;
    bytes[i * 2 + 1] = group & 0xff;
  });
  return bytes;
}

function compressIpv6(groups: string[]): string {
  // The longest run of zero groups becomes "::" (RFC 5952 4.2).
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  if (bestStart === -1) return groups.join(":");
  return `${groups.slice(0, bestStart).join(":")}::${
    groups.slice(bestStart + bestLength).join(":")
  }`;
}
