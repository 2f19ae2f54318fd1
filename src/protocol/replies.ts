/**
 * Every reply Letterbox sends, as data, and the one function that turns a
 * reply into bytes on the wire. No other module spells out a reply line.
 *
 * @module
 */

/** An SMTP reply: a code, an enhanced status code (RFC 3463) and text lines. */
export interface Reply {
  /** The three-digit reply code (RFC 5321 4.2). */
  readonly code: number;
  /** The enhanced status code (RFC 2034); absent on the greeting, the EHLO list and 354. */
  readonly enhanced?: string;
  /** One or more lines of text; multi-line replies use `code-` on all but the last. */
  readonly lines: readonly string[];
}

/** Builds a reply with an enhanced status code and a single text line. */
export function reply(code: number, enhanced: string, text: string): Reply {
  return { code, enhanced, lines: [text] };
}

/** Fixed replies, named for what they say. Codes and texts follow RFC 5321 and RFC 3463. */
export const REPLIES = {
  ok: reply(250, "2.0.0", "Ok"),
  senderOk: reply(250, "2.1.0", "Ok"),
  recipientOk: reply(250, "2.1.5", "Ok"),
  resetOk: reply(250, "2.0.0", "Ok"),
  // 354 is an intermediate reply: RFC 2034 gives it no enhanced code.
  startData: { code: 354, lines: ["End data with <CR><LF>.<CR><LF>"] },
  bye: reply(221, "2.0.0", "Bye"),
  readyForTls: reply(220, "2.0.0", "Ready to start TLS"),
  cannotVerify: reply(
    252,
    "2.5.0",
    "Cannot VRFY user, but will accept message and attempt delivery",
  ),
  help: reply(
    214,
    "2.0.0",
    "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
  ),
  unknownCommand: reply(500, "5.5.2", "Error: command not recognized"),
  lineTooLong: reply(500, "5.5.6", "Error: line too long"),
  badBytes: reply(500, "5.5.2", "Error: command contains invalid bytes"),
  syntax: reply(501, "5.5.4", "Syntax error in parameters or arguments"),
  heloSyntax: reply(501, "5.5.4", "Syntax: EHLO hostname"),
  mailSyntax: reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"),
  rcptSyntax: reply(501, "5.5.4", "Syntax: RCPT TO:<address>"),
  noArguments: reply(501, "5.5.4", "Syntax error: no arguments allowed"),
  badSenderAddress: reply(501, "5.1.7", "Bad sender address syntax"),
  badRecipientAddress: reply(501, "5.1.3", "Bad recipient address syntax"),
  unsafeRecipient: reply(550, "5.1.3", "Recipient address cannot be delivered here"),
  needsSmtpUtf8: reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter"),
  unknownParameter: reply(555, "5.5.4", "Unsupported MAIL or RCPT parameter"),
  badSequenceHelo: reply(503, "5.5.1", "Error: send HELO/EHLO first"),
  badSequenceNestedMail: reply(503, "5.5.1", "Error: nested MAIL command"),
  badSequenceNeedMail: reply(503, "5.5.1", "Error: need MAIL command"),
  badSequenceNeedRcpt: reply(503, "5.5.1", "Error: need RCPT command"),
  dataAfterBdat: reply(503, "5.5.1", "Error: DATA cannot follow BDAT"),
  binaryMimeNeedsBdat: reply(503, "5.5.1", "Error: BODY=BINARYMIME requires BDAT"),
  bdatSyntax: reply(501, "5.5.4", "Syntax: BDAT size [LAST]"),
  alreadyTls: reply(503, "5.5.1", "Error: TLS already active"),
  tlsNotAvailable: reply(454, "4.7.0", "TLS not available"),
  tlsRequired: reply(530, "5.7.0", "Must issue a STARTTLS command first"),
  relayDenied: reply(550, "5.7.1", "Relay access denied"),
  unknownUser: reply(550, "5.1.1", "Recipient address rejected: User unknown"),
  tooManyRecipients: reply(452, "4.5.3", "Error: too many recipients"),
  messageTooBig: reply(552, "5.3.4", "Error: message exceeds fixed maximum message size"),
  localError: reply(451, "4.3.0", "Error: local error in processing, try again later"),
  storageFull: reply(452, "4.3.1", "Error: insufficient system storage, try again later"),
  timeout: reply(421, "4.4.2", "Error: timeout exceeded, closing connection"),
  tooManyErrors: reply(421, "4.7.0", "Error: too many errors, closing connection"),
  // Postfix's answer to HTTP and proxy verbs sent at an SMTP port (smtpd_forbidden_commands).
  forbiddenCommand: reply(221, "2.7.0", "Error: I can break rules, too. Goodbye."),
  messageSizeExceedsLimit: reply(552, "5.3.4", "Message size exceeds fixed maximum message size"),
  tooManyConnections: reply(421, "4.7.0", "Error: too many connections, try again later"),
  tooManyConnectionsFromYou: reply(
    421,
    "4.7.0",
    "Error: too many connections from your address, try again later",
  ),
  earlyTalker: reply(554, "5.5.1", "Error: talking before the greeting is not allowed"),
  shuttingDown: reply(421, "4.3.2", "Service shutting down, closing connection"),
  // Postfix's reply to a client that did not wait where RFC 2920 says it must.
  pipeliningViolation: reply(554, "5.5.0", "Error: SMTP protocol synchronization"),
} as const satisfies Record<string, Reply>;

/** The name of one fixed reply. */
export type ReplyName = keyof typeof REPLIES;

/** The greeting, sent when a client connects (RFC 5321 4.3.1). */
export function greeting(hostname: string): Reply {
  return { code: 220, lines: [`${hostname} ESMTP Letterbox`] };
}

/** The reply to HELO (RFC 5321 4.1.1.1). */
export function heloReply(hostname: string): Reply {
  return { code: 250, lines: [hostname] };
}

/** The reply to EHLO: our name, then one extension keyword per line (RFC 5321 4.1.1.1). */
export function ehloReply(hostname: string, extensions: readonly string[]): Reply {
  return { code: 250, lines: [hostname, ...extensions] };
}

/** The reply after a message is stored: the queue id lets operators find it in the logs. */
export function queuedReply(id: string): Reply {
  return reply(250, "2.0.0", `Ok: queued as ${id}`);
}

/** The reply to a BDAT chunk that is not the last (RFC 3030 2). */
export function chunkReply(size: number): Reply {
  return reply(250, "2.0.0", `${size} octets received`);
}

/** The reply to a MAIL or RCPT parameter given twice with different values. */
export function conflictingParameterReply(parameter: string): Reply {
  return reply(501, "5.5.4", `Syntax error: conflicting ${parameter} parameters`);
}

/**
 * Formats a reply as the CRLF-terminated lines that go on the wire. Each line
 * of a multi-line reply repeats the enhanced code (RFC 2034 section 4).
 *
 * @example
 * ```ts
 * formatReply(REPLIES.bye); // "221 2.0.0 Bye\r\n"
 * ```
 */
export function formatReply(r: Reply): string {
  const prefix = r.enhanced ? `${r.enhanced} ` : "";
  const last = r.lines.length - 1;
  let text = "";
  for (let i = 0; i <= last; i++) {
    text += `${r.code}${i === last ? " " : "-"}${prefix}${r.lines[i]}\r\n`;
  }
  return text;
}
