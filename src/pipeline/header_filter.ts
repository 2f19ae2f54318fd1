/**
 * Removes header fields from a message as it streams to the target: the
 * fields a sender must not be able to plant, such as an
 * `Authentication-Results` that claims our own authserv-id (RFC 8601 section
 * 5) or an `X-Spam: No`. Only the header section is looked at; the body passes
 * through untouched. Memory is bounded: a field is held only until it can be
 * judged (its end, or its first {@link JUDGE_BYTES}), then passed on or
 * dropped line by line.
 *
 * @module
 */

import { concatBytes } from "../bytes.ts";

/**
 * Whether to drop a field, from its name (lower-case, trimmed) and the start
 * of its value (unfolded, as far as it was held).
 */
export type FieldPredicate = (name: string, value: string) => boolean;

/** How much of a field is held to judge it; a longer field is judged on its start. */
export const JUDGE_BYTES = 8192;

const LF = 0x0a;
const SP = 0x20;
const HT = 0x09;
const decoder = new TextDecoder();

/** Combines predicates: a field goes when any of them drops it. */
export function anyOf(predicates: readonly FieldPredicate[]): FieldPredicate | undefined {
  if (predicates.length === 0) return undefined;
  if (predicates.length === 1) return predicates[0];
  return (name, value) => predicates.some((drop) => drop(name, value));
}

/** A filter for one message's decoded content (LF line ends). */
export class HeaderFilter {
  readonly #drop: FieldPredicate;
  // The field being held (copies), until it ends or passes JUDGE_BYTES.
  #held: Uint8Array[] = [];
  #heldBytes = 0;
  // Set once a long field was judged on its start: where its remaining bytes go.
  #judged: "keep" | "drop" | undefined;
  #atLineStart = true;
  #inBody = false;

  /** Creates a filter that drops the fields `drop` names. */
  constructor(drop: FieldPredicate) {
    this.#drop = drop;
  }

  /**
   * Filters one piece of content and returns what is to be stored, which may
   * be views of `content`: write them before `content` is reused.
   */
  push(content: Uint8Array): Uint8Array[] {
    if (this.#inBody) return [content];
    const out: Uint8Array[] = [];
    let position = 0;
    while (position < content.length) {
      if (this.#atLineStart) {
        const first = content[position];
        if (first !== SP && first !== HT) this.#endField(out);
        if (first === LF) {
          // The empty line: the body follows untouched.
          this.#inBody = true;
          out.push(content.subarray(position));
          return out;
        }
        this.#atLineStart = false;
      }
      const lf = content.indexOf(LF, position);
      const end = lf < 0 ? content.length : lf + 1;
      const piece = content.subarray(position, end);
      if (this.#judged === "keep") out.push(piece);
      else if (this.#judged === undefined) {
        this.#held.push(piece.slice());
        this.#heldBytes += piece.length;
        if (this.#heldBytes > JUDGE_BYTES) {
          this.#judged = this.#judge() ? "drop" : "keep";
          if (this.#judged === "keep") out.push(...this.#held);
          this.#held = [];
          this.#heldBytes = 0;
        }
      }
      position = end;
      if (lf >= 0) this.#atLineStart = true;
    }
    return out;
  }

  /** Ends the message: a field still held is judged and returned if kept. */
  end(): Uint8Array[] {
    const out: Uint8Array[] = [];
    if (!this.#inBody) this.#endField(out);
    return out;
  }

  #endField(out: Uint8Array[]): void {
    if (this.#held.length > 0 && !this.#judge()) out.push(...this.#held);
    this.#held = [];
    this.#heldBytes = 0;
    this.#judged = undefined;
  }

  #judge(): boolean {
    const text = decoder.decode(concatBytes(this.#held));
    const colon = text.indexOf(":");
    // Not a field (no colon): left alone, as the parsers downstream will see it.
    if (colon <= 0) return false;
    const name = text.slice(0, colon).trim().toLowerCase();
    const value = text.slice(colon + 1).replace(/\n[ \t]*/g, " ").trim();
    return this.#drop(name, value);
  }
}
