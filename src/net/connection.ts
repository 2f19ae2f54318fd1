/**
 * Drives one client: greets, reads commands, lets the session decide, carries
 * out its actions (replies, DATA, STARTTLS, close) and enforces timeouts. Each
 * recipient and each DATA stream goes to the pipeline; this file knows
 * nothing of storage, hooks or metrics.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type tls from "node:tls";
import { type Envelope, newQueueId } from "../pipeline/envelope.ts";
import type { Answer, Pipeline } from "../pipeline/pipeline.ts";
import type { Route } from "../pipeline/route.ts";
import { LIMITS } from "../limits.ts";
import { describeError, logLine, LogTemplate } from "../log.ts";
import { ChunkDecoder, LineReader } from "../protocol/line_reader.ts";
import type { OpenMessage } from "../pipeline/message.ts";
import { formatReply, greeting, REPLIES } from "../protocol/replies.ts";
import {
  type Action,
  Session,
  type SessionOptions,
  type Transaction,
} from "../protocol/session.ts";
import { ReplyWriter } from "./reply_writer.ts";
import { ReadTimeoutError, type Transport } from "./transport.ts";

// Logged for every connection: parsed once (see LogTemplate).
const CONNECTED = new LogTemplate("Connection from {peer}");
const DISCONNECTED = new LogTemplate("Disconnected {peer} after {ms} ms, tls={tls}");

/** What connections and the server report as they go, for metrics. */
export interface ConnectionObserver {
  /** A connection was accepted. */
  connectionOpened(): void;
  /** A connection was refused by a connection limit. */
  connectionRefused(): void;
  /** An accepted connection ended. */
  connectionClosed(): void;
  /** accept() failed: about one connection (skipped), or for want of resources (backed off). */
  acceptFailed(kind: "connection" | "resources"): void;
  /** A command was answered with a 4xx or 5xx reply. */
  commandRejected(code: number): void;
  /** A TLS handshake ended. */
  tlsHandshake(ok: boolean): void;
  /** A client talked before the greeting and was closed. */
  earlyTalker(): void;
  /** A connection was closed with 421 4.4.2 for waiting too long, in commands or in DATA. */
  timeout(phase: "command" | "data"): void;
}

/** What every connection of a listener shares. */
export interface ConnectionOptions {
  /** Session settings, except those that depend on the connection or come from the pipeline. */
  readonly session: Omit<SessionOptions<Route>, "secure" | "tlsAvailable" | "routeRecipient">;
  /** Where recipients are routed and messages go. */
  readonly pipeline: Pipeline;
  /** The current TLS context, or undefined when TLS is off. */
  readonly tlsContext: () => tls.SecureContext | undefined;
  /** True for implicit-TLS listeners: the handshake comes before the greeting. */
  readonly implicitTls: boolean;
  /** Waiting for one command line, in milliseconds. */
  readonly commandTimeout: number;
  /** The whole DATA phase, in milliseconds. */
  readonly dataTimeout: number;
  /** Wait before the greeting, in milliseconds, to catch early talkers; 0 = off. */
  readonly greetDelay: number;
  /** Close with 554 5.5.0 when message content arrives before our 354 (RFC 2920 3.1). */
  readonly rejectUnauthPipelining: boolean;
  /** The logger; each connection adds its session id. */
  readonly log: Logger;
  /** Told about rejected commands and TLS handshakes, when metrics are on. */
  readonly observer?: ConnectionObserver;
}

/** A short random id for one connection, on every log line it writes. */
export function newSessionId(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(5)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/** A message arriving in BDAT chunks, between its first chunk and its last. */
interface ChunkedMessage {
  readonly transaction: Transaction<Route>;
  readonly envelope: Envelope;
  readonly message: OpenMessage;
  readonly decoder: ChunkDecoder;
  wireBytes: number;
  tooBig: boolean;
}

/** One client connection from accept to close. */
export class Connection {
  readonly id: string = newSessionId();
  readonly #transport: Transport;
  readonly #options: ConnectionOptions;
  readonly #log: Logger;
  readonly #replies: ReplyWriter;
  #reader: LineReader;
  #session: Session<Route> | undefined;
  #chunked: ChunkedMessage | undefined;
  // The transaction the pipeline was last told of, to tell it when it ends.
  #transaction: Transaction<Route> | undefined;
  #inData = false;
  // Set while a message is read, left set when that read fails: which timeout it was.
  #readingMessage = false;
  #shuttingDown = false;

  /** Prepares to serve a freshly accepted transport. */
  constructor(transport: Transport, options: ConnectionOptions) {
    this.#transport = transport;
    this.#options = options;
    this.#log = options.log.with({ session: this.id });
    this.#reader = new LineReader(transport);
    this.#replies = new ReplyWriter(transport);
  }

  /**
   * Asks the connection to end: an idle one gets 421 4.3.2 at once; one in
   * DATA finishes its message, gets its reply, then 421.
   */
  shutdown(): void {
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    if (!this.#inData) {
      this.#replies.send(REPLIES.shuttingDown)
        .catch(() => {})
        .finally(() => this.#transport.close());
    }
  }

  /** Serves the client until it quits, times out, misbehaves or goes away. Never throws. */
  async serve(): Promise<void> {
    const transport = this.#transport;
    const started = performance.now();
    logLine(this.#log, "info", CONNECTED, {
      peer: `${transport.remoteAddress}:${transport.remotePort}`,
    });
    try {
      await this.#run();
    } catch (error) {
      if (error instanceof ReadTimeoutError) {
        this.#log.info("Timeout: closing with 421 4.4.2");
        this.#options.observer?.timeout(this.#readingMessage ? "data" : "command");
        await this.#replies.send(REPLIES.timeout).catch(() => {});
      } else {
        this.#log.debug("Connection error: {error}", { error: describeError(error) });
      }
    } finally {
      // A chunked message the client never finished: nothing of it stays.
      await this.#chunked?.message.abort();
      this.#chunked = undefined;
      if (this.#transaction) await this.#options.pipeline.ended(this.#transaction)?.catch(() => {});
      this.#transaction = undefined;
      transport.close();
      logLine(this.#log, "info", DISCONNECTED, {
        peer: transport.remoteAddress,
        ms: Math.round(performance.now() - started),
        tls: transport.tls ? transport.tls.protocol : "no",
      });
    }
  }

  async #run(): Promise<void> {
    const options = this.#options;
    const transport = this.#transport;
    if (options.implicitTls) {
      const context = options.tlsContext();
      if (!context) throw new Error("No TLS certificate loaded");
      await this.#startTls(context);
    }
    this.#session = this.#newSession();
    if (options.greetDelay > 0) {
      const before = await this.#beforeGreeting();
      if (before === "gone") return;
      if (before === "talked") {
        this.#log.info("Early talker: closing with 554 5.5.1");
        options.observer?.earlyTalker();
        return await this.#replies.send(REPLIES.earlyTalker);
      }
    }
    await this.#replies.send(greeting(options.session.hostname));
    for (;;) {
      if (this.#shuttingDown) return await this.#replies.send(REPLIES.shuttingDown);
      transport.deadline = Date.now() + options.commandTimeout;
      const read = await this.#reader.readLine(LIMITS.maxCommandLine);
      if (read.kind === "eof") return;
      const session = this.#session;
      let action = read.kind === "too-long" ? session.lineTooLong() : session.handleLine(read.line);
      if (action.kind === "verify") {
        // The next hop (LMTP) answers for the recipient before we do.
        const refusal = await options.pipeline.verify(action.transaction, action.route, this.#log);
        action = session.recipientVerified(action.transaction, action.route, refusal);
      }
      // RFC 2920 3.1: the client must wait for the 354 before sending the message.
      // Content already here did not; spamware does that (Postfix's reject_unauth_pipelining).
      if (
        action.kind === "data" && options.rejectUnauthPipelining && this.#reader.buffered > 0
      ) {
        this.#log.info("Message content before the 354: closing with 554 5.5.0");
        action = { kind: "close", reply: REPLIES.pipeliningViolation };
      }
      if (action.reply.code >= 400) {
        options.observer?.commandRejected(action.reply.code);
        this.#log.info("Rejected {command}: {reply}", {
          command: read.kind === "line" ? commandForLog(read.line) : "(line too long)",
          reply: formatReply(action.reply).trimEnd(),
        });
      }
      // RSET, EHLO, MAIL, STARTTLS: what the pipeline holds for an ended transaction goes.
      if (this.#transaction && session.transaction !== this.#transaction) {
        const ended = options.pipeline.ended(this.#transaction);
        if (ended) await ended;
      }
      this.#transaction = session.transaction;
      // A chunked message of an ended transaction is dropped.
      if (this.#chunked && session.transaction !== this.#chunked.transaction) {
        await this.#chunked.message.abort();
        this.#chunked = undefined;
      }
      if (action.kind === "chunk") {
        if (!await this.#chunk(action)) return;
        if (this.#reader.buffered === 0 || this.#shuttingDown) await this.#replies.flush();
        continue;
      }
      this.#replies.queue(action.reply);
      switch (action.kind) {
        case "reply":
          // RFC 2920: hold replies while pipelined commands wait in the buffer.
          if (this.#reader.buffered === 0) await this.#replies.flush();
          break;
        case "close":
          await this.#replies.flush();
          return;
        case "start-tls": {
          await this.#replies.flush();
          this.#reader.discardBuffered();
          const context = options.tlsContext();
          if (!context) return;
          await this.#startTls(context);
          this.#reader = new LineReader(transport);
          session.tlsStarted();
          this.#log.info("TLS started: {protocol} {cipher}", { ...transport.tls });
          break;
        }
        case "data": {
          // From the 354 on, a shutdown waits for this message to finish.
          this.#inData = true;
          await this.#replies.flush();
          const answer = await this.#receive(action.transaction);
          if (answer === undefined) return;
          await this.#answer(answer);
          break;
        }
      }
    }
  }

  // A client that sends before our greeting is not waiting for it, as RFC 5321
  // 3.1 requires: spambots pipelining blindly (what postscreen's pregreet test catches).
  async #beforeGreeting(): Promise<"quiet" | "talked" | "gone"> {
    const transport = this.#transport;
    transport.deadline = Date.now() + this.#options.greetDelay;
    try {
      return await transport.read() === null ? "gone" : "talked";
    } catch (error) {
      if (error instanceof ReadTimeoutError) return "quiet";
      throw error;
    }
  }

  async #startTls(context: tls.SecureContext): Promise<void> {
    try {
      await this.#transport.startTls(context, LIMITS.tlsHandshakeTimeout);
      this.#options.observer?.tlsHandshake(true);
    } catch (error) {
      this.#options.observer?.tlsHandshake(false);
      throw error;
    }
  }

  #newSession(): Session<Route> {
    const pipeline = this.#options.pipeline;
    return new Session<Route>({
      ...this.#options.session,
      routeRecipient: (recipient) => pipeline.route(recipient),
      verifiesRecipients: pipeline.verifiesRecipients,
      secure: this.#transport.tls !== undefined,
      tlsAvailable: this.#options.tlsContext() !== undefined,
    });
  }

  // Reads one BDAT chunk (RFC 3030) and queues its reply; false when the client went away.
  async #chunk(action: Extract<Action<Route>, { kind: "chunk" }>): Promise<boolean> {
    const session = this.#session!;
    const transport = this.#transport;
    transport.deadline = Date.now() + this.#options.dataTimeout;
    transport.idleTimeout = LIMITS.dataReadGap;
    transport.bulk = true;
    // From here to the chunk's reply, a shutdown waits, as it does in DATA.
    this.#inData = true;
    try {
      const transaction = action.transaction;
      if (!transaction) {
        // Refused, but its octets are read and dropped to stay in step with the client.
        if (await this.#reader.readExact(action.size, () => {}) === "eof") return false;
        this.#replies.queue(action.reply);
        return true;
      }
      let open = this.#chunked;
      if (!open) {
        const envelope = this.#envelope(transaction, "BDAT");
        open = this.#chunked = {
          transaction,
          envelope,
          message: await this.#options.pipeline.open(envelope),
          decoder: new ChunkDecoder(transaction.body === "BINARYMIME"),
          wireBytes: 0,
          tooBig: false,
        };
      }
      const chunked = open;
      const max = this.#options.session.maxMessageSize;
      const read = await this.#reader.readExact(action.size, async (part) => {
        chunked.wireBytes += part.length;
        // Past the limit the rest is read and dropped; 552 comes after the last chunk.
        if (chunked.wireBytes > max) chunked.tooBig = true;
        if (chunked.tooBig) return;
        const { output, lines } = chunked.decoder.decode(part);
        if (output.length > 0) await chunked.message.write(output, lines);
      });
      this.#log.debug("BDAT chunk of {size} octets{last} for {id}", {
        size: action.size,
        last: action.last ? " (LAST)" : "",
        id: chunked.envelope.id,
      });
      if (read === "eof") {
        this.#log.info("Lost connection in BDAT, message {id} discarded", {
          id: chunked.envelope.id,
        });
        return false;
      }
      if (!action.last) {
        this.#replies.queue(session.chunkReceived(action.size));
        return true;
      }
      const tail = chunked.decoder.flush();
      if (tail.output.length > 0 && !chunked.tooBig) {
        await chunked.message.write(tail.output, tail.lines);
      }
      this.#chunked = undefined;
      const answer = await this.#options.pipeline.finish(
        chunked.message,
        chunked.envelope,
        session,
        this.#log,
        chunked.wireBytes,
        chunked.tooBig,
      );
      await this.#answer(answer);
      return true;
    } finally {
      this.#inData = false;
      transport.idleTimeout = Infinity;
      transport.bulk = false;
    }
  }

  #envelope(transaction: Transaction<Route>, transfer: "DATA" | "BDAT"): Envelope {
    const session = this.#session!;
    const transport = this.#transport;
    return {
      id: newQueueId(),
      sender: transaction.sender,
      routes: [...transaction.routes],
      clientAddress: transport.remoteAddress,
      heloName: session.greeting?.name ?? "unknown",
      extended: session.greeting?.extended ?? false,
      tls: transport.tls,
      smtpUtf8: transaction.smtpUtf8,
      receivedAt: new Date(),
      transfer,
      transaction,
    };
  }

  // Sends a message's reply (held while pipelined commands wait) and writes
  // its log line: the write starts inside flush(), and the line follows it in
  // the same turn, off the client's path.
  async #answer(answer: Answer): Promise<void> {
    this.#replies.queue(answer.reply);
    const sent = this.#reader.buffered === 0 || this.#shuttingDown
      ? this.#replies.flush()
      : undefined;
    answer.report();
    await sent;
  }

  // Reads one message through the pipeline; the answer, or undefined when the client went away.
  async #receive(transaction: Transaction<Route>): Promise<Answer | undefined> {
    const session = this.#session!;
    const transport = this.#transport;
    const envelope: Envelope = this.#envelope(transaction, "DATA");
    transport.deadline = Date.now() + this.#options.dataTimeout;
    transport.idleTimeout = LIMITS.dataReadGap;
    transport.bulk = true;
    this.#readingMessage = true;
    try {
      const answer = await this.#options.pipeline.receive(
        this.#reader,
        envelope,
        session,
        this.#log,
      );
      this.#readingMessage = false;
      return answer;
    } finally {
      this.#inData = false;
      transport.idleTimeout = Infinity;
      transport.bulk = false;
    }
  }
}

// Commands are logged without their arguments past a bound, and never raw.
const logDecoder = new TextDecoder();

function commandForLog(line: Uint8Array): string {
  return logDecoder.decode(line.subarray(0, 100));
}
