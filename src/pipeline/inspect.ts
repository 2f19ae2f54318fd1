/**
 * postal-mime behind limits: turns the first octets of a stored message into
 * a small summary for the logs. It never throws: a message that does not
 * parse is still a delivered message.
 *
 * @module
 */

import { describeError } from "../log.ts";
import PostalMime, { addressParser, decodeWords } from "postal-mime";
import { LIMITS } from "../limits.ts";

/** What the logs say about a message's content. */
export interface MessageSummary {
  /** The Message-ID header, if any. */
  readonly messageId?: string;
  /** The decoded Subject header, if any. */
  readonly subject?: string;
  /** The From address, if any. */
  readonly from?: string;
  /** Attachments found; a lower bound when `truncated`. */
  readonly attachments: number;
  /** True when only a prefix of the message was parsed. */
  readonly truncated: boolean;
  /** Why parsing failed, when it did. */
  readonly error?: string;
}

/**
 * Keeps what {@link inspectMessage} needs of a message as it streams past:
 * the header block, and for a multipart message the first
 * {@link LIMITS.maxInspectedBytes} octets, so that memory stays bounded
 * whatever the message size. For any other message the header says all
 * there is to say, and its body is not copied.
 */
export class MessagePrefix {
  #parts: Uint8Array[] = [];
  #kept = 0;
  #truncated = false;
  // After the header of a message that is not multipart: nothing more to keep.
  #headerOnly = false;
  #inHeader = true;
  // The message starts as if after a line end: an empty first line is an empty header.
  #lastWasLf = true;
  readonly #limit: number;

  /** Creates a prefix that keeps at most `limit` octets. */
  constructor(limit: number = LIMITS.maxInspectedBytes) {
    this.#limit = limit;
  }

  /** Copies what is needed of `content` (the caller may reuse its buffer). */
  add(content: Uint8Array): void {
    if (this.#headerOnly || content.length === 0) return;
    let wanted = content;
    const end = this.#inHeader ? this.#headerEnd(content) : -1;
    if (end !== -1) {
      this.#inHeader = false;
      this.#keep(content.subarray(0, end));
      if (!MULTIPART.test(headerDecoder.decode(this.bytes()))) {
        this.#headerOnly = true;
        return;
      }
      wanted = content.subarray(end);
    }
    this.#keep(wanted);
  }

  /** True when the message was longer than the prefix it needed. */
  get truncated(): boolean {
    return this.#truncated;
  }

  /** The kept octets as one array. */
  bytes(): Uint8Array {
    if (this.#parts.length === 1) return this.#parts[0];
    const result = new Uint8Array(this.#kept);
    let offset = 0;
    for (const part of this.#parts) {
      result.set(part, offset);
      offset += part.length;
    }
    this.#parts = [result];
    return result;
  }

  #keep(content: Uint8Array): void {
    const room = this.#limit - this.#kept;
    if (content.length > room) this.#truncated = true;
    if (room <= 0 || content.length === 0) return;
    const part = content.slice(0, room);
    this.#parts.push(part);
    this.#kept += part.length;
  }

  // The offset just past the empty line that ends the header, or -1.
  #headerEnd(content: Uint8Array): number {
    if (this.#lastWasLf && content[0] === LF) return 1;
    this.#lastWasLf = content[content.length - 1] === LF;
    for (let at = content.indexOf(LF); at !== -1; at = content.indexOf(LF, at + 1)) {
      if (content[at + 1] === LF) return at + 2;
    }
    return -1;
  }
}

const LF = 0x0a;
const headerDecoder = new TextDecoder("latin1");
// A top-level multipart Content-Type, the only kind whose body can hold more
// than one attachment (RFC 2046 5.1).
const MULTIPART = /^content-type:[ \t]*(?:\r?\n[ \t]+)?multipart\//im;

/** The header block of a stored message: up to and including the first empty line. */
export function headerBlock(raw: Uint8Array): Uint8Array {
  for (let at = raw.indexOf(LF); at !== -1 && at + 1 < raw.length; at = raw.indexOf(LF, at + 1)) {
    if (raw[at + 1] === LF) return raw.subarray(0, at + 2);
  }
  return raw;
}

/**
 * Summarises a message (or its prefix); never throws. Only a multipart
 * message is parsed whole, by postal-mime. Any other is summarised from its
 * header block with postal-mime's own address parser and encoded-word decoder:
 * a single part is an attachment or not by its own headers, postal-mime
 * spends about 10 ms on a 64 KiB text body in Deno (it gathers the body line
 * by line into a Blob), and even on a header alone it made 25 KB of garbage
 * per message.
 */
export async function inspectMessage(raw: Uint8Array, truncated: boolean): Promise<MessageSummary> {
  try {
    const header = headerBlock(raw);
    if (header.length === raw.length || !MULTIPART.test(headerDecoder.decode(header))) {
      return { ...summariseHeader(header), truncated };
    }
    const email = await PostalMime.parse(raw, {
      maxNestingDepth: LIMITS.maxMimeNesting,
      maxHeadersSize: LIMITS.maxInspectedHeaderBytes,
      attachmentEncoding: "arraybuffer",
    });
    const from = email.from && "address" in email.from ? email.from.address : undefined;
    return {
      messageId: email.messageId,
      subject: email.subject,
      from,
      attachments: email.attachments.length,
      truncated,
    };
  } catch (error) {
    return {
      attachments: 0,
      truncated,
      error: describeError(error),
    };
  }
}

const utf8 = new TextDecoder();
const SUMMARY_FIELDS = new Set([
  "message-id",
  "subject",
  "from",
  "content-type",
  "content-disposition",
]);

// The summary of a single-part message, as postal-mime would give it.
function summariseHeader(header: Uint8Array): Omit<MessageSummary, "truncated"> {
  const fields = headerFields(header);
  const subject = fields.get("subject");
  const first = fields.has("from") ? addressParser(fields.get("from")!)[0] : undefined;
  // No Content-Type means text/plain; an empty one does not (postal-mime).
  const type = fields.has("content-type") ? mainValue(fields.get("content-type")) : "text/plain";
  const disposition = mainValue(fields.get("content-disposition"));
  // postal-mime's rule: text/plain, text/html and an inline message/rfc822
  // are content; anything else, or anything marked as an attachment, is one.
  const content = disposition !== "attachment" &&
    (type === "text/plain" || type === "text/html" || type === "message/rfc822");
  return {
    messageId: fields.get("message-id")?.trim() || undefined,
    subject: subject === undefined ? undefined : decodeWords(subject.trim()),
    from: first && "address" in first ? first.address : undefined,
    attachments: content ? 0 : 1,
  };
}

// The first occurrence of each summary field, unfolded (RFC 5322 2.2.3).
function headerFields(header: Uint8Array): Map<string, string> {
  const fields = new Map<string, string>();
  let name = "";
  let value = "";
  const keep = () => {
    if (SUMMARY_FIELDS.has(name) && !fields.has(name)) fields.set(name, value);
  };
  for (const line of utf8.decode(header).split("\n")) {
    if (line === "" || line === "\r") break;
    if (line[0] === " " || line[0] === "\t") {
      value += line;
      continue;
    }
    keep();
    const colon = line.indexOf(":");
    name = colon > 0 ? line.slice(0, colon).trim().toLowerCase() : "";
    value = colon > 0 ? line.slice(colon + 1) : "";
  }
  keep();
  return fields;
}

// "text/plain; charset=utf-8" -> "text/plain".
function mainValue(field: string | undefined): string {
  return field === undefined ? "" : field.split(";")[0].trim().toLowerCase();
}
