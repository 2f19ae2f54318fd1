/**
 * `letterbox hooks list` and `letterbox hooks retry ID`: what waits in the
 * hook spool and what gave up, and sending a job again. The spool is plain
 * files (`jobs/ID.json` waiting, `failed/ID.json` given up); `retry` moves a
 * job back to `jobs/` with a fresh retry period, and the running server takes
 * it on its next reload (SIGHUP, `systemctl reload letterbox`).
 *
 * @module
 */

const encoder = new TextEncoder();

/** A job file as the queue writes it (only what these commands read). */
interface JobFile {
  readonly id: string;
  readonly hook: { readonly text: string };
  readonly envelope: { readonly queueId: string };
  createdAt: number;
  attempts: number;
  nextAttemptAt: number;
  readonly lastError?: string;
}

/** Runs a hooks subcommand; returns the exit code (0 done, 1 no such job, 2 usage). */
export async function hooksCommand(
  spool: string,
  args: readonly string[],
  out: (line: string) => void,
): Promise<number> {
  const [verb, id] = args;
  if (verb === "list" && args.length === 1) return await list(spool, out);
  if (verb === "retry" && args.length === 2 && /^[\w.-]+$/.test(id)) {
    return await retry(spool, id, out);
  }
  out("Usage: letterbox hooks list | letterbox hooks retry ID  (with the server's options)");
  return 2;
}

async function list(spool: string, out: (line: string) => void): Promise<number> {
  let count = 0;
  for (const [folder, state] of [["jobs", "waiting"], ["failed", "failed"]] as const) {
    for (const job of await read(`${spool}/${folder}`)) {
      count++;
      const when = state === "waiting"
        ? `next attempt ${new Date(job.nextAttemptAt).toISOString()}`
        : `gave up`;
      out(
        `${job.id}\t${state}\t${job.hook.text}\tmessage ${job.envelope.queueId}\t` +
          `${job.attempts} attempts, ${when}${job.lastError ? `: ${job.lastError}` : ""}`,
      );
    }
  }
  if (count === 0) out(`No hook jobs in ${spool}`);
  return 0;
}

async function retry(spool: string, id: string, out: (line: string) => void): Promise<number> {
  for (const folder of ["failed", "jobs"]) {
    const path = `${spool}/${folder}/${id}.json`;
    let job: JobFile;
    try {
      job = JSON.parse(await Deno.readTextFile(path));
    } catch {
      continue;
    }
    const now = Date.now();
    // A fresh retry period from now: the job gave up on the old one.
    job.createdAt = now;
    job.nextAttemptAt = now;
    // tmp, rename: a job file is whole or absent, as the queue writes them.
    const tmp = `${spool}/tmp/${id}.${crypto.randomUUID()}`;
    await Deno.writeFile(tmp, encoder.encode(JSON.stringify(job)), { mode: 0o600 });
    await Deno.rename(tmp, `${spool}/jobs/${id}.json`);
    if (folder === "failed") await Deno.remove(path);
    out(`Queued ${id} again; reload Letterbox (systemctl reload letterbox) to run it now`);
    return 0;
  }
  out(`No hook job ${id} in ${spool}`);
  return 1;
}

async function read(folder: string): Promise<JobFile[]> {
  const jobs: JobFile[] = [];
  try {
    for await (const entry of Deno.readDir(folder)) {
      if (!entry.name.endsWith(".json")) continue;
      try {
        jobs.push(JSON.parse(await Deno.readTextFile(`${folder}/${entry.name}`)));
      } catch { /* being written or removed: skipped */ }
    }
  } catch { /* no such folder: no jobs */ }
  return jobs.sort((a, b) => a.createdAt - b.createdAt);
}
