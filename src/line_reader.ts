/**
 * Byte-level framing of the SMTP input stream: bounded command lines and the
 * DATA section with dot-unstuffing. It reads from any {@link ChunkSource} and
 * calls no `Deno.*`, so it is tested in memory.
 *
 * @module
 */

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
const EMPTY = new Uint8Array(0);

const enum DataState {
  /** At the start of a line: after CRLF, or at the very start of DATA. */
  LineStart,
  /** Inside a line. */
  Middle,
  /** A CR was seen inside a line and is held back until we know whether LF follows. */
  HeldCr,
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
 * ends, the Maildir convention; bare CR and bare LF pass through unchanged.
 */
export class DataDecoder {
  #state = DataState.LineStart;

  /**
   * Decodes one chunk in place: the output overwrites the chunk from its
   * start (it is never longer than what it came from), so no bytes are copied
   * to another buffer and no view is made per line. The chunk's octets past
   * `end` are left as they were. `end` is the offset in `chunk` just past the
   * end marker, or -1 when the message goes on.
   */
  decode(chunk: Uint8Array): { output: Uint8Array; end: number } {
    // A CR held from the previous chunk and then found to be bare content is
    // one octet more than this chunk holds so far: that rare chunk is decoded
    // into a copy instead.
    const out = this.#state === DataState.HeldCr || this.#state === DataState.HeldDotCr
      ? new Uint8Array(chunk.length + 1)
      : chunk;
    let written = 0;
    let start = 0; // first byte of `chunk` not yet copied or dropped
    let state = this.#state;
    const length = chunk.length;
    for (let i = 0; i < length; i++) {
      const byte = chunk[i];
      switch (state) {
        case DataState.Middle: {
          if (byte !== CR) {
            // Jump to the next CR with a native search instead of a byte at a
            // time: the content between line ends is copied as it is.
            const cr = chunk.indexOf(CR, i + 1);
            if (cr === -1) {
              i = length;
              break;
            }
            i = cr;
          }
          written = move(chunk, start, i, out, written);
          start = i + 1;
          state = DataState.HeldCr;
          break;
        }
        case DataState.LineStart:
          if (byte === DOT || byte === CR) {
            written = move(chunk, start, i, out, written);
            start = i + 1;
            state = byte === DOT ? DataState.HeldDot : DataState.HeldCr;
          } else {
            state = DataState.Middle;
          }
          break;
        case DataState.HeldCr:
          if (byte === LF) {
            // CRLF becomes LF: the held CR is dropped, the LF is copied later.
            start = i;
            state = DataState.LineStart;
          } else {
            out[written++] = CR; // a bare CR is content
            if (byte === CR) {
              start = i + 1;
            } else {
              start = i;
              state = DataState.Middle;
            }
          }
          break;
        case DataState.HeldDot:
          if (byte === CR) {
            start = i + 1;
            state = DataState.HeldDotCr;
          } else {
            // Dot-stuffing: the held dot is dropped, the rest of the line is content.
            start = i;
            state = DataState.Middle;
          }
          break;
        case DataState.HeldDotCr:
          if (byte === LF) {
            this.#state = DataState.LineStart;
            return { output: out.subarray(0, written), end: i + 1 };
          }
          // ".<CR>x" is a stuffed line holding a bare CR: drop the dot, keep the CR.
          out[written++] = CR;
          if (byte === CR) {
            start = i + 1;
            state = DataState.HeldCr;
          } else {
            start = i;
            state = DataState.Middle;
          }
          break;
      }
    }
    if (state === DataState.Middle || state === DataState.LineStart) {
      written = move(chunk, start, length, out, written);
    }
    this.#state = state;
    return { output: out.subarray(0, written), end: -1 };
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
      if (parts.length > 0) line = concat([...parts, line], total + lf);
      if (line.length > 0 && line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
      return { kind: "line", line };
    }
  }

  /**
   * Reads a DATA section up to `<CRLF>.<CRLF>`, handing decoded content to
   * `sink` chunk by chunk (each view is valid only until the sink's promise
   * settles). Past `maxBytes` on the wire the rest is read and dropped, so the
   * client still gets a reply at the end (RFC 1870 section 6.3).
   */
  async readData(
    sink: (content: Uint8Array) => Promise<void> | void,
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
      const { output, end } = decoder.decode(chunk);
      const consumed = end === -1 ? chunk.length : end;
      this.#pending = end === -1 ? EMPTY : chunk.subarray(end);
      wireBytes += consumed;
      if (!tooBig && wireBytes > maxBytes + 3) tooBig = true;
      if (!tooBig && output.length > 0) await sink(output);
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

function concat(parts: Uint8Array[], length: number): Uint8Array {
  const result = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    result.set(part, offset);
    offset += part.length;
  }
  return result;
}
