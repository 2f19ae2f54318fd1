/**
 * The boundary between the SMTP side and storage: the connection streams a
 * message into a {@link DeliveryTransaction} and replies 250 only after
 * {@link DeliveryTransaction.commit} resolved.
 *
 * @module
 */

import type { Address } from "../commands.ts";

/** Facts about the TLS session a message arrived over. */
export interface TlsInfo {
  /** The protocol version, e.g. `TLSv1.3`. */
  readonly protocol: string;
  /** The cipher suite name. */
  readonly cipher: string;
}

/** Everything delivery needs to know about one message's envelope and origin. */
export interface Envelope {
  /** The queue id, shown in the 250 reply and the logs. */
  readonly id: string;
  /** The reverse-path; `null` for the null sender. */
  readonly sender: Address | null;
  /** The accepted recipients. */
  readonly recipients: readonly Address[];
  /** The client's IP address. */
  readonly clientAddress: string;
  /** The EHLO/HELO name the client gave. */
  readonly heloName: string;
  /** True after EHLO, false after HELO. */
  readonly extended: boolean;
  /** The TLS session, when the message came over TLS. */
  readonly tls?: TlsInfo;
  /** True when MAIL carried SMTPUTF8. */
  readonly smtpUtf8: boolean;
  /** When the DATA phase began. */
  readonly receivedAt: Date;
}

/** One stored copy of a message. */
export interface StoredCopy {
  /** The Maildir it went into. */
  readonly maildir: string;
  /** The file's path inside `new/`. */
  readonly path: string;
  /** The recipients this copy is for. */
  readonly recipients: readonly Address[];
}

/** A message being stored. Exactly one of `commit` or `abort` ends it. */
export interface DeliveryTransaction {
  /** Appends decoded message content (LF line ends), holding `lines` LFs when known. */
  write(content: Uint8Array, lines?: number): Promise<void>;
  /** Makes every copy durable; resolves only when each is synced and in `new/`. */
  commit(): Promise<StoredCopy[]>;
  /** Discards everything written; leaves nothing behind. Never throws. */
  abort(): Promise<void>;
}

/** Somewhere messages can be stored. */
export interface Delivery {
  /** Starts storing one message for the envelope's recipients. */
  begin(envelope: Envelope): Promise<DeliveryTransaction>;
}

/** True when an error means the disk (or quota) is full: the reply is then 452 4.3.1. */
export function isStorageFull(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === "ENOSPC" || code === "EDQUOT";
}
