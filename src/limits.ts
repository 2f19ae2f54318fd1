/**
 * Every number Letterbox enforces, with the reason it has the value it has.
 * Configurable limits take their defaults from here; the rest are fixed.
 *
 * @module
 */

/** Default and fixed limits. Sizes are in octets, durations in milliseconds. */
export const LIMITS = {
  /**
   * A command line, CRLF included (RFC 5321 4.5.3.1.4). Longer lines are read
   * to their end without being kept, then answered with 500 5.5.6.
   */
  maxCommandLine: 512,
  /** Default message size, advertised in EHLO as SIZE (RFC 1870): 25 MiB, as Postfix. */
  maxMessageSize: 26_214_400,
  /** Recipients per message: RFC 5321 4.5.3.1.8 says a server must accept at least 100. */
  maxRecipients: 100,
  /** Local part of an address (RFC 5321 4.5.3.1.1). */
  maxLocalPart: 64,
  /** Domain of an address (RFC 5321 4.5.3.1.2). */
  maxDomain: 255,
  /** A whole reverse- or forward-path, angle brackets included (RFC 5321 4.5.3.1.3). */
  maxPath: 256,
  /**
   * Waiting for a command: RFC 5321 4.5.3.2.7 asks a server to wait at least
   * five minutes.
   */
  commandTimeout: 300_000,
  /** The whole DATA phase (RFC 5321 4.5.3.2.6 asks for at least ten minutes). */
  dataTimeout: 600_000,
  /**
   * Longest silence inside DATA: a sender that stalls this long mid-message is
   * gone (Postfix's smtpd_timeout applies per read in the same way).
   */
  dataReadGap: 180_000,
  /** Connections at once, across all listeners (Postfix's default process limit is 100; we are lighter). */
  maxConnections: 1000,
  /** Connections at once from one IP address (postscreen and smtpd_client_connection_count_limit use 50; spambots open many). */
  maxConnectionsPerIp: 20,
  /** Wait before greeting to catch clients that talk first (postscreen's pregreet test); 0 = off. */
  greetDelay: 0,
  /** Files in a Maildir's tmp/ older than this are crash debris (the Maildir specification says 36 hours). */
  staleTmpAge: 36 * 3600 * 1000,
  /** How long a proxy has to send its PROXY header. */
  proxyHeaderTimeout: 10_000,
  /** Bad commands in one session before we hang up (Postfix's smtpd_hard_error_limit is 20). */
  maxErrors: 10,
  /**
   * Octets of each message kept in memory for postal-mime: the header and the
   * structure of ordinary mail, small enough that 64 large messages at once
   * hold 16 MiB for it (1 MiB made that 64 MiB in the benchmark). Longer
   * messages are inspected from this prefix only, and the summary says so.
   */
  maxInspectedBytes: 262_144,
  /**
   * Octets of a message for LMTP held in memory while it arrives; the rest
   * waits in a spool file until the checks are done and it is sent.
   */
  lmtpHeldInMemory: 262_144,
  /** Header octets postal-mime may read (its maxHeadersSize option). */
  maxInspectedHeaderBytes: 262_144,
  /** MIME nesting postal-mime follows before it stops (its maxNestingDepth option). */
  maxMimeNesting: 32,
  /**
   * Octets gathered in memory before a write to a message file: one write per
   * 128 KiB instead of one per network read (16 KiB), and one for most whole
   * messages with their trace headers. A message's buffer starts at 16 KiB
   * and becomes one of this size only once it outgrows that.
   */
  deliveryWriteBuffer: 131_072,
  /**
   * Largest message whose syncs may run on the main thread when no other
   * message is under way (see syncDirectoryShared): a sync of a file this size
   * takes about a millisecond on a VPS disk; larger ones stay on the blocking
   * pool, where the trip costs little beside the write.
   */
  inlineSyncBytes: 131_072,
  /**
   * Memory hook payloads may need at once before Letterbox warns at start-up:
   * a payload is built from its whole message (postal-mime's strings and
   * base64 take about four times the message), and the V8 heap is capped at
   * 1 GiB (Makefile V8_FLAGS).
   */
  hookPayloadBudget: 512 * 1024 * 1024,
  /**
   * Pauses of the accept loop when the system is out of descriptors or
   * memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): from 10 ms, doubling to 1 s,
   * so that a descriptor shortage is not a busy loop; errors about one
   * connection pause nothing.
   */
  acceptBackoffMin: 10,
  acceptBackoffMax: 1000,
  /** At most one log line per this many ms about failing accepts. */
  acceptErrorLogInterval: 10_000,
  /**
   * Deliveries failing in a row (our own 4xx: disk, permissions) before
   * /healthz reports unhealthy; one success clears it. A few, so that one odd
   * failure does not page anyone and a broken disk does within seconds.
   */
  unhealthyAfterFailures: 3,
  /** How long a client has for the TLS handshake after 220 2.0.0 or on connect. */
  tlsHandshakeTimeout: 30_000,
} as const;

/** The names of the limits above. */
export type LimitName = keyof typeof LIMITS;
