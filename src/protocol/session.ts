/**
 * The SMTP protocol state machine (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
 * SMTPUTF8, ENHANCEDSTATUSCODES and STARTTLS). It turns one command line into
 * one {@link Action}; it knows nothing of sockets, TLS libraries or disks.
 * The connection carries out each action and reports back.
 *
 * @module
 */

import { type Address, formatAddress } from "./address.ts";
import {
  type BodyType,
  hasControlCharacters,
  parseBdatArgument,
  parseCommandLine,
  type ParseFailure,
  parseHeloArgument,
  parseMailArgument,
  parseRcptArgument,
} from "./commands.ts";
import {
  chunkReply,
  conflictingParameterReply,
  ehloReply,
  heloReply,
  queuedReply,
  REPLIES,
  type Reply,
} from "./replies.ts";

/** What the session needs to know about the server it speaks for. */
export interface SessionOptions<R extends RoutedRecipient = RoutedRecipient> {
  /** Our host name, for the greeting, EHLO and Received. */
  readonly hostname: string;
  /** Largest message accepted, advertised as SIZE. */
  readonly maxMessageSize: number;
  /** Recipients per transaction before 452 4.5.3. */
  readonly maxRecipients: number;
  /** Bad commands before the session ends with 421 4.7.0. */
  readonly maxErrors: number;
  /** True when STARTTLS can be offered on this connection. */
  readonly tlsAvailable: boolean;
  /** True when MAIL, RCPT and DATA must wait for TLS (530 5.7.0). */
  readonly requireTls: boolean;
  /** True when the connection began in TLS (an implicit-TLS listener). */
  readonly secure: boolean;
  /**
   * Decides a recipient once: its route (where its copies go, kept in the
   * transaction for the end of DATA), or the reply that refuses it (domain
   * not ours, unknown user, unsafe for a path, ...).
   */
  readonly routeRecipient: (recipient: Address) => R | Reply;
  /**
   * True when a routed recipient must still be confirmed by the next hop
   * (LMTP's RCPT, answered in real time): RCPT then returns a `verify`
   * action, and {@link Session.recipientVerified} finishes it.
   */
  readonly verifiesRecipients?: boolean;
}

/** What the session keeps of an accepted recipient: the route decided at RCPT. */
export interface RoutedRecipient {
  /** The recipient as the client gave it. */
  readonly recipient: Address;
}

/** One mail transaction: from MAIL to the end of DATA (RFC 5321 3.3). */
export interface Transaction<R extends RoutedRecipient = RoutedRecipient> {
  /** The reverse-path; `null` for the null sender `<>`. */
  readonly sender: Address | null;
  /** The routes of the accepted recipients, in order, without duplicates. */
  readonly routes: R[];
  /** True when MAIL carried SMTPUTF8. */
  readonly smtpUtf8: boolean;
  /** The BODY= value from MAIL, if any. */
  readonly body?: BodyType;
  /** True once a BDAT chunk was accepted: the message comes in chunks (RFC 3030), not DATA. */
  chunked: boolean;
}

/** What the client has told us about itself, for trace headers. */
export interface Greeting {
  /** The EHLO or HELO argument. */
  readonly name: string;
  /** True after EHLO, false after HELO. */
  readonly extended: boolean;
}

/** What the connection must do with a command, decided by the session. */
export type Action<R extends RoutedRecipient = RoutedRecipient> =
  /** Send the reply and read the next command. */
  | { readonly kind: "reply"; readonly reply: Reply }
  /** Send the reply and close the connection. */
  | { readonly kind: "close"; readonly reply: Reply }
  /** Send the reply, drop buffered input, do the TLS handshake, then call {@link Session.tlsStarted}. */
  | { readonly kind: "start-tls"; readonly reply: Reply }
  /** Send the 354 reply, read the message, then call {@link Session.finishData}. */
  | { readonly kind: "data"; readonly reply: Reply; readonly transaction: Transaction<R> }
  /**
   * Read exactly `size` octets (RFC 3030 2). With a `transaction`, they are the
   * message's next chunk: reply with {@link Session.chunkReceived}, or after the
   * last with {@link Session.finishData}. Without one, they are read and dropped
   * to stay in step with the client, then `reply` (the refusal) is sent.
   */
  /**
   * Confirm `route` with the next hop (it passed our own routing), then call
   * {@link Session.recipientVerified} with the refusal, if any, and send the
   * reply of the action it returns.
   */
  | {
    readonly kind: "verify";
    readonly reply: Reply;
    readonly transaction: Transaction<R>;
    readonly route: R;
  }
  | {
    readonly kind: "chunk";
    readonly size: number;
    readonly last: boolean;
    readonly transaction?: Transaction<R>;
    readonly reply: Reply;
  };

/** How a DATA section ended, as the pipeline reports it to the session. */
export type DataOutcome =
  | { readonly kind: "queued"; readonly id: string }
  | { readonly kind: "too-big" }
  /** Not stored: a check refused it or storing failed; the reply says which and how. */
  | { readonly kind: "refused"; readonly reply: Reply };

// HTTP and proxy verbs: a browser or a proxy probe, not a mail client (Postfix's
// smtpd_forbidden_commands).
const FORBIDDEN_VERBS = new Set(["GET", "POST", "HEAD", "PUT", "CONNECT"]);

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * What a command needs before it is dispatched: a greeting first (RFC 5321
 * 4.1.4), and, with --require-tls, TLS (RFC 3207 4: 530 5.7.0). One table,
 * checked in one place, instead of a check at the top of each handler.
 */
const GATES: ReadonlyMap<string, { readonly needsGreeting: boolean; readonly needsTls: boolean }> =
  new Map([
    ["MAIL", { needsGreeting: true, needsTls: true }],
    ["RCPT", { needsGreeting: true, needsTls: true }],
    ["DATA", { needsGreeting: true, needsTls: true }],
  ]);

/** The state of one SMTP session (one connection, across STARTTLS). */
export class Session<R extends RoutedRecipient = RoutedRecipient> {
  #options: SessionOptions<R>;
  #secure: boolean;
  #greeting: Greeting | undefined;
  #transaction: Transaction<R> | undefined;
  #errors = 0;

  /** Creates a session in the state right after our greeting. */
  constructor(options: SessionOptions<R>) {
    this.#options = options;
    this.#secure = options.secure;
  }

  /** True once the connection is protected by TLS. */
  get secure(): boolean {
    return this.#secure;
  }

  /** The client's EHLO/HELO, once it sent one. */
  get greeting(): Greeting | undefined {
    return this.#greeting;
  }

  /** Bad commands so far. */
  get errors(): number {
    return this.#errors;
  }

  /** Handles one command line (terminator removed) and says what to do. */
  handleLine(bytes: Uint8Array): Action<R> {
    let line: string;
    try {
      line = utf8.decode(bytes);
    } catch {
      return this.#fail(REPLIES.badBytes);
    }
    if (hasControlCharacters(line)) return this.#fail(REPLIES.badBytes);
    return this.handle(line);
  }

  /** Answers a command line that was longer than the limit. */
  lineTooLong(): Action<R> {
    return this.#fail(REPLIES.lineTooLong);
  }

  /** Handles one decoded command line. */
  handle(line: string): Action<R> {
    const { verb, argument } = parseCommandLine(line);
    // Before the gate: a refused BDAT must still have its octets read.
    if (verb === "BDAT") return this.#bdat(argument);
    const gate = GATES.get(verb);
    if (gate) {
      if (gate.needsGreeting && !this.#greeting) return this.#fail(REPLIES.badSequenceHelo);
      if (gate.needsTls && this.#options.requireTls && !this.#secure) {
        return this.#fail(REPLIES.tlsRequired);
      }
    }
    switch (verb) {
      case "EHLO":
        return this.#hello(argument, true);
      case "HELO":
        return this.#hello(argument, false);
      case "MAIL":
        return this.#mail(argument);
      case "RCPT":
        return this.#rcpt(argument);
      case "DATA":
        return this.#data(argument);
      case "RSET":
        if (argument !== "") return this.#fail(REPLIES.noArguments);
        this.#transaction = undefined;
        return this.#ok(REPLIES.resetOk);
      case "NOOP":
        return this.#ok(REPLIES.ok);
      case "QUIT":
        return { kind: "close", reply: REPLIES.bye };
      case "VRFY":
        if (argument === "") return this.#fail(REPLIES.syntax);
        return this.#ok(REPLIES.cannotVerify);
      case "HELP":
        return this.#ok(REPLIES.help);
      case "STARTTLS":
        return this.#startTls(argument);
      default:
        if (FORBIDDEN_VERBS.has(verb)) return { kind: "close", reply: REPLIES.forbiddenCommand };
        return this.#fail(REPLIES.unknownCommand);
    }
  }

  /** Forgets everything said before the handshake (RFC 3207 4.2). */
  tlsStarted(): void {
    this.#secure = true;
    this.#greeting = undefined;
    this.#transaction = undefined;
  }

  /** Ends the DATA phase with the delivery's outcome; the transaction is over either way. */
  finishData(outcome: DataOutcome): Reply {
    this.#transaction = undefined;
    switch (outcome.kind) {
      case "queued":
        return queuedReply(outcome.id);
      case "too-big":
        return REPLIES.messageTooBig;
      case "refused":
        return outcome.reply;
    }
  }

  // EHLO/HELO, in any state -> greeted, with no transaction (RFC 5321 4.1.4).
  #hello(argument: string, extended: boolean): Action<R> {
    const name = parseHeloArgument(argument);
    if (name === undefined) return this.#fail(REPLIES.heloSyntax);
    this.#greeting = { name, extended };
    this.#transaction = undefined;
    const { hostname } = this.#options;
    if (!extended) return this.#ok(heloReply(hostname));
    const extensions = [
      "PIPELINING",
      `SIZE ${this.#options.maxMessageSize}`,
      "8BITMIME",
      "SMTPUTF8",
      "ENHANCEDSTATUSCODES",
      "CHUNKING",
      "BINARYMIME",
    ];
    if (this.#options.tlsAvailable && !this.#secure) extensions.push("STARTTLS");
    return this.#ok(ehloReply(hostname, extensions));
  }

  // greeted -> in a transaction, waiting for RCPT.
  #mail(argument: string): Action<R> {
    if (this.#transaction) return this.#fail(REPLIES.badSequenceNestedMail);
    const parsed = parseMailArgument(argument);
    if (!parsed.ok) {
      return this.#fail(failureReply(parsed, REPLIES.mailSyntax, REPLIES.badSenderAddress));
    }
    const { sender, size, body, smtpUtf8 } = parsed.value;
    if (size !== undefined && size > this.#options.maxMessageSize) {
      return this.#fail(REPLIES.messageSizeExceedsLimit);
    }
    this.#transaction = { sender, routes: [], smtpUtf8, body, chunked: false };
    return this.#ok(REPLIES.senderOk);
  }

  // in a transaction -> one more recipient.
  #rcpt(argument: string): Action<R> {
    const transaction = this.#transaction;
    if (!transaction) return this.#fail(REPLIES.badSequenceNeedMail);
    const parsed = parseRcptArgument(argument, transaction.smtpUtf8);
    if (!parsed.ok) {
      return this.#fail(
        failureReply(parsed, REPLIES.rcptSyntax, REPLIES.badRecipientAddress),
      );
    }
    const recipient = parsed.value;
    // Not an error: RFC 5321 4.5.3.1.10 says the client sends the rest later.
    if (transaction.routes.length >= this.#options.maxRecipients) {
      return { kind: "reply", reply: REPLIES.tooManyRecipients };
    }
    const key = formatAddress(recipient).toLowerCase();
    if (transaction.routes.some((known) => formatAddress(known.recipient).toLowerCase() === key)) {
      return this.#ok(REPLIES.recipientOk);
    }
    const route = this.#options.routeRecipient(recipient);
    if ("code" in route) return this.#fail(route);
    if (this.#options.verifiesRecipients) {
      return { kind: "verify", reply: REPLIES.recipientOk, transaction, route };
    }
    transaction.routes.push(route);
    return this.#ok(REPLIES.recipientOk);
  }

  /**
   * The next hop's word on a recipient of a `verify` action: undefined
   * accepts it; a reply refuses it (and counts as an error when it is a 5xx).
   */
  recipientVerified(transaction: Transaction<R>, route: R, refusal?: Reply): Action<R> {
    if (refusal) return refusal.code >= 500 ? this.#fail(refusal) : this.#ok(refusal);
    // The transaction may have ended meanwhile only if the caller broke the order.
    if (this.#transaction === transaction) transaction.routes.push(route);
    return this.#ok(REPLIES.recipientOk);
  }

  // in a transaction with recipients -> reading the message.
  #data(argument: string): Action<R> {
    if (argument !== "") return this.#fail(REPLIES.noArguments);
    const transaction = this.#transaction;
    if (!transaction) return this.#fail(REPLIES.badSequenceNeedMail);
    if (transaction.routes.length === 0) return this.#fail(REPLIES.badSequenceNeedRcpt);
    // RFC 3030 2 and 3: DATA cannot follow BDAT, nor carry a BINARYMIME body.
    if (transaction.chunked) return this.#fail(REPLIES.dataAfterBdat);
    if (transaction.body === "BINARYMIME") return this.#fail(REPLIES.binaryMimeNeedsBdat);
    return { kind: "data", reply: REPLIES.startData, transaction };
  }

  // in a transaction with recipients -> one more chunk of the message (RFC 3030).
  #bdat(argument: string): Action<R> {
    const chunk = parseBdatArgument(argument);
    // Without a size the octets cannot be found: answered at once, as any syntax error.
    if (!chunk) return this.#fail(REPLIES.bdatSyntax);
    const refuse = (reply: Reply): Action<R> => {
      const failed = this.#fail(reply);
      return failed.kind === "close" ? failed : { kind: "chunk", ...chunk, reply };
    };
    if (!this.#greeting) return refuse(REPLIES.badSequenceHelo);
    if (this.#options.requireTls && !this.#secure) return refuse(REPLIES.tlsRequired);
    const transaction = this.#transaction;
    if (!transaction) return refuse(REPLIES.badSequenceNeedMail);
    if (transaction.routes.length === 0) return refuse(REPLIES.badSequenceNeedRcpt);
    transaction.chunked = true;
    return { kind: "chunk", ...chunk, transaction, reply: chunkReply(chunk.size) };
  }

  /** The reply to a chunk that is not the last: its octets arrived. */
  chunkReceived(size: number): Reply {
    return chunkReply(size);
  }

  /** The transaction in progress, if any (a chunked message's owner checks it is still the same). */
  get transaction(): Transaction<R> | undefined {
    return this.#transaction;
  }

  // any state, plain connection -> TLS handshake, then a fresh session.
  #startTls(argument: string): Action<R> {
    if (argument !== "") return this.#fail(REPLIES.noArguments);
    if (this.#secure) return this.#fail(REPLIES.alreadyTls);
    if (!this.#options.tlsAvailable) return this.#fail(REPLIES.tlsNotAvailable);
    return { kind: "start-tls", reply: REPLIES.readyForTls };
  }

  #ok(reply: Reply): Action<R> {
    return { kind: "reply", reply };
  }

  // Every refused command counts against the error budget; past it we hang up,
  // as Postfix does with smtpd_hard_error_limit.
  #fail(reply: Reply): Action<R> {
    this.#errors++;
    if (this.#errors >= this.#options.maxErrors) {
      return { kind: "close", reply: REPLIES.tooManyErrors };
    }
    return { kind: "reply", reply };
  }
}

function failureReply(
  { failure, parameter }: { failure: ParseFailure; parameter?: string },
  syntax: Reply,
  badAddress: Reply,
): Reply {
  switch (failure) {
    case "unknown-parameter":
      return REPLIES.unknownParameter;
    case "conflicting-parameter":
      return conflictingParameterReply(parameter ?? "");
    case "needs-smtputf8":
      return REPLIES.needsSmtpUtf8;
    case "syntax":
      return syntax;
    case "too-long":
    case "bad-address":
      return badAddress;
  }
}
