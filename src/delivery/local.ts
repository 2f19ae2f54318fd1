/**
 * Local delivery: one copy of each message per distinct destination Maildir,
 * each with its own trace headers, all durable before commit resolves.
 *
 * @module
 */

import type { Address } from "../commands.ts";
import type { Delivery, DeliveryTransaction, Envelope, StoredCopy } from "./delivery.ts";
import { MaildirFile, syncDirectoryShared } from "./maildir.ts";
import type { Router } from "./router.ts";
import { traceHeaders } from "./trace.ts";

const encoder = new TextEncoder();

interface Copy {
  readonly maildir: string;
  readonly folder: boolean;
  readonly recipients: Address[];
  /** The final mailboxes this copy is for (aliases expanded), for Delivered-To. */
  readonly mailboxes: string[];
  file?: MaildirFile;
}

/** Stores messages into Maildirs chosen by a {@link Router}. */
export class LocalDelivery implements Delivery {
  readonly #router: Router;
  readonly #hostname: string;

  /** Creates a delivery that names itself `hostname` in trace headers and file names. */
  constructor(router: Router, hostname: string) {
    this.#router = router;
    this.#hostname = hostname;
  }

  /** Opens one `tmp/` file per destination Maildir and writes its trace headers. */
  async begin(envelope: Envelope): Promise<DeliveryTransaction> {
    const byMaildir = new Map<string, Copy>();
    for (const recipient of envelope.recipients) {
      for (const destination of this.#router.destinations(recipient)) {
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
    const copies = [...byMaildir.values()];
    const transaction = new LocalTransaction(copies);
    try {
      await settleAll(copies.map(async (copy) => {
        copy.file = await MaildirFile.create(copy.maildir, this.#hostname, copy.folder);
        const mailboxes = copy.mailboxes;
        await copy.file.write(
          encoder.encode(traceHeaders(envelope, this.#hostname, mailboxes, copy.recipients)),
        );
      }));
    } catch (error) {
      await transaction.abort();
      throw error;
    }
    return transaction;
  }
}

class LocalTransaction implements DeliveryTransaction {
  readonly #copies: Copy[];
  #done = false;

  constructor(copies: Copy[]) {
    this.#copies = copies;
  }

  async write(content: Uint8Array, lines?: number): Promise<void> {
    if (this.#copies.length === 1) return await this.#copies[0].file!.write(content, lines);
    // A write still in flight must not be reading a buffer that the abort
    // hands back to the pool.
    await settleAll(this.#copies.map((copy) => copy.file!.write(content, lines)));
  }

  async commit(): Promise<StoredCopy[]> {
    this.#done = true;
    const stored: (StoredCopy | undefined)[] = new Array(this.#copies.length);
    try {
      // With Promise.all, a copy failing early could let another rename into
      // new/ after the clean-up.
      await settleAll(this.#copies.map(async (copy, i) => {
        const path = await copy.file!.commit();
        stored[i] = { maildir: copy.maildir, path, recipients: copy.recipients };
      }));
      await Promise.all(
        [...new Set(this.#copies.map((c) => `${c.maildir}/new`))].map(syncDirectoryShared),
      );
      return stored as StoredCopy[];
    } catch (error) {
      // All or nothing: a copy already in new/ is taken back, so the 4xx that
      // follows is honest and the client's retry does not duplicate it.
      await Promise.all(this.#copies.map((copy) => copy.file?.discard()));
      await Promise.all(stored.map((copy) => copy && Deno.remove(copy.path).catch(() => {})));
      throw error;
    }
  }

  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
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
