/**
 * What the pipeline knows about one message before its content: who sent it,
 * over what, and the route of every recipient, decided at RCPT.
 *
 * @module
 */

import type { Address } from "../protocol/address.ts";
import type { Route } from "./route.ts";

/** Facts about the TLS session a message arrived over. */
export interface TlsInfo {
  /** The protocol version, e.g. `TLSv1.3`. */
  readonly protocol: string;
  /** The cipher suite name. */
  readonly cipher: string;
}

/** Everything the pipeline needs to know about one message's envelope and origin. */
export interface Envelope {
  /** The queue id, shown in the 250 reply and the logs. */
  readonly id: string;
  /** The reverse-path; `null` for the null sender. */
  readonly sender: Address | null;
  /** One route per accepted recipient, in RCPT order. */
  readonly routes: readonly Route[];
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
  /** When the DATA phase (or the first BDAT chunk) began. */
  readonly receivedAt: Date;
  /** How the content came: one DATA section, or BDAT chunks (RFC 3030). */
  readonly transfer?: "DATA" | "BDAT";
  /**
   * The SMTP transaction it belongs to: the key under which a target that
   * confirms recipients at RCPT (LMTP) keeps its session with the next hop.
   */
  readonly transaction?: object;
}

let queueCounter = 0;

/** A queue id: time, a counter and randomness, short enough to read aloud from a log. */
export function newQueueId(): string {
  queueCounter = (queueCounter + 1) % 1296;
  const random = crypto.getRandomValues(new Uint8Array(3));
  return Date.now().toString(36).toUpperCase() +
    queueCounter.toString(36).toUpperCase().padStart(2, "0") +
    Array.from(random, (b) => (b % 36).toString(36)).join("").toUpperCase();
}
