/**
 * Writing files into a Maildir the way D. J. Bernstein's specification and
 * Dovecot expect: the whole message into `tmp/`, fsync, rename into `new/`,
 * fsync `new/`. Knows files, not SMTP.
 *
 * @module
 */

import { dirname } from "@std/path/posix/dirname";
import { headerEnd } from "../bytes.ts";
import { LIMITS } from "../limits.ts";

const DIRECTORY_MODE = 0o700;
const FILE_MODE = 0o600;
const LF = 0x0a;

let sequence = 0;

/**
 * Escapes a host name for a Maildir file name: `/` becomes `\057` and `:`
 * becomes `\072`, as the Maildir specification says.
 */
export function escapeHostname(hostname: string): string {
  return hostname.replaceAll("/", "\\057").replaceAll(":", "\\072");
}

/**
 * A unique base name: `<secs>.M<usecs>P<pid>Q<seq>.<host>`. The microseconds,
 * the process id and a per-process counter make it unique on this host, and
 * the host name across hosts.
 */
export function uniqueName(hostname: string, pid: number, now: number = Date.now()): string {
  const seconds = Math.floor(now / 1000);
  const micros = Math.floor((performance.timeOrigin + performance.now()) * 1000) % 1_000_000;
  sequence++;
  return `${seconds}.M${micros}P${pid}Q${sequence}.${escapeHostname(hostname)}`;
}

/**
 * Who the files and folders Letterbox makes under a Maildir root belong to,
 * when that is not the user it runs as: see {@link fileOwner}.
 */
export interface FileOwner {
  readonly root: string;
  readonly uid: number;
  readonly gid: number;
}

/**
 * Run as root (a quick start, a container), Letterbox gives what it writes
 * to the owner of the Maildir root, so that an IMAP server running as that
 * user (Dovecot refuses to serve mail as root) can read every message. Deno
 * cannot drop privileges; as any other user, files are that user's.
 * Undefined when nothing needs handing over.
 */
export async function fileOwner(root: string): Promise<FileOwner | undefined> {
  let uid: number | null;
  try {
    uid = Deno.uid();
  } catch {
    return undefined; // not permitted to ask: files stay ours
  }
  if (uid !== 0) return undefined;
  const info = await Deno.stat(root);
  if (info.uid === null || info.gid === null || info.uid === 0) return undefined;
  return { root: root.replace(/\/+$/, ""), uid: info.uid, gid: info.gid };
}

/**
 * Creates `dir` with `tmp/`, `new/` and `cur/` if they are missing (mode 0700);
 * a Maildir++ folder also gets its empty `maildirfolder` file, by which
 * Dovecot and Courier know it is a folder. With an `owner`, everything made
 * below its root is handed to it. What it makes is durable when it returns:
 * the directory above each one made is synced, as a message's `new/` is, so
 * that a power cut cannot take a new mailbox away with the messages already
 * acknowledged into it (ext4 without a journal orders none of this).
 */
export function ensureMaildir(dir: string, folder = false, owner?: FileOwner): Promise<void> {
  // One at a time: a caller must not find a folder that another one has made
  // but not yet synced, and acknowledge a message in it first.
  const done = making.then(() => makeMaildir(dir, folder, owner));
  making = done.catch(() => {});
  return done;
}
let making: Promise<void> = Promise.resolve();

async function makeMaildir(dir: string, folder: boolean, owner?: FileOwner): Promise<void> {
  const made = await missingDirectories(dir);
  const subs: string[] = [];
  for (const sub of ["tmp", "new", "cur"]) {
    if (made.length > 0 || !await exists(`${dir}/${sub}`)) subs.push(`${dir}/${sub}`);
  }
  for (const path of subs) await Deno.mkdir(path, { recursive: true, mode: DIRECTORY_MODE });
  made.push(...subs);
  const parents = new Set(made.map((path) => dirname(path)));
  if (folder && !await exists(`${dir}/maildirfolder`)) {
    await Deno.writeFile(`${dir}/maildirfolder`, new Uint8Array(0), { mode: FILE_MODE });
    parents.add(dir);
  }
  if (owner && dir.startsWith(`${owner.root}/`)) {
    const below = dir.slice(owner.root.length + 1).split("/");
    const paths = below.map((_, i) => `${owner.root}/${below.slice(0, i + 1).join("/")}`);
    for (const sub of ["tmp", "new", "cur", ...(folder ? ["maildirfolder"] : [])]) {
      paths.push(`${dir}/${sub}`);
    }
    for (const path of paths) await Deno.chown(path, owner.uid, owner.gid);
  }
  for (const parent of parents) {
    try {
      await syncDirectory(parent);
    } catch (error) {
      // Above the Maildir root (which someone removed while we ran): beyond
      // the grant, and not ours to sync; what is below it still was.
      if (!(error instanceof Deno.errors.NotCapable)) throw error;
    }
  }
}

// `dir` and those of its parents that do not exist yet, deepest first. A
// parent beyond the read grant is taken as there: it is not ours to make.
async function missingDirectories(dir: string): Promise<string[]> {
  const missing: string[] = [];
  for (let path = dir; path !== "/" && path !== "."; path = dirname(path)) {
    try {
      if (await exists(path)) break;
    } catch (error) {
      if (error instanceof Deno.errors.NotCapable) break;
      throw error;
    }
    missing.push(path);
  }
  return missing;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** A file being written into `tmp/`; {@link commit} moves it into `new/`. */
export class MaildirFile {
  readonly #dir: string;
  readonly #base: string;
  readonly #file: Deno.FsFile;
  readonly #folder: boolean;
  readonly #owner: FileOwner | undefined;
  #buffer = EMPTY;
  #buffered = 0;
  #size = 0;
  #lines = 0;
  // Octets already written to the file (the rest is in #buffer).
  #written = 0;
  // Where {@link commit}'s `insert` goes: after the trace header lines.
  #insertAt = 0;
  #closed = false;

  private constructor(
    dir: string,
    base: string,
    file: Deno.FsFile,
    folder: boolean,
    owner: FileOwner | undefined,
  ) {
    this.#dir = dir;
    this.#base = base;
    this.#file = file;
    this.#folder = folder;
    this.#owner = owner;
  }

  /**
   * Creates a new file in `dir/tmp/`, making the Maildir first if needed;
   * with an `owner` (see {@link fileOwner}), the file and what was made are its.
   */
  static async create(
    dir: string,
    hostname: string,
    folder = false,
    owner?: FileOwner,
  ): Promise<MaildirFile> {
    const base = uniqueName(hostname, Deno.pid);
    const path = `${dir}/tmp/${base}`;
    const options = { write: true, createNew: true, mode: FILE_MODE };
    let file: Deno.FsFile;
    try {
      // Synchronous: a create in tmp/ is a few microseconds of kernel work,
      // and the trip to Deno's blocking pool and back cost more on the main
      // thread than the call itself (15% of it at 64 connections).
      file = Deno.openSync(path, options);
    } catch (error) {
      // Made on first use (and again if someone removed it), not checked
      // with three mkdir calls per message.
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      await ensureMaildir(dir, folder, owner);
      file = await Deno.open(path, options);
    }
    if (owner) await Deno.chown(path, owner.uid, owner.gid);
    return new MaildirFile(dir, base, file, folder, owner);
  }

  /** Octets written so far, trace header fields included. */
  get size(): number {
    return this.#size;
  }

  /** The path of the file while it is in `tmp/`. */
  get tmpPath(): string {
    return `${this.#dir}/tmp/${this.#base}`;
  }

  /**
   * Appends bytes holding `lines` LFs (counted here when not given) for the
   * `S=` and `W=` name fields. Bytes are gathered up to
   * {@link LIMITS.deliveryWriteBuffer} and written in one go; {@link commit}
   * writes the rest.
   */
  async write(bytes: Uint8Array, lines: number = countLines(bytes)): Promise<void> {
    this.#size += bytes.length;
    this.#lines += lines;
    if (this.#buffered + bytes.length > LIMITS.deliveryWriteBuffer) await this.#flush();
    if (bytes.length >= LIMITS.deliveryWriteBuffer) {
      await writeAll(this.#file, bytes);
      this.#written += bytes.length;
      return;
    }
    if (this.#buffered + bytes.length > this.#buffer.length) {
      this.#grow(this.#buffered + bytes.length);
    }
    // A copy: the caller may reuse its buffer for the next read.
    this.#buffer.set(bytes, this.#buffered);
    this.#buffered += bytes.length;
  }

  // A small buffer first, the large one once a message outgrows it: most
  // messages fit in the small one, and 64 large buffers held at once cost 4
  // MiB of RSS even where their pages were never written (the allocator
  // zeroes them).
  #grow(needed: number): void {
    const larger = takeBuffer(
      needed <= SMALL_WRITE_BUFFER ? SMALL_WRITE_BUFFER : LIMITS.deliveryWriteBuffer,
    );
    larger.set(this.#buffer.subarray(0, this.#buffered));
    giveBack(this.#buffer);
    this.#buffer = larger;
  }

  // `inline`: the commit's syncs run on this thread anyway (see commit).
  async #flush(inline = false): Promise<void> {
    if (this.#buffered === 0) return;
    const held = this.#buffer.subarray(0, this.#buffered);
    this.#buffered = 0;
    if (inline || held.length <= SYNC_WRITE_LIMIT) {
      // A small message into the page cache: synchronous, as the create is;
      // the trip to the blocking pool cost more than the copy.
      let offset = 0;
      while (offset < held.length) offset += this.#file.writeSync(held.subarray(offset));
    } else {
      await writeAll(this.#file, held);
    }
    this.#written += held.length;
  }

  /** Marks the current end as where {@link commit}'s `insert` will go. */
  markInsertionPoint(): void {
    this.#insertAt = this.#size;
  }

  /**
   * Syncs the file, renames it into `new/` with `,S=<size>,W=<size with
   * CRLF>` (Dovecot reads both to skip a stat and a scan) and returns the new
   * path. `insert` (header fields that checks added, LF-terminated) goes in at
   * the {@link markInsertionPoint}; `remove` names fields of the message's own
   * header to take out first. `into` is another Maildir on the same file
   * system to file it in instead (a Maildir++ folder such as `.Junk`, made
   * here when the rename finds it missing). The caller syncs `new/` itself,
   * so that copies can share one sync. With `inline` the file's last write and its sync run on this thread
   * (see {@link syncDirectoryShared} for when a caller asks for it).
   */
  async commit(
    insert: Uint8Array = EMPTY,
    into: string = this.#dir,
    remove: readonly FieldRemoval[] = [],
    inline = false,
  ): Promise<string> {
    if (remove.length > 0) await this.#edit(insert, remove);
    else if (insert.length > 0) await this.#insert(insert);
    await this.#flush(inline);
    giveBack(this.#buffer);
    this.#buffer = EMPTY;
    // fdatasync: the data and the size needed to read it back, without
    // timestamps; enough for a file that is renamed and its directory synced.
    if (inline) this.#file.syncDataSync();
    else await this.#file.syncData();
    this.#closed = true;
    this.#file.close();
    const name = `${this.#base},S=${this.#size},W=${this.#size + this.#lines}`;
    const path = `${into}/new/${name}`;
    // Synchronous, as the create is: a rename between two directories of one
    // file system changes entries in the page cache and waits for no disk
    // (the directory sync that makes it durable stays on the blocking pool);
    // a trip there and back cost more thread wake-ups than the call.
    try {
      Deno.renameSync(this.tmpPath, path);
    } catch (error) {
      // new/ was removed while the message arrived (tmp/ was there, or the
      // create would have made the Maildir again): made again once, as the
      // create does, rather than every message failing until someone looks.
      // Without the file in tmp/ this fails again, and the client retries.
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      await ensureMaildir(into, into === this.#dir ? this.#folder : true, this.#owner);
      Deno.renameSync(this.tmpPath, path);
    }
    return path;
  }

  // Rare (a check asked for fields to go): the message's header, after our
  // trace fields, is read back from the file, filtered, and written again with
  // `insert` before it; what follows moves by the difference.
  async #edit(insert: Uint8Array, remove: readonly FieldRemoval[]): Promise<void> {
    await this.#flush();
    const readable = Math.min(this.#size - this.#insertAt, LIMITS.maxInspectedHeaderBytes);
    using reader = await Deno.open(this.tmpPath, { read: true });
    const region = await readAt(reader, this.#insertAt, readable);
    const end = headerEnd(region);
    // A header longer than we read is left as it is; the insert still goes in.
    if (end === -1 && readable < this.#size - this.#insertAt) return await this.#insert(insert);
    const header = region.subarray(0, end === -1 ? region.length : end);
    const kept = removeFields(header, remove);
    const replacement = new Uint8Array(insert.length + kept.length);
    replacement.set(insert);
    replacement.set(kept, insert.length);
    await this.#splice(reader, header.length, replacement);
    this.#lines += countLines(replacement) - countLines(header);
  }

  // Replaces `length` octets at the insertion point with `replacement`, on disk.
  async #splice(reader: Deno.FsFile, length: number, replacement: Uint8Array): Promise<void> {
    const tailStart = this.#insertAt + length;
    const shift = replacement.length - length;
    const chunk = new Uint8Array(Math.min(MOVE_CHUNK, Math.max(1, this.#size - tailStart)));
    if (shift > 0) {
      // Growing: from the end backwards, so nothing is overwritten before it moved.
      for (let end = this.#size; end > tailStart;) {
        const start = Math.max(tailStart, end - chunk.length);
        const part = await readAt(reader, start, end - start, chunk);
        await this.#file.seek(start + shift, Deno.SeekMode.Start);
        await writeAll(this.#file, part);
        end = start;
      }
    } else if (shift < 0) {
      for (let start = tailStart; start < this.#size;) {
        const end = Math.min(this.#size, start + chunk.length);
        const part = await readAt(reader, start, end - start, chunk);
        await this.#file.seek(start + shift, Deno.SeekMode.Start);
        await writeAll(this.#file, part);
        start = end;
      }
      await this.#file.truncate(this.#size + shift);
    }
    await this.#file.seek(this.#insertAt, Deno.SeekMode.Start);
    await writeAll(this.#file, replacement);
    this.#size += shift;
    this.#written = this.#size;
    await this.#file.seek(0, Deno.SeekMode.End);
  }

  // Most messages are still whole in the buffer: the insert is spliced in
  // there. A large one is partly on disk already; its start is rewritten in
  // place by reading back what follows the insertion point.
  async #insert(insert: Uint8Array): Promise<void> {
    const lines = countLines(insert);
    if (this.#written <= this.#insertAt) {
      const at = this.#insertAt - this.#written;
      const held = this.#buffer.subarray(0, this.#buffered);
      const joined = new Uint8Array(held.length + insert.length);
      joined.set(held.subarray(0, at));
      joined.set(insert, at);
      joined.set(held.subarray(at), at + insert.length);
      giveBack(this.#buffer);
      this.#buffer = EMPTY;
      this.#buffered = 0;
      await writeAll(this.#file, joined);
      this.#written += joined.length;
    } else {
      await this.#flush();
      // Moved from the end backwards in bounded chunks, so memory stays flat
      // whatever the message size.
      const chunk = new Uint8Array(Math.min(MOVE_CHUNK, this.#written - this.#insertAt));
      // A second handle reads: the file was opened for writing only.
      using reader = await Deno.open(this.tmpPath, { read: true });
      for (let end = this.#written; end > this.#insertAt;) {
        const start = Math.max(this.#insertAt, end - chunk.length);
        const part = chunk.subarray(0, end - start);
        await reader.seek(start, Deno.SeekMode.Start);
        for (let read = 0; read < part.length;) {
          const n = await reader.read(part.subarray(read));
          if (n === null) throw new Error("the message file is shorter than what was written");
          read += n;
        }
        await this.#file.seek(start + insert.length, Deno.SeekMode.Start);
        await writeAll(this.#file, part);
        end = start;
      }
      await this.#file.seek(this.#insertAt, Deno.SeekMode.Start);
      await writeAll(this.#file, insert);
      this.#written += insert.length;
    }
    this.#size += insert.length;
    this.#lines += lines;
  }

  /** Closes and removes the file from `tmp/`; never throws. */
  async discard(): Promise<void> {
    giveBack(this.#buffer);
    this.#buffer = EMPTY;
    this.#buffered = 0;
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.#file.close();
      } catch { /* already closed */ }
    }
    await Deno.remove(this.tmpPath).catch(() => {});
  }
}

const EMPTY: Uint8Array<ArrayBuffer> = new Uint8Array(0);
// Writes up to this size are made synchronously (measured with make bench
// against async, 1 KiB messages: 8 connections 1.14x, 64 connections 1.05x,
// less CPU per message); larger ones stay on the blocking pool, so that a
// slow moment of the disk never holds the event loop for long.
const SYNC_WRITE_LIMIT = 16_384;

/**
 * A field of the message's header to remove: by lower-case name, every one
 * (`occurrence` 0), the n-th (1, 2, ...) or the n-th from the end (-1, ...),
 * as rspamd's `milter.remove_headers` asks.
 */
export interface FieldRemoval {
  readonly name: string;
  readonly occurrence: number;
}

/** The header section (fields ending in LF) without the fields `remove` names. */
export function removeFields(header: Uint8Array, remove: readonly FieldRemoval[]): Uint8Array {
  // One character per octet and back (TextDecoder's "latin1" is windows-1252,
  // which would not give every octet back): 8-bit fields survive.
  let text = "";
  for (let at = 0; at < header.length; at += 0x8000) {
    text += String.fromCharCode(...header.subarray(at, at + 0x8000));
  }
  const endsWithLf = text.endsWith("\n");
  const fields = (endsWithLf ? text.slice(0, -1) : text).split(/\n(?![ \t])/);
  const names = fields.map((field) =>
    field.slice(0, Math.max(0, field.indexOf(":"))).trim().toLowerCase()
  );
  const dropped = new Set<number>();
  for (const { name, occurrence } of remove) {
    const indexes = names.flatMap((candidate, i) => candidate === name ? [i] : []);
    if (occurrence === 0) indexes.forEach((i) => dropped.add(i));
    else {
      const index = occurrence > 0 ? indexes[occurrence - 1] : indexes[indexes.length + occurrence];
      if (index !== undefined) dropped.add(index);
    }
  }
  if (dropped.size === 0) return header;
  const kept = fields.filter((_, i) => !dropped.has(i)).map((field) => `${field}\n`).join("")
    .slice(0, endsWithLf ? undefined : -1);
  return Uint8Array.from(kept, (char) => char.charCodeAt(0));
}

async function readAt(
  file: Deno.FsFile,
  at: number,
  length: number,
  into: Uint8Array = new Uint8Array(length),
): Promise<Uint8Array> {
  const part = into.subarray(0, length);
  await file.seek(at, Deno.SeekMode.Start);
  for (let read = 0; read < length;) {
    const n = await file.read(part.subarray(read));
    if (n === null) throw new Error("the message file is shorter than what was written");
    read += n;
  }
  return part;
}
// Moving a large message's tail to make room for inserted header fields.
const MOVE_CHUNK = 1024 * 1024;

function countLines(bytes: Uint8Array): number {
  let lines = 0;
  for (let at = bytes.indexOf(LF); at !== -1; at = bytes.indexOf(LF, at + 1)) lines++;
  return lines;
}

// Write buffers go back to a pool when their message is written, instead of
// one new buffer (and its garbage) per message: one pool per size.
const SMALL_WRITE_BUFFER = 16_384;
const spareBuffers = new Map<number, Uint8Array<ArrayBuffer>[]>([
  [SMALL_WRITE_BUFFER, []],
  [LIMITS.deliveryWriteBuffer, []],
]);
const MAX_SPARE_BUFFERS = 64;

function takeBuffer(size: number): Uint8Array<ArrayBuffer> {
  return spareBuffers.get(size)!.pop() ?? new Uint8Array(size);
}

function giveBack(buffer: Uint8Array<ArrayBuffer>): void {
  const spares = spareBuffers.get(buffer.length);
  if (spares && spares.length < MAX_SPARE_BUFFERS) spares.push(buffer);
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) offset += await file.write(bytes.subarray(offset));
}

// At most this many fsyncs of one directory run at once. Below it a caller
// starts its own at once (the lowest latency); above it callers share the next
// one (group commit), so that a busy directory costs a few journal commits
// instead of one per message.
const MAX_CONCURRENT_DIRECTORY_SYNCS = 4;

interface DirectorySyncs {
  running: number;
  next?: Promise<void>;
}
const syncs = new Map<string, DirectorySyncs>();

/**
 * Makes a directory's entries durable, sharing fsyncs among callers when
 * several are under way (group commit). A caller is only answered by a sync
 * that started after it called, so its own rename is always covered.
 *
 * With `inline` the sync runs on this thread, which waits for the disk. The
 * caller asks for it only when nothing else is going on (no other message
 * under way) and the message is small ({@link LIMITS.inlineSyncBytes}): then
 * there is nothing to share a sync with and no one else to keep waiting,
 * while each trip to Deno's blocking pool wakes a thread there and this one
 * back, on a VM an idle virtual CPU each way (one connection, 1 KiB, 5 pairs:
 * 1.25x msg/s on this VM's ext4, p50 1.6 -> 1.3 ms; 1.67x on tmpfs).
 */
export function syncDirectoryShared(dir: string, inline = false): Promise<void> {
  if (inline) return syncDirectory(dir, true);
  let state = syncs.get(dir);
  if (!state) syncs.set(dir, state = { running: 0 });
  const current = state;
  if (current.running < MAX_CONCURRENT_DIRECTORY_SYNCS) return start(dir, current);
  // Every caller that arrives while all slots are busy waits for one shared
  // sync, started as soon as a slot frees.
  current.next ??= new Promise<void>((resolve, reject) => {
    waiting.set(current, { resolve, reject });
  });
  return current.next;
}

const waiting = new WeakMap<
  DirectorySyncs,
  { resolve: () => void; reject: (error: unknown) => void }
>();

function start(dir: string, state: DirectorySyncs): Promise<void> {
  state.running++;
  return syncDirectory(dir).finally(() => {
    state.running--;
    const waiter = waiting.get(state);
    if (waiter) {
      waiting.delete(state);
      state.next = undefined;
      start(dir, state).then(waiter.resolve, waiter.reject);
    } else if (state.running === 0) {
      syncs.delete(dir);
    }
  });
}

/**
 * Makes a directory's entries durable: after a rename, the new name survives
 * a power cut. With `inline`, on this thread (see {@link syncDirectoryShared}).
 */
export async function syncDirectory(dir: string, inline = false): Promise<void> {
  // Opened synchronously: a lookup in the directory cache, not worth a trip
  // to the blocking pool (one of the five on a message's path after DATA).
  const handle = Deno.openSync(dir, { read: true });
  try {
    if (inline) handle.syncSync();
    else await handle.sync();
  } finally {
    handle.close();
  }
}

/**
 * Checks at start that messages can be written under `root`: makes it if
 * missing, then creates and removes one probe file, so that a root Letterbox
 * may not write to stops the start instead of failing every message with 451.
 * Throws what the file system said.
 */
export async function probeWritable(root: string): Promise<void> {
  await Deno.mkdir(root, { recursive: true, mode: DIRECTORY_MODE });
  const probe = `${root}/.letterbox-probe-${Deno.pid}-${crypto.randomUUID()}`;
  const file = await Deno.open(probe, { write: true, createNew: true, mode: FILE_MODE });
  file.close();
  await Deno.remove(probe);
}
