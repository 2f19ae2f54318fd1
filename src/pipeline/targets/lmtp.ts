/**
 * The LMTP target (RFC 2033): messages go to an IMAP server's LMTP service
 * (Dovecot's), so that its Sieve filters, quotas and indexes see every
 * delivery and the mail store can live on other machines. As Postfix's
 * `lmtp` transport and maddy's `target.lmtp` do.
 *
 * A session with the LMTP server opens at the first recipient of a
 * transaction, and each of our RCPT replies waits for the server's own RCPT
 * (unknown users and full mailboxes are refused at RCPT, with its codes).
 * The message is held while it arrives (in memory up to a bound, then in a
 * spool file: checks may still add header fields above it), then sent with
 * our Received line, dot-stuffed. LMTP answers once per recipient; our 250
 * comes only when every one of them said 2xx.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import { concatBytes, headerEnd } from "../../bytes.ts";
import type { LmtpConnection, LmtpPool } from "../../lmtp/client.ts";
import { describeError } from "../../log.ts";
import { type FieldRemoval, removeFields, syncDirectory } from "../../maildir/maildir.ts";
import { type Address, formatAddress } from "../../protocol/address.ts";
import { formatReply, REPLIES, type Reply, reply } from "../../protocol/replies.ts";
import type { Envelope } from "../envelope.ts";
import { ReplyError } from "../failure.ts";
import type { Route } from "../route.ts";
import { receivedHeader } from "../trace.ts";
import type {
  Disposition,
  StoredCopy,
  Target,
  TargetTransaction,
  TransactionStart,
} from "./target.ts";

/** Replies of this target. */
export const LMTP_REPLIES = {
  unavailable: reply(451, "4.4.1", "Mail store temporarily unavailable, try again later"),
  partial: reply(
    451,
    "4.3.0",
    "Not every recipient's mail store took the message, try again later",
  ),
} as const;

/** One LMTP recipient: a final mailbox of one of our routes. */
interface Accepted {
  readonly route: Route;
  readonly mailbox: string;
}

/** Our session with the LMTP server for one SMTP transaction. */
interface Session {
  readonly connection: LmtpConnection;
  readonly accepted: Accepted[];
  /** Set when the session is in use by a message: it is given back after it. */
  busy: boolean;
}

/** How the target holds messages before sending them. */
export interface LmtpOptions {
  /** Where message content past `memoryBytes` waits (a folder Letterbox may write). */
  readonly spool: string;
  /** Content held in memory before it goes to a spool file. */
  readonly memoryBytes: number;
  /** Our host name, in the Received line. */
  readonly hostname: string;
  /**
   * True when nothing can change the message after its start (no checks):
   * it is then streamed to the LMTP server as it arrives, not held.
   */
  readonly live?: boolean;
  /**
   * With hooks: the folder (Maildir-like, with tmp/ beside it in the hook
   * spool) where a copy of each delivered message is kept for them, since
   * LMTP leaves none here.
   */
  readonly keepFor?: string;
  /** Counts the LMTP server's replies by code, for the metrics. */
  readonly count?: (code: number) => void;
}

const CRLF = new Uint8Array([0x0d, 0x0a]);
const encoder = new TextEncoder();

/** Delivers to an LMTP server. */
export class LmtpTarget implements Target {
  readonly #pool: LmtpPool;
  readonly #options: LmtpOptions;
  readonly #log: Logger;
  readonly #sessions = new WeakMap<object, Session>();

  /**
   * Delivers through `pool`; logs each recipient's outcome to `log`, and
   * counts each RCPT and end-of-data reply's code with `count`.
   */
  constructor(
    pool: LmtpPool,
    options: LmtpOptions,
    log: Logger,
    count?: (code: number) => void,
  ) {
    this.#pool = pool;
    this.#options = { ...options, count };
    this.#log = log;
  }

  /**
   * RCPT: the LMTP server's RCPT for each final mailbox of the route, before
   * our reply; the first one opens the session with MAIL (in one write with
   * the RCPTs where the server offers PIPELINING).
   */
  async verify(start: TransactionStart, route: Route): Promise<Reply | undefined> {
    let session = this.#sessions.get(start.transaction);
    const lines: string[] = [];
    let connection: LmtpConnection;
    if (session) connection = session.connection;
    else {
      try {
        connection = await this.#pool.take();
      } catch (error) {
        this.#log.warn("LMTP server {server} unavailable: {error}", {
          server: this.#pool.name,
          error: describeError(error),
        });
        return LMTP_REPLIES.unavailable;
      }
      const sender = start.sender ? formatAddress(start.sender) : "";
      const body = start.body === "8BITMIME" && connection.capabilities.has("8BITMIME")
        ? " BODY=8BITMIME"
        : "";
      lines.push(`MAIL FROM:<${sender}>${body}`);
    }
    const mailboxes = [...new Set(route.destinations.map((destination) => destination.mailbox))];
    lines.push(...mailboxes.map((mailbox) => `RCPT TO:<${mailbox}>`));
    let answers: Reply[];
    try {
      answers = await exchange(connection, lines);
    } catch (error) {
      this.#log.warn("LMTP server {server} failed at RCPT: {error}", {
        server: this.#pool.name,
        error: describeError(error),
      });
      if (!session) await this.#pool.give(connection);
      return LMTP_REPLIES.unavailable;
    }
    if (!session) {
      const mail = answers.shift()!;
      if (mail.code !== 250) {
        await this.#pool.give(connection);
        return relayed(mail);
      }
      session = { connection, accepted: [], busy: false };
      this.#sessions.set(start.transaction, session);
    }
    let refusal: Reply | undefined;
    let accepted = 0;
    for (const [i, mailbox] of mailboxes.entries()) {
      const answer = answers[i];
      this.#options.count?.(answer.code);
      if (answer.code >= 200 && answer.code < 300) {
        session.accepted.push({ route, mailbox });
        accepted++;
      } else {
        refusal ??= relayed(answer);
        this.#log.info("LMTP refused {mailbox}: {reply}", {
          mailbox,
          reply: formatReply(answer).trimEnd(),
        });
      }
    }
    // An alias is accepted when one of its mailboxes is; the others are logged.
    return accepted > 0 ? undefined : refusal;
  }

  /** The transaction ended: its session goes back to the pool (after RSET). */
  async ended(transaction: object): Promise<void> {
    const session = this.#sessions.get(transaction);
    if (!session || session.busy) return;
    this.#sessions.delete(transaction);
    await this.#pool.give(session.connection);
  }

  begin(envelope: Envelope): Promise<TargetTransaction> {
    const session = envelope.transaction ? this.#sessions.get(envelope.transaction) : undefined;
    if (!session || session.accepted.length === 0) {
      return Promise.reject(
        new ReplyError(REPLIES.localError, `message ${envelope.id} has no LMTP recipient`),
      );
    }
    session.busy = true;
    const release = async () => {
      session.busy = false;
      if (envelope.transaction) this.#sessions.delete(envelope.transaction);
      await this.#pool.give(session.connection);
    };
    const delivery: Delivery = {
      envelope,
      session,
      options: this.#options,
      log: this.#log,
      server: this.#pool.name,
      release,
    };
    if (this.#options.live) return LiveLmtpTransaction.start(delivery);
    return Promise.resolve(new LmtpTransaction(delivery));
  }
}

/** What a message's transaction with the LMTP server works with. */
interface Delivery {
  readonly envelope: Envelope;
  readonly session: Session;
  readonly options: LmtpOptions;
  readonly log: Logger;
  /** The server's address, as written, for logs and copy names. */
  readonly server: string;
  /** Gives the session's connection back (RSET) once the message is done. */
  readonly release: () => Promise<void>;
}

class LmtpTransaction implements TargetTransaction {
  readonly #delivery: Delivery;
  #memory: Uint8Array[] = [];
  #memoryBytes = 0;
  #file: Deno.FsFile | undefined;
  #path: string | undefined;
  #keeper: Keeper | undefined;
  #done = false;

  constructor(delivery: Delivery) {
    this.#delivery = delivery;
  }

  async write(content: Uint8Array): Promise<void> {
    if (!this.#file && this.#memoryBytes + content.length <= this.#delivery.options.memoryBytes) {
      this.#memory.push(content.slice());
      this.#memoryBytes += content.length;
      return;
    }
    if (!this.#file) {
      await Deno.mkdir(this.#delivery.options.spool, { recursive: true, mode: 0o700 });
      this.#path = await Deno.makeTempFile({ dir: this.#delivery.options.spool, prefix: "lmtp-" });
      this.#file = await Deno.open(this.#path, { write: true, read: true });
      for (const part of this.#memory) await writeAll(this.#file, part);
      this.#memory = [];
    }
    await writeAll(this.#file, content);
  }

  async commit(disposition: Disposition): Promise<StoredCopy[]> {
    this.#done = true;
    const connection = this.#delivery.session.connection;
    const accepted = this.#delivery.session.accepted;
    try {
      await startData(connection);
      // Our Received line, then what the checks add; LMTP has no folders, so a
      // junk verdict is a header field a Sieve rule files (see the README).
      let top = receivedHeader(
        this.#delivery.envelope,
        this.#delivery.options.hostname,
        uniqueRecipients(accepted),
      ) +
        disposition.headerFields;
      if (disposition.junk && !/^X-Spam: Yes$/im.test(disposition.headerFields)) {
        top += "X-Spam: Yes\n";
      }
      const stuffer = new DotStuffer();
      // With hooks, what is sent is also written to a file for them.
      const keep = this.#delivery.options.keepFor
        ? await Keeper.open(this.#delivery.options.keepFor, this.#delivery.envelope.id)
        : undefined;
      this.#keeper = keep;
      const emit = async (piece: Uint8Array) => {
        await connection.write(stuffer.push(piece));
        await keep?.write(piece);
      };
      await emit(encoder.encode(top));
      await this.#sendContent(emit, disposition.removeFields);
      await connection.write(stuffer.end());
      const answers = await replies(connection, accepted.length, this.#delivery.options.count);
      const copies = outcome(this.#delivery, answers);
      if (!keep) return copies;
      const local = await keep.commit();
      this.#keeper = undefined;
      return copies.map((copy) => ({ ...copy, local }));
    } catch (error) {
      if (error instanceof ReplyError) throw error;
      throw new ReplyError(LMTP_REPLIES.unavailable, describeError(error));
    } finally {
      await this.#cleanUp();
      await this.#delivery.release();
    }
  }

  // The held content, CRLF line ends and dot-stuffed, with the fields the checks removed gone.
  async #sendContent(
    emit: (piece: Uint8Array) => Promise<void>,
    remove: readonly FieldRemoval[] | undefined,
  ): Promise<void> {
    let edit = remove && remove.length > 0 ? new HeaderEditor(remove) : undefined;
    const send = async (part: Uint8Array) => {
      if (edit) {
        const edited = edit.push(part);
        if (edited.done) edit = undefined;
        for (const piece of edited.out) await emit(piece);
        return;
      }
      await emit(part);
    };
    if (!this.#file) {
      for (const part of this.#memory) await send(part);
    } else {
      await this.#file.seek(0, Deno.SeekMode.Start);
      const chunk = new Uint8Array(65_536);
      for (;;) {
        const n = await this.#file.read(chunk);
        if (n === null) break;
        await send(chunk.subarray(0, n));
      }
    }
    if (edit) { for (const piece of edit.end()) await emit(piece); }
  }

  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#cleanUp();
    await this.#delivery.release();
  }

  async #cleanUp(): Promise<void> {
    this.#memory = [];
    await this.#keeper?.discard();
    this.#keeper = undefined;
    if (this.#file) {
      try {
        this.#file.close();
      } catch { /* closed */ }
      this.#file = undefined;
    }
    if (this.#path) await Deno.remove(this.#path).catch(() => {});
  }
}

/**
 * Our outcome from the LMTP server's one reply per recipient: every copy when
 * all said 2xx; else a refusal (that 5xx when all refused for good, else 451).
 */
function outcome({ envelope, session, server, log }: Delivery, answers: Reply[]): StoredCopy[] {
  const accepted = session.accepted;
  const saved = accepted.filter((_, i) => answers[i].code >= 200 && answers[i].code < 300);
  for (let i = 0; i < accepted.length; i++) {
    log.info("LMTP {server} for {mailbox} of {id}: {reply}", {
      server: server,
      mailbox: accepted[i].mailbox,
      id: envelope.id,
      reply: formatReply(answers[i]).trimEnd(),
    });
  }
  if (saved.length === accepted.length) {
    return accepted.map((recipient, i) => ({
      maildir: `lmtp:${server}`,
      // The server's own queue id: "<alice@example.com> ID Saved" in Dovecot's words.
      path: answers[i].lines.join(" "),
      recipients: [recipient.route.recipient],
    }));
  }
  const failed = answers.filter((answer) => answer.code < 200 || answer.code >= 300);
  const allPermanent = saved.length === 0 && failed.every((answer) => answer.code >= 500);
  if (saved.length > 0) {
    // The sender retries the whole message: these will get it twice.
    log.warn(
      "LMTP saved {id} for {saved} but not for {failed}: 451, and the retry duplicates it for the first",
      {
        id: envelope.id,
        saved: saved.map((recipient) => recipient.mailbox),
        failed: accepted.filter((_, i) => answers[i].code >= 300).map((r) => r.mailbox),
      },
    );
  }
  throw new ReplyError(
    allPermanent ? relayed(failed[0]) : LMTP_REPLIES.partial,
    `LMTP answered ${answers.map((answer) => answer.code).join(", ")}`,
  );
}

/** Commands and their replies: in one write where the server offers PIPELINING (RFC 2920). */
async function exchange(connection: LmtpConnection, lines: readonly string[]): Promise<Reply[]> {
  const answers: Reply[] = [];
  if (connection.capabilities.has("PIPELINING")) {
    await connection.write(encoder.encode(lines.map((line) => `${line}\r\n`).join("")));
    for (let i = 0; i < lines.length; i++) answers.push(await connection.reply());
    return answers;
  }
  for (const line of lines) answers.push(await connection.command(line));
  return answers;
}

/** DATA, and its 354; anything else is the reply's refusal or 451 4.4.1. */
async function startData(connection: LmtpConnection): Promise<void> {
  const data = await connection.command("DATA").catch((error) => {
    throw new ReplyError(LMTP_REPLIES.unavailable, describeError(error));
  });
  if (data.code !== 354) throw new ReplyError(relayed(data), `DATA answered ${data.code}`);
}

/** One reply per accepted recipient, in RCPT order (RFC 2033 4.2). */
async function replies(
  connection: LmtpConnection,
  count: number,
  counter?: (code: number) => void,
): Promise<Reply[]> {
  const answers: Reply[] = [];
  for (let i = 0; i < count; i++) {
    answers.push(
      await connection.reply().catch((error) => {
        throw new ReplyError(LMTP_REPLIES.unavailable, describeError(error));
      }),
    );
    counter?.(answers[i].code);
  }
  return answers;
}

/**
 * A message streamed to the LMTP server as it arrives: DATA at its start,
 * each piece dot-stuffed and written as it comes (the socket's pace is the
 * client's), the end marker at commit. Used when no check can change the
 * message after its start. Aborting closes the connection: without the end
 * marker the server stores nothing.
 */
class LiveLmtpTransaction implements TargetTransaction {
  readonly #delivery: Delivery;
  readonly #stuffer = new DotStuffer();
  #done = false;

  private constructor(delivery: Delivery) {
    this.#delivery = delivery;
  }

  static async start(delivery: Delivery): Promise<TargetTransaction> {
    const { envelope, session, options } = delivery;
    const transaction = new LiveLmtpTransaction(delivery);
    try {
      await startData(session.connection);
      const top = receivedHeader(envelope, options.hostname, uniqueRecipients(session.accepted));
      await session.connection.write(transaction.#stuffer.push(encoder.encode(top)));
    } catch (error) {
      await transaction.abort();
      throw error instanceof ReplyError
        ? error
        : new ReplyError(LMTP_REPLIES.unavailable, describeError(error));
    }
    return transaction;
  }

  async write(content: Uint8Array): Promise<void> {
    try {
      await this.#delivery.session.connection.write(this.#stuffer.push(content));
    } catch (error) {
      throw new ReplyError(LMTP_REPLIES.unavailable, describeError(error));
    }
  }

  async commit(): Promise<StoredCopy[]> {
    this.#done = true;
    const connection = this.#delivery.session.connection;
    try {
      await connection.write(this.#stuffer.end());
      const { session, options } = this.#delivery;
      const answers = await replies(connection, session.accepted.length, options.count);
      return outcome(this.#delivery, answers);
    } catch (error) {
      if (error instanceof ReplyError) throw error;
      throw new ReplyError(LMTP_REPLIES.unavailable, describeError(error));
    } finally {
      await this.#delivery.release();
    }
  }

  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    // Mid-DATA there is no way back but to hang up: the server then stores nothing.
    this.#delivery.session.connection.close();
    await this.#delivery.release();
  }
}

/**
 * The copy kept for the hooks: written beside the send, made durable (file,
 * then rename into new/ and its sync) only once LMTP said yes to every
 * recipient, so that hook jobs written after it find it after a crash.
 */
class Keeper {
  readonly #dir: string;
  readonly #name: string;
  readonly #tmp: string;
  readonly #file: Deno.FsFile;

  private constructor(dir: string, name: string, tmp: string, file: Deno.FsFile) {
    this.#dir = dir;
    this.#name = name;
    this.#tmp = tmp;
    this.#file = file;
  }

  static async open(dir: string, name: string): Promise<Keeper> {
    // tmp/ of the hook spool: the same file system as messages/new.
    const tmp = `${dir}/../tmp/${name}.${crypto.randomUUID()}.message`;
    const file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
    return new Keeper(dir, name, tmp, file);
  }

  async write(piece: Uint8Array): Promise<void> {
    await writeAll(this.#file, piece);
  }

  async commit(): Promise<{ maildir: string; name: string }> {
    await this.#file.syncData();
    this.#file.close();
    await Deno.rename(this.#tmp, `${this.#dir}/new/${this.#name}`);
    await syncDirectory(`${this.#dir}/new`);
    return { maildir: this.#dir, name: this.#name };
  }

  async discard(): Promise<void> {
    try {
      this.#file.close();
    } catch { /* closed */ }
    await Deno.remove(this.#tmp).catch(() => {});
  }
}

/**
 * LF-terminated content -> CRLF line ends, with a leading dot doubled
 * (RFC 5321 4.5.2), across piece boundaries; `end()` finishes the last line
 * and adds the end-of-data marker.
 */
export class DotStuffer {
  #atLineStart = true;

  /** Converts one piece. */
  push(piece: Uint8Array): Uint8Array {
    let extra = 0;
    let start = this.#atLineStart;
    for (let i = 0; i < piece.length; i++) {
      if (start && piece[i] === 0x2e) extra++;
      if (piece[i] === 0x0a) extra++;
      start = piece[i] === 0x0a;
    }
    const out = new Uint8Array(piece.length + extra);
    let o = 0;
    for (let i = 0; i < piece.length; i++) {
      const byte = piece[i];
      if (this.#atLineStart && byte === 0x2e) out[o++] = 0x2e;
      if (byte === 0x0a) out[o++] = 0x0d;
      out[o++] = byte;
      this.#atLineStart = byte === 0x0a;
    }
    return out;
  }

  /** The end of data: CRLF first when the content did not end with one, then ".CRLF". */
  end(): Uint8Array {
    const tail = encoder.encode(".\r\n");
    if (this.#atLineStart) return tail;
    const out = new Uint8Array(CRLF.length + tail.length);
    out.set(CRLF);
    out.set(tail, CRLF.length);
    return out;
  }
}

/** Holds the header section (bounded), takes out the named fields, then passes everything on. */
class HeaderEditor {
  readonly #remove: readonly FieldRemoval[];
  #held: Uint8Array[] = [];
  #heldBytes = 0;

  constructor(remove: readonly FieldRemoval[]) {
    this.#remove = remove;
  }

  push(part: Uint8Array): { out: Uint8Array[]; done: boolean } {
    this.#held.push(part.slice());
    this.#heldBytes += part.length;
    const joined = concatBytes(this.#held);
    const end = headerEnd(joined);
    if (end === -1 && this.#heldBytes < 262_144) return { out: [], done: false };
    this.#held = [];
    // A header too long to hold is passed on as it is.
    if (end === -1) return { out: [joined], done: true };
    return {
      out: [removeFields(joined.subarray(0, end), this.#remove), joined.subarray(end)],
      done: true,
    };
  }

  end(): Uint8Array[] {
    const joined = concatBytes(this.#held);
    this.#held = [];
    return joined.length === 0 ? [] : [removeFields(joined, this.#remove)];
  }
}

function uniqueRecipients(accepted: readonly Accepted[]): Address[] {
  const recipients: Address[] = [];
  for (const { route } of accepted) {
    if (!recipients.includes(route.recipient)) recipients.push(route.recipient);
  }
  return recipients;
}

/**
 * The LMTP server's reply as ours: its code and enhanced code (550 5.1.1
 * unknown user, 552 5.2.2 mailbox full), its text; a code outside 4xx/5xx
 * (a broken server) becomes our 451.
 */
function relayed(answer: Reply): Reply {
  if (answer.code < 400 || answer.code > 599) return LMTP_REPLIES.unavailable;
  const enhanced = answer.enhanced ?? (answer.code >= 500 ? "5.0.0" : "4.0.0");
  return reply(answer.code, enhanced, answer.lines[0] || "Refused by the mail store");
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) offset += await file.write(bytes.subarray(offset));
}
