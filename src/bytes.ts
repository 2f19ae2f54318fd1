/**
 * Small octet helpers shared by the modules that handle message content.
 *
 * @module
 */

const LF = 0x0a;

/** The parts joined into one array (the part itself when there is one). */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  let length = 0;
  for (const part of parts) length += part.length;
  const joined = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    joined.set(part, offset);
    offset += part.length;
  }
  return joined;
}

/**
 * Where the header section of LF-terminated content ends: after its last
 * field's LF, before the empty line (0 when it starts with the empty line);
 * -1 when the empty line is not in `content`.
 */
export function headerEnd(content: Uint8Array): number {
  if (content[0] === LF) return 0;
  for (
    let at = content.indexOf(LF);
    at !== -1 && at + 1 < content.length;
    at = content.indexOf(LF, at + 1)
  ) {
    if (content[at + 1] === LF) return at + 1;
  }
  return -1;
}
