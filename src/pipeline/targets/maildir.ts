/**
 * The Maildir target: one copy of each message per distinct destination
 * Maildir of its routes, each with its own trace headers, all durable before
 * commit resolves. Where the copies go was decided at RCPT (the routes);
 * nothing here looks a recipient up again.
 *
 * @module
 */

import type { Address } from "../../protocol/address.ts";
import { LIMITS } from "../../limits.ts";
import { REPLIES } from "../../protocol/replies.ts";
import { type FileOwner, MaildirFile, syncDirectoryShared } from "../../maildir/maildir.ts";
import type { Envelope } from "../envelope.ts";
import { ReplyError, storageFailure } from "../failure.ts";
import { traceHeaders } from "../trace.ts";
import type { Disposition, StoredCopy, Target, TargetTransaction } from "./target.ts";

const encoder = new TextEncoder();
const EMPTY = new Uint8Array(0);

/** The Maildir++ folder junk goes to; Dovecot shows it as "Junk". */
export const JUNK_FOLDER = ".Junk";

interface Copy {
  readonly maildir: string;
  readonly folder: boolean;
  readonly recipients: Address[];
  /** The final mailboxes this copy is for (aliases expanded), for Delivered-To. */
  readonly mailboxes: string[];
  file?: MaildirFile;
}

/** Stores messages into the Maildirs their routes name. */
export class MaildirTarget implements Target {
  readonly #hostname: string;
  readonly #owner: FileOwner | undefined;
  // Messages between begin and commit or abort, across all sessions: when a
  // commit is the only one, its syncs may run on the main thread.
  readonly #inFlight = { count: 0 };

  /**
   * Creates a target that names itself `hostname` in trace headers and file
   * names; with an `owner`, what it writes is handed to that user.
   */
  constructor(hostname: string, owner?: FileOwner) {
    this.#hostname = hostname;
    this.#owner = owner;
  }

  /** Opens one `tmp/` file per destination Maildir and writes its trace headers. */
  async begin(envelope: Envelope): Promise<TargetTransaction> {
    const copies = copiesOf(envelope);
    // A 250 must stand for at least one stored copy.
    if (copies.length === 0) {
      throw new ReplyError(REPLIES.localError, `message ${envelope.id} has no copy to store`);
    }
    const transaction = new MaildirTransaction(copies, this.#inFlight);
    try {
      if (copies.length === 1) await this.#open(copies[0], envelope);
      else await settleAll(copies.map((copy) => this.#open(copy, envelope)));
    } catch (error) {
      await transaction.abort();
      throw storageFailure(error);
    }
    return transaction;
  }

  async #open(copy: Copy, envelope: Envelope): Promise<void> {
    copy.file = await MaildirFile.create(copy.maildir, this.#hostname, copy.folder, this.#owner);
    await copy.file.write(
      encoder.encode(traceHeaders(envelope, this.#hostname, copy.mailboxes, copy.recipients)),
    );
    copy.file.markInsertionPoint();
  }
}

// One copy per distinct Maildir of the routes, with the recipients and final
// mailboxes it is for. The common case, one route to one Maildir, builds no map.
function copiesOf(envelope: Envelope): Copy[] {
  const routes = envelope.routes;
  if (routes.length === 1 && routes[0].destinations.length === 1) {
    const [destination] = routes[0].destinations;
    return [{
      maildir: destination.maildir,
      folder: destination.folder,
      recipients: [routes[0].recipient],
      mailboxes: [destination.mailbox],
    }];
  }
  const byMaildir = new Map<string, Copy>();
  for (const { recipient, destinations } of routes) {
    for (const destination of destinations) {
      let copy = byMaildir.get(destination.maildir);
      if (!copy) {
        byMaildir.set(
          destination.maildir,
          copy = {
            maildir: destination.maildir,
            folder: destination.folder,
            recipients: [],
            mailboxes: [],
          },
        );
      }
      if (!copy.recipients.includes(recipient)) copy.recipients.push(recipient);
      if (!copy.mailboxes.includes(destination.mailbox)) copy.mailboxes.push(destination.mailbox);
    }
  }
  return [...byMaildir.values()];
}

// A copy's Junk folder: beside the inbox, also for a copy bound for a +tag folder.
function junkMaildir(copy: Copy): string {
  const inbox = copy.folder ? copy.maildir.slice(0, copy.maildir.lastIndexOf("/")) : copy.maildir;
  return `${inbox}/${JUNK_FOLDER}`;
}

class MaildirTransaction implements TargetTransaction {
  readonly #copies: Copy[];
  readonly #inFlight: { count: number };
  #done = false;

  constructor(copies: Copy[], inFlight: { count: number }) {
    this.#copies = copies;
    this.#inFlight = inFlight;
    inFlight.count++;
  }

  // Whether this commit's syncs run on the main thread (see
  // syncDirectoryShared): only when no other message is between its start
  // and its last sync, so that no other session waits on this one's disk,
  // and only for a small one.
  #inline(): boolean {
    return this.#inFlight.count === 1 &&
      this.#copies.every((copy) => copy.file!.size <= LIMITS.inlineSyncBytes);
  }

  async write(content: Uint8Array, lines?: number): Promise<void> {
    try {
      if (this.#copies.length === 1) return await this.#copies[0].file!.write(content, lines);
      // A write still in flight must not be reading a buffer that the abort
      // hands back to the pool.
      await settleAll(this.#copies.map((copy) => copy.file!.write(content, lines)));
    } catch (error) {
      throw storageFailure(error);
    }
  }

  async commit(disposition: Disposition): Promise<StoredCopy[]> {
    this.#done = true;
    const inline = this.#inline();
    try {
      return await this.#store(disposition, inline);
    } finally {
      // Counted until its syncs are done: a commit waiting on the pool is
      // still under way, and a sync on the main thread would hold its reply.
      this.#inFlight.count--;
    }
  }

  async #store(disposition: Disposition, inline: boolean): Promise<StoredCopy[]> {
    const insert = disposition.headerFields === ""
      ? EMPTY
      : encoder.encode(disposition.headerFields);
    if (this.#copies.length === 1 && !disposition.junk) {
      return await this.#commitOne(insert, disposition, inline);
    }
    const stored: (StoredCopy | undefined)[] = new Array(this.#copies.length);
    const into = this.#copies.map((copy) => disposition.junk ? junkMaildir(copy) : copy.maildir);
    try {
      // With Promise.all, a copy failing early could let another rename into
      // new/ after the clean-up. A Junk folder not made yet is made by the
      // commit, when its rename finds no new/ there: checking first would
      // cost every junk message a walk of its folders, queued behind every
      // other Maildir being made.
      await settleAll(this.#copies.map(async (copy, i) => {
        const path = await copy.file!.commit(insert, into[i], disposition.removeFields, inline);
        stored[i] = { maildir: into[i], path, recipients: copy.recipients };
      }));
      await Promise.all(
        [...new Set(into.map((dir) => `${dir}/new`))].map((dir) =>
          syncDirectoryShared(dir, inline)
        ),
      );
      return stored as StoredCopy[];
    } catch (error) {
      // All or nothing: a copy already in new/ is taken back, so the 4xx that
      // follows is honest and the client's retry does not duplicate it.
      await Promise.all(this.#copies.map((copy) => copy.file?.discard()));
      await Promise.all(stored.map((copy) => copy && Deno.remove(copy.path).catch(() => {})));
      throw storageFailure(error);
    }
  }

  // One copy into its own Maildir: the same steps without the bookkeeping of many.
  async #commitOne(
    insert: Uint8Array,
    disposition: Disposition,
    inline: boolean,
  ): Promise<StoredCopy[]> {
    const copy = this.#copies[0];
    let path: string | undefined;
    try {
      path = await copy.file!.commit(insert, copy.maildir, disposition.removeFields, inline);
      await syncDirectoryShared(`${copy.maildir}/new`, inline);
      return [{ maildir: copy.maildir, path, recipients: copy.recipients }];
    } catch (error) {
      await copy.file?.discard();
      if (path) await Deno.remove(path).catch(() => {});
      throw storageFailure(error);
    }
  }

  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    this.#inFlight.count--;
    await Promise.all(this.#copies.map((copy) => copy.file?.discard()));
  }
}

/**
 * Waits for every promise, then fails with the first failure, if any: unlike
 * Promise.all, nothing is still running on a copy when the caller cleans up.
 */
async function settleAll(promises: Promise<unknown>[]): Promise<void> {
  const outcomes = await Promise.allSettled(promises);
  const failed = outcomes.find((outcome) => outcome.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
}
