/**
 * Durable hook jobs: written to a spool like Maildir writes messages (tmp,
 * fsync, rename) before the 250, run in the background with bounded
 * concurrency, retried with exponential backoff and jitter, moved aside when
 * they run out of time. At least once: a job is removed only after its
 * target said yes.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import { syncDirectory } from "../maildir/maildir.ts";
import { type Hook, matchingRecipients, senderAllowed } from "./hook.ts";
import { buildPayload, type JobEnvelope } from "./payload.ts";

/** How hooks run. Durations in milliseconds. */
export interface HookOptions {
  readonly hooks: readonly Hook[];
  readonly spool: string;
  readonly secret?: string;
  readonly maxAttachmentBytes: number;
  readonly retryFor: number;
  readonly retryDelay: number;
  readonly timeout: number;
  readonly concurrency: number;
  readonly log: Logger;
  /** Told what happens to each job, for metrics. */
  readonly onJob?: (event: "queued" | "delivered" | "retried" | "failed") => void;
}

/** One job as stored in `spool/jobs/ID.json`. */
interface Job {
  readonly id: string;
  readonly hook: Hook;
  readonly envelope: JobEnvelope;
  readonly createdAt: number;
  attempts: number;
  nextAttemptAt: number;
  lastError?: string;
}

// Job ids waiting in memory; beyond this the spool on disk is the queue and
// is scanned again when memory has room.
const MAX_JOBS_IN_MEMORY = 10_000;
const MAX_BACKOFF_MS = 3_600_000;
const TICK_MS = 200;
const encoder = new TextEncoder();

/** The hook queue of one server. */
export class HookQueue {
  readonly #options: HookOptions;
  readonly #due = new Map<string, number>(); // id -> next attempt time
  readonly #running = new Map<string, Promise<void>>();
  // Aborted by stop(): a webhook call or command under way ends, and its job
  // stays in the spool for the next start.
  readonly #stopping = new AbortController();
  #overflow = false;
  #timer: ReturnType<typeof setInterval> | undefined;
  #sequence = 0;

  /** Creates the queue; nothing runs until {@link start}. */
  constructor(options: HookOptions) {
    this.#options = options;
  }

  /** Makes the spool folders, loads the jobs left by an earlier run, and starts working. */
  async start(): Promise<void> {
    for (const sub of ["tmp", "jobs", "failed", "payloads", "messages/new"]) {
      await Deno.mkdir(`${this.#options.spool}/${sub}`, { recursive: true, mode: 0o700 });
    }
    const loaded = await this.#scan();
    if (loaded > 0) {
      this.#options.log.info("Resuming {count} hook jobs from {spool}", {
        count: loaded,
        spool: this.#options.spool,
      });
    }
    const timer = setInterval(() => this.#pump(), TICK_MS);
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }

  /** Stops starting jobs and ends those under way; every job on disk waits for the next start. */
  stop(): void {
    clearInterval(this.#timer);
    this.#stopping.abort();
  }

  /** Looks in the spool again for jobs put there from outside (`letterbox hooks retry`). */
  async rescan(): Promise<void> {
    const found = await this.#scan();
    if (found > 0) {
      this.#options.log.info("Found {count} more hook jobs in {spool}", {
        count: found,
        spool: this.#options.spool,
      });
      this.#pump();
    }
  }

  /**
   * Where a target that keeps no local copy (LMTP) leaves the message for the
   * hooks: `messages/new/QUEUE-ID`, read like a Maildir file, removed once no
   * job for it is left (a given-up job keeps it, for `hooks retry`).
   */
  get messages(): string {
    return `${this.#options.spool}/messages`;
  }

  // Removes the kept message of `queueId` once no job of it waits or gave up.
  async #forget(queueId: string): Promise<void> {
    const kept = `${this.messages}/new/${queueId}`;
    for (const folder of ["jobs", "failed"]) {
      for await (const entry of Deno.readDir(`${this.#options.spool}/${folder}`)) {
        if (entry.name.startsWith(`${queueId}-`)) return;
      }
    }
    await Deno.remove(kept).catch(() => {});
  }

  /** Jobs waiting or running (those beyond the in-memory bound not counted). */
  get pending(): number {
    return this.#due.size + this.#running.size;
  }

  /** Resolves once no job is running any more (after {@link stop}). */
  async settled(): Promise<void> {
    while (this.#running.size > 0) await Promise.allSettled(this.#running.values());
  }

  /**
   * Writes one durable job per matching hook. Resolves once every job file
   * is synced and renamed into place, so that a 250 sent after it is backed
   * by jobs that survive a crash.
   */
  async enqueue(envelope: JobEnvelope): Promise<number> {
    const dmarc = envelope.authentication?.dmarc;
    const sender = dmarc && { from: dmarc.from, dmarc: dmarc.result };
    const matches = this.#options.hooks
      .filter((hook) => senderAllowed(hook, sender))
      .map((hook) => ({ hook, recipients: matchingRecipients(hook, envelope.recipients) }))
      .filter(({ recipients }) => recipients.length > 0);
    if (matches.length === 0) return 0;
    const now = Date.now();
    const jobs: Job[] = matches.map(({ hook, recipients }) => ({
      id: `${envelope.queueId}-${(++this.#sequence).toString(36)}`,
      hook,
      // Only its own recipients and their copies: the others' Maildirs would
      // name them too.
      envelope: {
        ...envelope,
        recipients,
        files: envelope.files.filter((file) =>
          !file.recipients || file.recipients.some((r) => recipients.includes(r))
        ),
      },
      createdAt: now,
      attempts: 0,
      nextAttemptAt: now,
    }));
    await Promise.all(jobs.map((job) => this.#write(job, true)));
    await syncDirectory(`${this.#options.spool}/jobs`);
    for (const job of jobs) {
      this.#remember(job.id, job.nextAttemptAt);
      this.#options.onJob?.("queued");
    }
    this.#pump();
    return jobs.length;
  }

  #remember(id: string, at: number): void {
    if (this.#due.size >= MAX_JOBS_IN_MEMORY) {
      this.#overflow = true;
      return;
    }
    this.#due.set(id, at);
  }

  async #scan(): Promise<number> {
    let count = 0;
    this.#overflow = false;
    for await (const entry of Deno.readDir(`${this.#options.spool}/jobs`)) {
      if (!entry.name.endsWith(".json")) continue;
      const id = entry.name.slice(0, -5);
      if (this.#due.has(id) || this.#running.has(id)) continue;
      try {
        const job = await this.#read(id);
        this.#remember(id, job.nextAttemptAt);
        count++;
      } catch (error) {
        this.#options.log.error("Unreadable hook job {id}: {error}", { id, error: String(error) });
      }
      if (this.#overflow) break;
    }
    return count;
  }

  #pump(): void {
    if (this.#stopping.signal.aborted) return;
    if (this.#overflow && this.#due.size < MAX_JOBS_IN_MEMORY / 2) void this.#scan();
    const now = Date.now();
    for (const [id, at] of this.#due) {
      if (this.#running.size >= this.#options.concurrency) return;
      if (at > now) continue;
      this.#due.delete(id);
      this.#running.set(id, this.#run(id).finally(() => this.#running.delete(id)));
    }
  }

  async #run(id: string): Promise<void> {
    const log = this.#options.log;
    let job: Job;
    try {
      job = await this.#read(id);
    } catch {
      return; // removed meanwhile
    }
    job.attempts++;
    let error: string | undefined;
    try {
      error = await this.#deliver(job);
    } catch (thrown) {
      error = thrown instanceof Error ? thrown.message : String(thrown);
    }
    if (error === undefined) {
      await Deno.remove(this.#path(job.id)).catch(() => {});
      if (job.envelope.files.some((file) => file.maildir === this.messages)) {
        await this.#forget(job.envelope.queueId).catch(() => {});
      }
      this.#options.onJob?.("delivered");
      log.info("Hook {hook} done for {queueId} after {attempts} attempts", {
        hook: job.hook.text,
        queueId: job.envelope.queueId,
        attempts: job.attempts,
      });
      return;
    }
    const now = Date.now();
    job.lastError = error;
    if (now - job.createdAt >= this.#options.retryFor) {
      await this.#write(job, false, "failed");
      await Deno.remove(this.#path(job.id)).catch(() => {});
      this.#options.onJob?.("failed");
      log.error("Hook {hook} failed for {queueId} for good after {attempts} attempts: {error}", {
        hook: job.hook.text,
        queueId: job.envelope.queueId,
        attempts: job.attempts,
        error,
      });
      return;
    }
    // Exponential backoff with jitter: 0.5x to 1.5x of base * 2^(attempts-1), capped.
    const base = Math.min(this.#options.retryDelay * 2 ** (job.attempts - 1), MAX_BACKOFF_MS);
    job.nextAttemptAt = now + Math.round(base * (0.5 + Math.random()));
    await this.#write(job, false);
    this.#remember(job.id, job.nextAttemptAt);
    this.#options.onJob?.("retried");
    log.warn(
      "Hook {hook} for {queueId} failed (attempt {attempts}), retrying in {seconds} s: {error}",
      {
        hook: job.hook.text,
        queueId: job.envelope.queueId,
        attempts: job.attempts,
        seconds: Math.round((job.nextAttemptAt - now) / 1000),
        error,
      },
    );
  }

  // Runs the job once; undefined on success, else why it failed.
  async #deliver(job: Job): Promise<string | undefined> {
    const raw = await this.#readMessage(job.envelope);
    if (!raw) return "the stored message is gone";
    const payload = await buildPayload(job.envelope, raw, this.#options.maxAttachmentBytes);
    const body = JSON.stringify({ id: job.id, ...payload });
    const target = job.hook.target;
    if (target.kind === "webhook") return await this.#post(job, target.url, body);
    return await this.#exec(job, target.command, body, raw);
  }

  async #post(job: Job, url: string, body: string): Promise<string | undefined> {
    const timestamp = String(Math.floor(Date.now() / 1000));
    const headers: Record<string, string> = {
      "content-type": "application/json",
      "user-agent": "Letterbox",
      "x-letterbox-id": job.id,
      "x-letterbox-timestamp": timestamp,
    };
    if (this.#options.secret) {
      headers["x-letterbox-signature"] = `sha256=${await hmacHex(
        this.#options.secret,
        `${timestamp}.${body}`,
      )}`;
    }
    const response = await fetch(url, {
      method: "POST",
      headers,
      body,
      signal: AbortSignal.any([AbortSignal.timeout(this.#options.timeout), this.#stopping.signal]),
    });
    await response.body?.cancel();
    return response.ok ? undefined : `HTTP ${response.status}`;
  }

  async #exec(
    job: Job,
    command: string,
    body: string,
    raw: Uint8Array,
  ): Promise<string | undefined> {
    const payloadFile = `${this.#options.spool}/payloads/${job.id}.json`;
    await Deno.writeTextFile(payloadFile, body, { mode: 0o600 });
    try {
      const child = new Deno.Command(command, {
        stdin: "piped",
        stdout: "null",
        stderr: "piped",
        clearEnv: true,
        env: {
          PATH: "/usr/local/bin:/usr/bin:/bin",
          LETTERBOX_ID: job.id,
          LETTERBOX_QUEUE_ID: job.envelope.queueId,
          LETTERBOX_SENDER: job.envelope.sender,
          LETTERBOX_RECIPIENT: job.envelope.recipients.join(","),
          LETTERBOX_CLIENT_ADDRESS: job.envelope.clientAddress,
          LETTERBOX_HELO: job.envelope.heloName,
          LETTERBOX_PAYLOAD: payloadFile,
        },
      }).spawn();
      const kill = () => {
        try {
          child.kill("SIGKILL");
        } catch { /* already gone */ }
      };
      const killer = setTimeout(kill, this.#options.timeout);
      this.#stopping.signal.addEventListener("abort", kill);
      // Read stderr as it comes, so that a chatty command never blocks on a full pipe.
      const stderrText = new Response(child.stderr).text().catch(() => "");
      try {
        const writer = child.stdin.getWriter();
        await writer.write(raw).catch(() => {});
        await writer.close().catch(() => {});
        const { code, signal } = await child.status;
        const stderr = (await stderrText).trim().slice(0, 200);
        if (signal) return `killed by ${signal}${signal === "SIGKILL" ? " (time limit)" : ""}`;
        return code === 0 ? undefined : `exit code ${code}${stderr ? `: ${stderr}` : ""}`;
      } finally {
        clearTimeout(killer);
        this.#stopping.signal.removeEventListener("abort", kill);
      }
    } finally {
      await Deno.remove(payloadFile).catch(() => {});
    }
  }

  // The first stored copy, in new/ or, once an IMAP client saw it, in cur/.
  async #readMessage(envelope: JobEnvelope): Promise<Uint8Array | undefined> {
    for (const { maildir, name } of envelope.files) {
      try {
        return await Deno.readFile(`${maildir}/new/${name}`);
      } catch { /* moved on */ }
      try {
        for await (const entry of Deno.readDir(`${maildir}/cur`)) {
          if (entry.name === name || entry.name.startsWith(`${name}:`)) {
            return await Deno.readFile(`${maildir}/cur/${entry.name}`);
          }
        }
      } catch { /* no cur/ */ }
    }
    return undefined;
  }

  #path(id: string, folder = "jobs"): string {
    return `${this.#options.spool}/${folder}/${id}.json`;
  }

  async #read(id: string): Promise<Job> {
    return JSON.parse(await Deno.readTextFile(this.#path(id))) as Job;
  }

  // tmp, (fsync), rename: a job file is whole or absent.
  async #write(job: Job, durable: boolean, folder = "jobs"): Promise<void> {
    const tmp = `${this.#options.spool}/tmp/${job.id}.${crypto.randomUUID()}`;
    const file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
    try {
      const bytes = encoder.encode(JSON.stringify(job));
      let offset = 0;
      while (offset < bytes.length) offset += await file.write(bytes.subarray(offset));
      if (durable) await file.syncData();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, this.#path(job.id, folder));
  }
}

/** HMAC-SHA256 of `message` with `secret`, as lower-case hex. */
export async function hmacHex(secret: string, message: string): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const signature = new Uint8Array(await crypto.subtle.sign("HMAC", key, encoder.encode(message)));
  return Array.from(signature, (b) => b.toString(16).padStart(2, "0")).join("");
}
