/**
 * The recipients file: who we accept mail for, and where aliases lead.
 *
 * ```
 * # comments and blank lines are ignored
 * alice@example.com                                  a mailbox
 * sales@example.com: alice@example.com, bob@example.com   an alias
 * @example.org                                       any address at the domain
 * @example.net: alice@example.com                    a catch-all alias
 * ```
 *
 * Pure: text in, table out; reading the file and reloading it is the caller's job.
 *
 * @module
 */

import { parseMailbox } from "../protocol/address.ts";
import { isSafeSegment, userOf } from "../maildir/template.ts";

/** The parsed recipients file. Addresses are kept lower-cased. */
export interface RecipientTable {
  /** Every domain the file names. */
  readonly domains: ReadonlySet<string>;
  /** Addresses that are mailboxes. */
  readonly mailboxes: ReadonlySet<string>;
  /** Addresses that lead elsewhere. */
  readonly aliases: ReadonlyMap<string, readonly string[]>;
  /** Domains that take any local part: to the given targets, or as addressed when null. */
  readonly catchAll: ReadonlyMap<string, readonly string[] | null>;
}

/** A mistake in the recipients file, with its line. */
export class RecipientsError extends Error {
  /** Creates the error; `line` is 1-based. */
  constructor(readonly line: number, message: string) {
    super(`line ${line}: ${message}`);
    this.name = "RecipientsError";
  }
}

/** What a recipient resolves to. */
export type Resolution =
  | { readonly kind: "unknown-domain" }
  | { readonly kind: "unknown-user" }
  /** The final mailboxes (`local@domain`, lower-cased), without duplicates. */
  | { readonly kind: "mailboxes"; readonly mailboxes: readonly string[] };

// Aliases may point at aliases; this deep and no deeper (Postfix's limit is 1000, ours is smaller
// because nobody needs more and a loop must end fast).
const MAX_ALIAS_DEPTH = 8;

/** Parses the recipients file; throws {@link RecipientsError} naming the first bad line. */
export function parseRecipients(text: string): RecipientTable {
  const domains = new Set<string>();
  const mailboxes = new Set<string>();
  const aliases = new Map<string, string[]>();
  const catchAll = new Map<string, string[] | null>();
  const lines = text.split(/\r?\n/);
  for (const [index, raw] of lines.entries()) {
    const line = raw.replace(/#.*$/, "").trim();
    if (line === "") continue;
    const number = index + 1;
    const colon = line.indexOf(":");
    const left = (colon === -1 ? line : line.slice(0, colon)).trim().toLowerCase();
    const targets = colon === -1
      ? null
      : line.slice(colon + 1).split(",").map((t) => t.trim().toLowerCase());
    if (targets) {
      if (targets.length === 0 || targets.some((t) => t === "")) {
        throw new RecipientsError(number, "an alias needs one or more addresses after the colon");
      }
      for (const target of targets) checkAddress(target, number);
    }
    if (left.startsWith("@")) {
      const domain = left.slice(1);
      checkAddress(`postmaster@${domain}`, number);
      if (catchAll.has(domain)) throw new RecipientsError(number, `@${domain} is listed twice`);
      catchAll.set(domain, targets);
      domains.add(domain);
      continue;
    }
    checkAddress(left, number);
    if (mailboxes.has(left) || aliases.has(left)) {
      throw new RecipientsError(number, `${left} is listed twice`);
    }
    if (targets) aliases.set(left, targets);
    else mailboxes.add(left);
    domains.add(left.slice(left.lastIndexOf("@") + 1));
  }
  // Targets must end somewhere: every alias chain is followed once now, so a
  // loop is a start-up error rather than a surprise at RCPT time.
  const table = { domains, mailboxes, aliases, catchAll };
  for (const [alias] of aliases) expand(table, alias, 0, new Set(), aliasLine(lines, alias));
  return table;
}

/** Resolves a recipient (`local@domain`) to mailboxes, trying the address without its `+tag` second. */
export function resolveRecipient(table: RecipientTable, local: string, domain: string): Resolution {
  const address = `${local}@${domain}`.toLowerCase();
  const plus = local.indexOf("+");
  const base = plus === -1 ? undefined : `${local.slice(0, plus)}@${domain}`.toLowerCase();
  for (const candidate of base ? [address, base] : [address]) {
    if (table.mailboxes.has(candidate) || table.aliases.has(candidate)) {
      return {
        kind: "mailboxes",
        mailboxes: [...new Set(expand(table, candidate, 0, new Set(), 0))],
      };
    }
  }
  const lowerDomain = domain.toLowerCase();
  if (table.catchAll.has(lowerDomain)) {
    const targets = table.catchAll.get(lowerDomain);
    if (!targets) return { kind: "mailboxes", mailboxes: [base ?? address] };
    return {
      kind: "mailboxes",
      mailboxes: [...new Set(targets.flatMap((t) => expand(table, t, 1, new Set(), 0)))],
    };
  }
  return table.domains.has(lowerDomain) ? { kind: "unknown-user" } : { kind: "unknown-domain" };
}

function expand(
  table: RecipientTable,
  address: string,
  depth: number,
  seen: Set<string>,
  line: number,
): string[] {
  const targets = table.aliases.get(address);
  if (!targets) return [address];
  if (seen.has(address) || depth >= MAX_ALIAS_DEPTH) {
    throw new RecipientsError(
      line,
      `the alias ${address} leads back to itself or is nested more than ${MAX_ALIAS_DEPTH} deep`,
    );
  }
  seen.add(address);
  const result = targets.flatMap((target) => expand(table, target, depth + 1, seen, line));
  seen.delete(address);
  return result;
}

function aliasLine(lines: string[], alias: string): number {
  return lines.findIndex((l) => l.trim().toLowerCase().startsWith(`${alias}:`)) + 1;
}

function checkAddress(address: string, line: number): void {
  const parsed = parseMailbox(address, false);
  if (!parsed.ok) {
    throw new RecipientsError(
      line,
      `${JSON.stringify(address)} is not an address such as alice@example.com`,
    );
  }
  const { localText, domain } = parsed.value;
  if (
    !isSafeSegment(localText) || !isSafeSegment(userOf(parsed.value)) || !isSafeSegment(domain) ||
    domain.startsWith("[")
  ) {
    throw new RecipientsError(line, `${JSON.stringify(address)} cannot name a Maildir safely`);
  }
}
