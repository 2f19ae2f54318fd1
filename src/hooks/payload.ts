/**
 * The JSON a hook receives: the envelope, and the message as postal-mime
 * parses it, attachments as base64 up to a size.
 *
 * @module
 */

import PostalMime from "postal-mime";
import { LIMITS } from "../limits.ts";
import type { AuthenticationFacts } from "../pipeline/checks/authentication.ts";

/** The envelope part of a job, as stored in the spool. */
export interface JobEnvelope {
  readonly queueId: string;
  readonly sender: string;
  readonly recipients: readonly string[];
  readonly clientAddress: string;
  readonly heloName: string;
  readonly tls: string | null;
  readonly receivedAt: string;
  /** What sender authentication found (absent when it is off, and in older jobs). */
  readonly authentication?: AuthenticationFacts;
  /**
   * The stored copies: Maildir and file name (the file may move from new/ to
   * cur/), and the envelope recipients each copy is for (absent in jobs
   * spooled by earlier versions).
   */
  readonly files: readonly {
    readonly maildir: string;
    readonly name: string;
    readonly recipients?: readonly string[];
  }[];
}

function base64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** Builds the payload from the raw stored message. */
export async function buildPayload(
  envelope: JobEnvelope,
  raw: Uint8Array,
  maxAttachmentBytes: number,
): Promise<Record<string, unknown>> {
  const email = await PostalMime.parse(raw, {
    maxNestingDepth: LIMITS.maxMimeNesting,
    maxHeadersSize: LIMITS.maxInspectedHeaderBytes,
    attachmentEncoding: "arraybuffer",
  });
  return {
    envelope: {
      queueId: envelope.queueId,
      sender: envelope.sender,
      recipients: envelope.recipients,
      clientAddress: envelope.clientAddress,
      heloName: envelope.heloName,
      tls: envelope.tls,
      receivedAt: envelope.receivedAt,
      authentication: envelope.authentication ?? null,
      files: envelope.files.map((f) => `${f.maildir}/new/${f.name}`),
    },
    message: {
      from: email.from ?? null,
      to: email.to ?? [],
      cc: email.cc ?? [],
      replyTo: email.replyTo ?? [],
      subject: email.subject ?? null,
      date: email.date ?? null,
      messageId: email.messageId ?? null,
      inReplyTo: email.inReplyTo ?? null,
      headers: email.headers.map((h) => ({ key: h.originalKey, value: h.value })),
      text: email.text ?? null,
      html: email.html ?? null,
      attachments: email.attachments.map((a) => {
        const bytes = a.content instanceof ArrayBuffer
          ? new Uint8Array(a.content)
          : typeof a.content === "string"
          ? new TextEncoder().encode(a.content)
          : a.content;
        return {
          filename: a.filename,
          mimeType: a.mimeType,
          size: bytes.length,
          contentId: a.contentId ?? null,
          // Above the limit only the metadata travels; the Maildir copy has it all.
          content: bytes.length <= maxAttachmentBytes ? base64(bytes) : null,
        };
      }),
    },
  };
}
