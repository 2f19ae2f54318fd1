/**
 * Drives one client: greets, reads commands, lets the session decide, carries
 * out its actions (replies, DATA, STARTTLS, close), enforces timeouts, and
 * streams each message into delivery.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type tls from "node:tls";
import { formatAddress } from "./commands.ts";
import {
  type Delivery,
  type DeliveryTransaction,
  type Envelope,
  isStorageFull,
  type StoredCopy,
} from "./delivery/delivery.ts";
import { inspectMessage, MessagePrefix } from "./inspect.ts";
import { LIMITS } from "./limits.ts";
import type { Metrics } from "./metrics.ts";
import type { HookQueue } from "./hooks/queue.ts";
import { LineReader } from "./line_reader.ts";
import { formatReply, greeting, REPLIES, type Reply } from "./replies.ts";
import { type DataOutcome, Session, type SessionOptions, type Transaction } from "./session.ts";
import { ReadTimeoutError, type Transport } from "./transport.ts";

/** What every connection of a listener shares. */
export interface ConnectionOptions {
  /** Session settings, except `secure` and `tlsAvailable`, which depend on the connection. */
  readonly session: Omit<SessionOptions, "secure" | "tlsAvailable">;
  /** Where messages go. */
  readonly delivery: Delivery;
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
  /** The logger; each connection adds its session id. */
  readonly log: Logger;
  /** Where counts go, when metrics are on. */
  readonly metrics?: Metrics;
  /** The hook queue, when hooks are configured. */
  readonly hooks?: HookQueue;
}

const encoder = new TextEncoder();
let queueCounter = 0;

/** A queue id: time, a counter and randomness, short enough to read aloud from a log. */
export function newQueueId(): string {
  queueCounter = (queueCounter + 1) % 1296;
  const random = crypto.getRandomValues(new Uint8Array(3));
  return Date.now().toString(36).toUpperCase() +
    queueCounter.toString(36).toUpperCase().padStart(2, "0") +
    Array.from(random, (b) => (b % 36).toString(36)).join("").toUpperCase();
}

/** A short random id for one connection, on every log line it writes. */
export function newSessionId(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(5)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/** One client connection from accept to close. */
export class Connection {
  readonly id: string = newSessionId();
  readonly #transport: Transport;
  readonly #options: ConnectionOptions;
  readonly #log: Logger;
  #reader: LineReader;
  #session: Session | undefined;
  #pending = "";
  #inData = false;
  #shuttingDown = false;

  /** Prepares to serve a freshly accepted transport. */
  constructor(transport: Transport, options: ConnectionOptions) {
    this.#transport = transport;
    this.#options = options;
    this.#log = options.log.with({ session: this.id });
    this.#reader = new LineReader(transport);
  }

  /**
   * Asks the connection to end: an idle one gets 421 4.3.2 at once; one in
   * DATA finishes its message, gets its reply, then 421.
   */
  shutdown(): void {
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    if (!this.#inData) {
      this.#transport.write(encoder.encode(formatReply(REPLIES.shuttingDown)))
        .catch(() => {})
        .finally(() => this.#transport.close());
    }
  }

  /** Serves the client until it quits, times out, misbehaves or goes away. Never throws. */
  async serve(): Promise<void> {
    const transport = this.#transport;
    const started = performance.now();
    this.#log.info("Connection from {peer}", {
      peer: `${transport.remoteAddress}:${transport.remotePort}`,
    });
    try {
      await this.#run();
    } catch (error) {
      if (error instanceof ReadTimeoutError) {
        this.#log.info("Timeout: closing with 421 4.4.2");
        await this.#send(REPLIES.timeout).catch(() => {});
      } else {
        this.#log.debug("Connection error: {error}", { error: describe(error) });
      }
    } finally {
      transport.close();
      this.#log.info("Disconnected {peer} after {ms} ms, tls={tls}", {
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
        return await this.#send(REPLIES.earlyTalker);
      }
    }
    await this.#send(greeting(options.session.hostname));
    for (;;) {
      if (this.#shuttingDown) return await this.#send(REPLIES.shuttingDown);
      transport.deadline = Date.now() + options.commandTimeout;
      const read = await this.#reader.readLine(LIMITS.maxCommandLine);
      if (read.kind === "eof") return;
      const session = this.#session;
      const action = read.kind === "too-long"
        ? session.lineTooLong()
        : session.handleLine(read.line);
      if (action.reply.code >= 400) {
        options.metrics?.rejectedCommands.inc({ code: String(action.reply.code) });
        this.#log.info("Rejected {command}: {reply}", {
          command: read.kind === "line" ? commandForLog(read.line) : "(line too long)",
          reply: formatReply(action.reply).trimEnd(),
        });
      }
      this.#pending += formatReply(action.reply);
      switch (action.kind) {
        case "reply":
          // RFC 2920: hold replies while pipelined commands wait in the buffer.
          if (this.#reader.buffered === 0) await this.#flush();
          break;
        case "close":
          await this.#flush();
          return;
        case "start-tls": {
          await this.#flush();
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
          await this.#flush();
          const reply = await this.#receive(action.transaction);
          if (reply === undefined) return;
          this.#pending += formatReply(reply);
          if (this.#reader.buffered === 0 || this.#shuttingDown) await this.#flush();
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
      this.#options.metrics?.tlsHandshakes.inc({ result: "ok" });
    } catch (error) {
      this.#options.metrics?.tlsHandshakes.inc({ result: "failed" });
      throw error;
    }
  }

  #newSession(): Session {
    return new Session({
      ...this.#options.session,
      secure: this.#transport.tls !== undefined,
      tlsAvailable: this.#options.tlsContext() !== undefined,
    });
  }

  // Reads one message into delivery; the reply, or undefined when the client went away.
  async #receive(transaction: Transaction): Promise<Reply | undefined> {
    const session = this.#session!;
    const transport = this.#transport;
    const started = performance.now();
    const envelope: Envelope = {
      id: newQueueId(),
      sender: transaction.sender,
      recipients: [...transaction.recipients],
      clientAddress: transport.remoteAddress,
      heloName: session.greeting?.name ?? "unknown",
      extended: session.greeting?.extended ?? false,
      tls: transport.tls,
      smtpUtf8: transaction.smtpUtf8,
      receivedAt: new Date(),
    };
    let delivery: DeliveryTransaction | undefined;
    let failure: unknown;
    try {
      delivery = await this.#options.delivery.begin(envelope);
    } catch (error) {
      failure = error;
    }
    const prefix = new MessagePrefix();
    transport.deadline = Date.now() + this.#options.dataTimeout;
    transport.idleTimeout = LIMITS.dataReadGap;
    transport.bulk = true;
    let outcome: DataOutcome;
    let size = 0;
    let endOfData = 0;
    let wireBytes = 0;
    try {
      const result = await this.#reader.readData(async (content, lines) => {
        prefix.add(content);
        size += content.length;
        if (delivery && failure === undefined) {
          // A failed write ends storing, not reading: the client still gets
          // its reply after the end of data.
          await delivery.write(content, lines).catch((error) => failure = error);
        }
      }, this.#options.session.maxMessageSize);
      endOfData = performance.now();
      if (result.kind === "end") wireBytes = result.wireBytes;
      if (result.kind === "eof") {
        await delivery?.abort();
        this.#log.info("Lost connection in DATA, message {id} discarded", { id: envelope.id });
        return undefined;
      }
      if (result.tooBig) {
        outcome = { kind: "too-big" };
      } else if (failure === undefined && delivery) {
        try {
          const copies = await delivery.commit();
          outcome = { kind: "queued", id: envelope.id };
          await this.#enqueueHooks(envelope, copies);
        } catch (error) {
          failure = error;
          outcome = { kind: "local-error" };
        }
      } else {
        outcome = { kind: "local-error" };
      }
      if (outcome.kind !== "queued") await delivery?.abort();
    } catch (error) {
      await delivery?.abort();
      throw error;
    } finally {
      this.#inData = false;
      transport.idleTimeout = Infinity;
      transport.bulk = false;
    }
    if (failure !== undefined) {
      if (isStorageFull(failure)) outcome = { kind: "storage-full" };
      this.#log.error("Delivery of {id} failed: {error}", {
        id: envelope.id,
        error: describe(failure),
      });
    }
    const reply = session.finishData(outcome);
    const metrics = this.#options.metrics;
    if (metrics) {
      metrics.messages.inc({ code: String(reply.code) });
      metrics.receivedBytes.inc({}, wireBytes);
      metrics.recipientsPerMessage.observe(envelope.recipients.length);
      if (outcome.kind === "queued") {
        metrics.deliverySeconds.observe((performance.now() - endOfData) / 1000);
      }
    }
    if (outcome.kind === "queued") {
      this.#logDelivered(envelope, size, prefix, performance.now() - started);
    } else {
      this.#log.info("Message {id} refused: {reply}", {
        id: envelope.id,
        reply: formatReply(reply).trimEnd(),
      });
    }
    return reply;
  }

  // Hook jobs are on disk before the 250. A failure here cannot take the
  // message back (it is in Maildir already), so it is logged, not answered.
  async #enqueueHooks(envelope: Envelope, copies: StoredCopy[]): Promise<void> {
    const hooks = this.#options.hooks;
    if (!hooks) return;
    try {
      await hooks.enqueue({
        queueId: envelope.id,
        sender: envelope.sender ? formatAddress(envelope.sender) : "",
        recipients: envelope.recipients.map(formatAddress),
        clientAddress: envelope.clientAddress,
        heloName: envelope.heloName,
        tls: envelope.tls ? `${envelope.tls.protocol} ${envelope.tls.cipher}` : null,
        receivedAt: envelope.receivedAt.toISOString(),
        files: copies.map((copy) => ({
          maildir: copy.maildir,
          name: copy.path.slice(copy.path.lastIndexOf("/") + 1),
        })),
      });
    } catch (error) {
      this.#log.error("Could not queue hooks for {id}: {error}", {
        id: envelope.id,
        error: describe(error),
      });
    }
  }

  #logDelivered(envelope: Envelope, size: number, prefix: MessagePrefix, ms: number): void {
    inspectMessage(prefix.bytes(), prefix.truncated).then((summary) => {
      this.#log.info(
        "Delivered {id} from {sender} to {recipients}, {size} bytes, message-id {messageId}, " +
          "subject {subject}, from {from}, {attachments} attachments, in {ms} ms",
        {
          id: envelope.id,
          sender: envelope.sender ? formatAddress(envelope.sender) : "<>",
          recipients: envelope.recipients.map(formatAddress).join(","),
          size,
          messageId: summary.messageId,
          subject: summary.subject,
          from: summary.from,
          attachments: summary.truncated ? `${summary.attachments}+` : summary.attachments,
          ms: Math.round(ms),
        },
      );
    });
  }

  async #send(reply: Reply): Promise<void> {
    this.#pending += formatReply(reply);
    await this.#flush();
  }

  async #flush(): Promise<void> {
    if (this.#pending === "") return;
    const text = this.#pending;
    this.#pending = "";
    await this.#transport.write(encoder.encode(text));
  }
}

// Commands are logged without their arguments past a bound, and never raw.
const logDecoder = new TextDecoder();

function commandForLog(line: Uint8Array): string {
  return logDecoder.decode(line.subarray(0, 100));
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
