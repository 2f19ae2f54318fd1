/**
 * A hand-made TLS ClientHello offering only one legacy version (TLS 1.0 or
 * 1.1), and the reading of what the server answers: Deno's TLS client
 * (rustls) cannot speak those versions, so the check asks in bytes whether
 * the server would. RFC 8996 deprecates both.
 *
 * @module
 */

/** The legacy versions the check offers, as TLS writes them. */
export const LEGACY_VERSIONS = { "TLS 1.0": 0x0301, "TLS 1.1": 0x0302 } as const;

function u16(value: number): number[] {
  return [(value >> 8) & 0xff, value & 0xff];
}

function extension(type: number, body: number[]): number[] {
  return [...u16(type), ...u16(body.length), ...body];
}

/** A ClientHello record offering `version` only, with ciphers and extensions such servers take. */
export function legacyClientHello(version: number, serverName: string): Uint8Array {
  const name = [...new TextEncoder().encode(serverName)];
  const sni = /^[\d.]+$|:/.test(serverName)
    ? []
    : extension(0, [...u16(name.length + 3), 0, ...u16(name.length), ...name]);
  const extensions = [
    ...sni,
    ...extension(13, [...u16(8), 0x04, 0x01, 0x05, 0x01, 0x04, 0x03, 0x08, 0x04]), // signature_algorithms
    ...extension(10, [...u16(4), 0x00, 0x1d, 0x00, 0x17]), // supported_groups: x25519, P-256
    ...extension(11, [0x01, 0x00]), // ec_point_formats: uncompressed
  ];
  const ciphers = [0xc0, 0x13, 0xc0, 0x14, 0x00, 0x2f, 0x00, 0x35, 0x00, 0x0a];
  const random = [...crypto.getRandomValues(new Uint8Array(32))];
  const body = [
    ...u16(version),
    ...random,
    0, // no session id
    ...u16(ciphers.length),
    ...ciphers,
    1,
    0, // compression: null
    ...u16(extensions.length),
    ...extensions,
  ];
  const handshake = [1, (body.length >> 16) & 0xff, ...u16(body.length & 0xffff), ...body];
  return Uint8Array.from([0x16, 0x03, 0x01, ...u16(handshake.length), ...handshake]);
}

/** What the server's first bytes say about a legacy hello. */
export function legacyAnswer(bytes: Uint8Array): "accepted" | "refused" {
  // A handshake record with a ServerHello (type 2) means it agreed to talk that version.
  return bytes[0] === 0x16 && bytes[5] === 2 ? "accepted" : "refused";
}
