/**
 * The one place replies reach the wire: queued in order, written together
 * when the client waits for them (RFC 2920 lets a server hold replies while
 * pipelined commands are still buffered), and serialised, so that a reply
 * sent from outside the command loop (421 at shutdown) never interleaves
 * with one from inside it.
 *
 * @module
 */

import { formatReply, type Reply } from "../protocol/replies.ts";

const encoder = new TextEncoder();

/** Where replies are written. */
export interface ReplySink {
  /** Writes bytes; resolves once the system took them. */
  write(bytes: Uint8Array): Promise<void>;
}

/** Queues and writes one connection's replies. */
export class ReplyWriter {
  readonly #sink: ReplySink;
  #pending = "";
  // The write under way, if any; a flush while it runs waits for it.
  #writing: Promise<void> | undefined;

  /** Creates a writer over a transport. */
  constructor(sink: ReplySink) {
    this.#sink = sink;
  }

  /** Holds a reply until the next {@link flush}. */
  queue(reply: Reply): void {
    this.#pending += formatReply(reply);
  }

  /** Writes every held reply, after any write already under way. */
  flush(): Promise<void> {
    if (this.#pending === "") return this.#writing ?? Promise.resolve();
    const bytes = encoder.encode(this.#pending);
    this.#pending = "";
    const write = this.#writing
      ? this.#writing.catch(() => {}).then(() => this.#sink.write(bytes))
      : this.#sink.write(bytes);
    this.#writing = write;
    // The caller awaits the write itself (no extra promise on its path); the
    // bookkeeping runs beside it.
    write.then(() => this.#settled(write), () => this.#settled(write));
    return write;
  }

  #settled(write: Promise<void>): void {
    if (this.#writing === write) this.#writing = undefined;
  }

  /** Queues a reply and writes it with everything held before it. */
  send(reply: Reply): Promise<void> {
    this.queue(reply);
    return this.flush();
  }
}
