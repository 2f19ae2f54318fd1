/**
 * Byte-level framing of the SMTP input stream: bounded command lines and the
 * DATA section with dot-unstuffing. It reads from any {@link ChunkSource} and
 * calls no `Deno.*`, so it is tested in memory.
 *
 * @module
 */

import { concatBytes } from "../bytes.ts";

/** Anything that yields chunks of bytes, `null` at end of stream. */
export interface ChunkSource {
  /**
   * Resolves with the next chunk, or `null` when the peer closed. A chunk may
   * be a view into a buffer that the next call reuses.
   */
  read(): Promise<Uint8Array | null>;
}

/** The outcome of {@link LineReader.readLine}. */
export type LineResult =
  | { readonly kind: "line"; readonly line: Uint8Array }
  | { readonly kind: "too-long" }
  | { readonly kind: "eof" };

/** The outcome of {@link LineReader.readData}. */
export type DataResult =
  | {
    readonly kind: "end";
    /** Octets read from the wire, end marker excluded. */
    readonly wireBytes: number;
    /** True when the message grew past the limit; nothing past it reached the sink. */
    readonly tooBig: boolean;
  }
  | { readonly kind: "eof" };

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const SPACE = 0x20;
const EMPTY = new Uint8Array(0);

const enum DataState {
  /** At the start of a line: after CRLF, or at the very start of DATA. */
  LineStart,
  /** Inside a line. */
  Middle,
  /** A chunk ended in CR, held back until the next one says whether LF follows. */
  HeldCr,
  /** Two CRs held back: if LF follows, the first is a bare CR just before a line end. */
  HeldCrCr,
  /** A line began with `.`, held back: it is either stuffing or the end marker. */
  HeldDot,
  /** A line began with `.` and a CR, both held back: LF next means the end. */
  HeldDotCr,
}

/**
 * Decodes the DATA section of RFC 5321 incrementally. Lines end only in
 * CRLF; the message ends only at `<CRLF>.<CRLF>` (4.1.1.4), never at a bare
 * LF or CR, which is what defeats SMTP smuggling (CVE-2023-51764 and
 * relatives). A leading `.` on a line is removed (4.5.2). Output uses LF line
 * ends, the Maildir convention.
 *
 * Bare CR and bare LF are not line ends on the wire (RFC 5321 2.3.8). A bare LF
 * is kept, so it ends a line in the stored file, which is how Postfix's
 * `smtpd_forbid_bare_newline = normalize` reads it. A bare CR is kept too,
 * except right before the CRLF that ends a line: there it becomes a space.
 * Stored as CR before the LF, every reader (Dovecot, postal-mime) would see
 * a CRLF line end, so a header line holding only CR would end the header in
 * the mailbox though not on the wire, and Dovecot's virtual size (LFs without
 * a CR before them) would disagree with the `W=` counted here. So the output
 * never holds CR LF, and `W=` is the size plus `lines`.
 */
export class DataDecoder {
  #state = DataState.LineStart;
  readonly #dotStuffed: boolean;

  /**
   * Creates a decoder for a DATA section, or with `dotStuffed` false for BDAT
   * chunks (RFC 3030): the same line-end rules, but no dot handling and no end
   * marker; the message ends where its last chunk does ({@link flush}).
   */
  constructor(dotStuffed = true) {
    this.#dotStuffed = dotStuffed;
  }

  /** Ends a chunked message: the CRs still held back are content. */
  flush(): Uint8Array {
    const held = this.#state === DataState.HeldCrCr
      ? Uint8Array.of(CR, CR)
      : this.#state === DataState.HeldCr
      ? Uint8Array.of(CR)
      : EMPTY;
    this.#state = DataState.LineStart;
    return held;
  }

  /**
   * Decodes one chunk in place: the output overwrites the chunk from its
   * start (it is never longer than what it came from), so no bytes are copied
   * to another buffer and no view is made per line. The chunk's octets past
   * `end` are left as they were. `end` is the offset in `chunk` just past the
   * end marker, or -1 when the message goes on; `lines` counts the LFs in the
   * output (what a Maildir name's `W=` needs), so nobody scans it again.
   */
  decode(chunk: Uint8Array): { output: Uint8Array; end: number; lines: number } {
    // A CR held from the previous chunk and then found to be bare content is
    // one octet more than this chunk holds so far: that rare chunk is decoded
    // into a copy instead.
    const held = this.#state === DataState.HeldCrCr
      ? 2
      : this.#state === DataState.HeldCr || this.#state === DataState.HeldDotCr
      ? 1
      : 0;
    const out = held > 0 ? new Uint8Array(chunk.length + held) : chunk;
    let written = 0;
    let start = 0; // first byte of `chunk` not yet copied or dropped
    let lines = 0;
    let state = this.#state;
    const length = chunk.length;
    let i = 0;
    while (i < length) {
      switch (state) {
        case DataState.Middle: {
          // Jump to the next LF with a native search instead of a byte at a
          // time: the content between line ends is copied as it is.
          const lf = chunk.indexOf(LF, i);
          if (lf === -1) {
            if (chunk[length - 1] === CR) {
              // Perhaps the first half of a CRLF: held until the next chunk,
              // with a CR before it, which is then a bare CR before a line end.
              const two = length - 2 >= start && chunk[length - 2] === CR;
              written = move(chunk, start, length - (two ? 2 : 1), out, written);
              start = length;
              state = two ? DataState.HeldCrCr : DataState.HeldCr;
            }
            i = length;
            break;
          }
          lines++;
          if (lf > start && chunk[lf - 1] === CR) {
            // A bare CR right before the line end would read as CRLF once stored.
            if (lf - 2 >= start && chunk[lf - 2] === CR) chunk[lf - 2] = SPACE;
            // CRLF becomes LF: the CR is dropped, the LF is copied with what follows.
            written = move(chunk, start, lf - 1, out, written);
            start = lf;
            state = DataState.LineStart;
          } // else a bare LF: content, and not the end of a line.
          i = lf + 1;
          break;
        }
        case DataState.LineStart:
          if (chunk[i] === DOT && this.#dotStuffed) {
            written = move(chunk, start, i, out, written);
            start = i + 1;
            state = DataState.HeldDot;
            i++;
          } else {
            state = DataState.Middle;
          }
          break;
        case DataState.HeldCr:
          // Only at the start of a chunk: the previous one ended in CR.
          if (chunk[i] === LF) {
            lines++;
            start = i;
            state = DataState.LineStart;
            i++;
          } else if (chunk[i] === CR) {
            start = ++i;
            state = DataState.HeldCrCr;
          } else {
            out[written++] = CR; // a bare CR is content
            start = i;
            state = DataState.Middle;
          }
          break;
        case DataState.HeldCrCr:
          if (chunk[i] === LF) {
            out[written++] = SPACE; // the bare CR before the line end; the other CR ends it
            lines++;
            start = i;
            state = DataState.LineStart;
            i++;
          } else if (chunk[i] === CR) {
            out[written++] = CR; // the oldest is followed by two CRs: plain content
            start = ++i;
          } else {
            out[written++] = CR;
            out[written++] = CR;
            start = i;
            state = DataState.Middle;
          }
          break;
        case DataState.HeldDot:
          if (chunk[i] === CR) {
            start = i + 1;
            state = DataState.HeldDotCr;
            i++;
          } else {
            // Dot-stuffing: the held dot is dropped, the rest of the line is content.
            start = i;
            state = DataState.Middle;
          }
          break;
        case DataState.HeldDotCr:
          if (chunk[i] === LF) {
            this.#state = DataState.LineStart;
            return { output: out.subarray(0, written), end: i + 1, lines };
          }
          if (chunk[i] === CR) {
            // ".<CR><CR>": the dot is stuffing, and the first CR may be a bare CR before a line end.
            start = ++i;
            state = DataState.HeldCrCr;
            break;
          }
          // ".<CR>x" is a stuffed line holding a bare CR: drop the dot, keep the CR.
          out[written++] = CR;
          start = i;
          state = DataState.Middle;
          break;
      }
    }
    if (state === DataState.Middle || state === DataState.LineStart) {
      written = move(chunk, start, length, out, written);
    }
    this.#state = state;
    return { output: out.subarray(0, written), end: -1, lines };
  }
}

/**
 * Reads command lines and DATA sections from a chunk source, keeping what
 * was read past the current unit for the next call (pipelining).
 */
export class LineReader {
  #source: ChunkSource;
  #pending: Uint8Array = EMPTY;

  /** Creates a reader over `source`. */
  constructor(source: ChunkSource) {
    this.#source = source;
  }

  /** Octets received and not yet consumed: when 0, the client awaits our replies. */
  get buffered(): number {
    return this.#pending.length;
  }

  /**
   * Drops everything received and not yet consumed. Called after STARTTLS:
   * plaintext that followed the command must never be executed
   * (CVE-2011-0411).
   */
  discardBuffered(): void {
    this.#pending = EMPTY;
  }

  /**
   * Reads one command line of at most `maxLength` octets, terminator included.
   * A line ends at LF; one CR before it is removed, so clients typing into
   * `nc` with bare LF work. An over-long line is read to its end without being
   * kept and reported as `too-long`.
   */
  async readLine(maxLength: number): Promise<LineResult> {
    const parts: Uint8Array[] = [];
    let total = 0;
    let tooLong = false;
    for (;;) {
      if (this.#pending.length === 0) {
        const chunk = await this.#source.read();
        if (chunk === null) return { kind: "eof" };
        this.#pending = chunk;
        continue;
      }
      const pending = this.#pending;
      const lf = pending.indexOf(LF);
      if (lf === -1) {
        total += pending.length;
        if (total > maxLength) {
          tooLong = true;
          parts.length = 0;
        } else {
          parts.push(pending.slice()); // the source may reuse its buffer
        }
        this.#pending = EMPTY;
        continue;
      }
      this.#pending = pending.subarray(lf + 1);
      if (tooLong || total + lf + 1 > maxLength) return { kind: "too-long" };
      let line = pending.subarray(0, lf);
      if (parts.length > 0) line = concatBytes([...parts, line]);
      if (line.length > 0 && line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
      return { kind: "line", line };
    }
  }

  /**
   * Reads exactly `size` octets (a BDAT chunk), handing them to `sink` as they
   * come (each view valid only until the sink's promise settles). Nothing in
   * them is a command or a line: whatever follows is read next.
   */
  async readExact(
    size: number,
    sink: (content: Uint8Array) => Promise<void> | void,
  ): Promise<"done" | "eof"> {
    let left = size;
    while (left > 0) {
      if (this.#pending.length === 0) {
        const chunk = await this.#source.read();
        if (chunk === null) return "eof";
        this.#pending = chunk;
      }
      const take = Math.min(left, this.#pending.length);
      const part = this.#pending.subarray(0, take);
      this.#pending = this.#pending.subarray(take);
      left -= take;
      await sink(part);
    }
    return "done";
  }

  /**
   * Reads a DATA section up to `<CRLF>.<CRLF>`, handing decoded content to
   * `sink` chunk by chunk (each view is valid only until the sink's promise
   * settles). Past `maxBytes` on the wire the rest is read and dropped, so the
   * client still gets a reply at the end (RFC 1870 section 6.3).
   */
  async readData(
    sink: (content: Uint8Array, lines: number) => Promise<void> | void,
    maxBytes: number,
  ): Promise<DataResult> {
    const decoder = new DataDecoder();
    let wireBytes = 0;
    let tooBig = false;
    for (;;) {
      if (this.#pending.length === 0) {
        const chunk = await this.#source.read();
        if (chunk === null) return { kind: "eof" };
        this.#pending = chunk;
      }
      const chunk = this.#pending;
      const { output, end, lines } = decoder.decode(chunk);
      const consumed = end === -1 ? chunk.length : end;
      this.#pending = end === -1 ? EMPTY : chunk.subarray(end);
      wireBytes += consumed;
      if (!tooBig && wireBytes > maxBytes + 3) tooBig = true;
      if (!tooBig && output.length > 0) await sink(output, lines);
      if (end !== -1) return { kind: "end", wireBytes: wireBytes - 3, tooBig };
    }
  }
}

// Copies chunk[from, to) to out[at...] and returns the new output length. In
// place (out === chunk) the output never overtakes the input, so the copy is
// a memmove within the chunk, skipped while nothing has been dropped yet.
function move(chunk: Uint8Array, from: number, to: number, out: Uint8Array, at: number): number {
  if (out !== chunk) out.set(chunk.subarray(from, to), at);
  else if (at !== from) chunk.copyWithin(at, from, to);
  return at + to - from;
}

/**
 * Turns BDAT chunks into message content (RFC 3030). A text body gets the
 * line-end rules of DATA without dot handling (CRLF stored as LF, see
 * {@link DataDecoder}); a BINARYMIME body is kept byte for byte, and `lines`
 * then counts the LFs without a CR before them, which is what a Maildir
 * name's `W=` adds to the size (Dovecot's virtual size).
 */
export class ChunkDecoder {
  readonly #text: DataDecoder | undefined;
  #previousWasCr = false;

  /** Creates a decoder for a text body, or for a BINARYMIME one byte for byte. */
  constructor(binary: boolean) {
    this.#text = binary ? undefined : new DataDecoder(false);
  }

  /** Decodes one piece of a chunk (in place for a text body). */
  decode(chunk: Uint8Array): { output: Uint8Array; lines: number } {
    if (this.#text) {
      const { output, lines } = this.#text.decode(chunk);
      return { output, lines };
    }
    let lines = 0;
    for (let at = chunk.indexOf(LF); at !== -1; at = chunk.indexOf(LF, at + 1)) {
      if (at === 0 ? !this.#previousWasCr : chunk[at - 1] !== CR) lines++;
    }
    if (chunk.length > 0) this.#previousWasCr = chunk[chunk.length - 1] === CR;
    return { output: chunk, lines };
  }

  /** Ends the message: what a text decoder still held back. */
  flush(): { output: Uint8Array; lines: number } {
    return { output: this.#text?.flush() ?? EMPTY, lines: 0 };
  }
}
