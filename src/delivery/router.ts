/**
 * Decides which recipients we take mail for and which Maildir each one's
 * copy goes to. Pure string work: the Maildir path is computed, never
 * touched, here.
 *
 * @module
 */

import type { Address } from "../commands.ts";
import { REPLIES, type Reply } from "../replies.ts";
import { type RecipientTable, resolveRecipient } from "./recipients.ts";

/** The placeholders a Maildir template may hold. */
export const PLACEHOLDERS = ["{domain}", "{user}", "{local}"] as const;

/** How recipients are routed. */
export interface RouterOptions {
  /** One Maildir path, or a template with {@link PLACEHOLDERS}. */
  readonly maildir: string;
  /** Domains we accept mail for, lower-cased; empty means any. */
  readonly domains: readonly string[];
  /** The domain `<postmaster>` (no domain) belongs to. */
  readonly defaultDomain: string;
  /** The recipients table in force, when there is a recipients file (it can be reloaded). */
  readonly recipients?: () => RecipientTable | undefined;
  /** Deliver `user+tag@` into the Maildir++ folder `.tag` of user's Maildir. */
  readonly subaddressFolders?: boolean;
}

/** One copy's destination. */
export interface Destination {
  /** The Maildir (or Maildir++ folder) the copy goes to. */
  readonly maildir: string;
  /** The final mailbox address, for Delivered-To. */
  readonly mailbox: string;
  /** True when `maildir` is a Maildir++ folder (it needs its `maildirfolder` file). */
  readonly folder: boolean;
}

// A +tag that may become a Maildir++ folder name: plain ASCII words, no dots
// (a dot is Maildir++'s hierarchy separator) and nothing a path could use.
const FOLDER_TAG = /^[A-Za-z0-9_-]{1,64}$/;

// A value that becomes one path segment: no separators, no dot-segments, no
// leading dot (Maildir++ folders and hidden files start with one), no
// controls. Looked at after unquoting, since that is what reaches the path.
// deno-lint-ignore no-control-regex
const UNSAFE_SEGMENT = /[\/\\\x00-\x1f\x7f]|^\.|\.\.|^$/;
const MAX_SEGMENT_BYTES = 255;

/** Routes recipients to Maildirs; one instance serves the whole server. */
export class Router {
  #options: RouterOptions;
  #domains: Set<string>;
  #templated: boolean;

  /** Creates a router; the template was validated by the configuration. */
  constructor(options: RouterOptions) {
    this.#options = options;
    this.#domains = new Set(options.domains.map((domain) => domain.toLowerCase()));
    this.#templated = PLACEHOLDERS.some((placeholder) => options.maildir.includes(placeholder));
  }

  /** Says why a recipient is refused, or `undefined` when we take mail for it. */
  check(recipient: Address): Reply | undefined {
    const domain = this.#domainOf(recipient);
    const table = this.#options.recipients?.();
    if (table) {
      const resolution = resolveRecipient(table, recipient.localText, domain);
      if (resolution.kind === "unknown-domain" && !this.#domains.has(domain)) {
        return REPLIES.relayDenied;
      }
      if (resolution.kind !== "mailboxes") return REPLIES.unknownUser;
    } else if (this.#domains.size > 0 && !this.#domains.has(domain)) {
      return REPLIES.relayDenied;
    }
    // Refused whether or not the template uses them, so that changing the
    // template never makes an accepted address dangerous.
    if (!isSafeSegment(recipient.localText) || !isSafeSegment(userOf(recipient))) {
      return REPLIES.unsafeRecipient;
    }
    if (!isSafeSegment(domain) || domain.startsWith("[")) {
      return this.#templated && this.#options.maildir.includes("{domain}")
        ? REPLIES.unsafeRecipient
        : undefined;
    }
    return undefined;
  }

  /** The Maildir a recipient's copy goes to; call only for recipients {@link check} accepted. */
  maildirFor(recipient: Address): string {
    if (!this.#templated) return this.#options.maildir;
    return this.#options.maildir
      .replaceAll("{domain}", this.#domainOf(recipient))
      .replaceAll("{user}", userOf(recipient))
      .replaceAll("{local}", recipient.localText);
  }

  /**
   * Where a recipient's copies go: one per final mailbox (aliases expanded),
   * into the `.tag` folder when sub-address folders are on.
   */
  destinations(recipient: Address): Destination[] {
    const domain = this.#domainOf(recipient);
    const plus = recipient.localText.indexOf("+");
    const tag = plus === -1 ? undefined : recipient.localText.slice(plus + 1);
    const folder = this.#options.subaddressFolders && tag !== undefined && FOLDER_TAG.test(tag)
      ? `.${tag}`
      : undefined;
    const table = this.#options.recipients?.();
    const mailboxes = table
      ? (() => {
        const resolution = resolveRecipient(table, recipient.localText, domain);
        return resolution.kind === "mailboxes" ? resolution.mailboxes : [];
      })()
      : [`${recipient.localText}@${domain}`];
    return mailboxes.map((mailbox) => {
      const at = mailbox.lastIndexOf("@");
      const target = {
        local: mailbox.slice(0, at),
        localText: mailbox.slice(0, at),
        domain: mailbox.slice(at + 1),
        utf8: false,
      };
      const maildir = this.maildirFor(target);
      return {
        maildir: folder ? `${maildir}/${folder}` : maildir,
        mailbox: table ? mailbox : this.mailboxAddress(recipient),
        folder: folder !== undefined,
      };
    });
  }

  /** The address as delivery names it: `postmaster` gains the default domain. */
  mailboxAddress(recipient: Address): string {
    return `${recipient.local}@${
      recipient.domain === "" ? this.#options.defaultDomain : recipient.domain
    }`;
  }

  #domainOf(recipient: Address): string {
    return (recipient.domain === "" ? this.#options.defaultDomain : recipient.domain).toLowerCase();
  }
}

/** The local part without its `+tag`, lower-cased: Dovecot's `%n` for the usual setup. */
export function userOf(recipient: Address): string {
  const plus = recipient.localText.indexOf("+");
  return (plus === -1 ? recipient.localText : recipient.localText.slice(0, plus)).toLowerCase();
}

/** True when a value can be one path segment without escaping its directory. */
export function isSafeSegment(value: string): boolean {
  return !UNSAFE_SEGMENT.test(value) && new TextEncoder().encode(value).length <= MAX_SEGMENT_BYTES;
}

/**
 * Checks a Maildir path or template: it must not use `..` segments, and every
 * placeholder must come after a fixed root directory, so that no recipient can
 * choose where the tree starts. Returns the reason it is unsafe, or undefined.
 */
export function templateProblem(template: string): string | undefined {
  const segments = template.split("/");
  if (segments.some((segment) => segment === "..")) {
    return 'it must not contain ".." segments';
  }
  const unknown = template.match(/\{[^}]*\}/g)?.find((p) =>
    !(PLACEHOLDERS as readonly string[]).includes(p)
  );
  if (unknown) return `${unknown} is not a placeholder; use {domain}, {user} or {local}`;
  const first = PLACEHOLDERS.map((p) => template.indexOf(p)).filter((i) => i !== -1);
  if (first.length === 0) return undefined;
  const root = template.slice(0, Math.min(...first));
  if (!root.includes("/") || root.replace(/\/+$/, "") === "") {
    return "placeholders must come after a fixed root directory, e.g. /var/vmail/{domain}/{user}";
  }
  return undefined;
}
