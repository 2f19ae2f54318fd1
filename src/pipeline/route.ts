/**
 * RCPT -> Route, decided once: whether we take mail for a recipient and, if
 * so, every Maildir its copies go to (aliases expanded, template filled in).
 * The route is kept in the transaction; storing uses it and never asks the
 * recipients table again, so a reload between RCPT and the end of DATA
 * cannot change where an accepted message goes. Pure string work: the
 * Maildir path is computed, never touched, here.
 *
 * @module
 */

import type { Address } from "../protocol/address.ts";
import { REPLIES, type Reply } from "../protocol/replies.ts";
import { expandTemplate, isSafeSegment, isTemplate, userOf } from "../maildir/template.ts";
import { type RecipientTable, resolveRecipient } from "./recipients.ts";

/** How recipients are routed. */
export interface RouterOptions {
  /** One Maildir path, or a template with placeholders. */
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

/** An accepted recipient and where its copies go: decided at RCPT, used at the end of DATA. */
export interface Route {
  /** The recipient as the client gave it. */
  readonly recipient: Address;
  /** One destination per final mailbox; never empty. */
  readonly destinations: readonly Destination[];
}

// A +tag that may become a Maildir++ folder name: plain ASCII words, no dots
// (a dot is Maildir++'s hierarchy separator) and nothing a path could use.
const FOLDER_TAG = /^[A-Za-z0-9_-]{1,64}$/;

/** Routes recipients to Maildirs; one instance serves the whole server. */
export class Router {
  #options: RouterOptions;
  #domains: Set<string>;
  #usesDomain: boolean;

  /** Creates a router; the template was validated by the configuration. */
  constructor(options: RouterOptions) {
    this.#options = options;
    this.#domains = new Set(options.domains.map((domain) => domain.toLowerCase()));
    this.#usesDomain = isTemplate(options.maildir) && options.maildir.includes("{domain}");
  }

  /**
   * Decides a recipient: its {@link Route}, or the reply that refuses it
   * (domain not ours, unknown user, unsafe for a path). The recipients
   * table is read once, here.
   */
  route(recipient: Address): Route | Reply {
    const domain = this.#domainOf(recipient);
    const table = this.#options.recipients?.();
    // The final mailboxes when a recipients file names them; without one the
    // recipient is its own mailbox.
    let mailboxes: readonly string[] | undefined;
    if (table) {
      const resolution = resolveRecipient(table, recipient.localText, domain);
      if (resolution.kind === "unknown-domain" && !this.#domains.has(domain)) {
        return REPLIES.relayDenied;
      }
      if (resolution.kind === "mailboxes") {
        mailboxes = resolution.mailboxes;
      } else if (recipient.localText.toLowerCase() === "postmaster") {
        mailboxes = this.#postmaster(table);
      } else {
        return REPLIES.unknownUser;
      }
    } else if (this.#domains.size > 0 && !this.#domains.has(domain)) {
      return REPLIES.relayDenied;
    }
    // Refused whether or not the template uses them, so that changing the
    // template never makes an accepted address dangerous.
    if (!isSafeSegment(recipient.localText) || !isSafeSegment(userOf(recipient))) {
      return REPLIES.unsafeRecipient;
    }
    if ((!isSafeSegment(domain) || domain.startsWith("[")) && this.#usesDomain) {
      return REPLIES.unsafeRecipient;
    }
    const plus = recipient.localText.indexOf("+");
    const tag = plus === -1 ? undefined : recipient.localText.slice(plus + 1);
    const folder = this.#options.subaddressFolders && tag !== undefined && FOLDER_TAG.test(tag)
      ? `.${tag}`
      : undefined;
    const destination = (maildir: string, mailbox: string): Destination => ({
      maildir: folder ? `${maildir}/${folder}` : maildir,
      mailbox,
      folder: folder !== undefined,
    });
    if (!mailboxes) {
      return {
        recipient,
        destinations: [destination(this.maildirFor(recipient), this.mailboxAddress(recipient))],
      };
    }
    const destinations = mailboxes.map((mailbox) => {
      const at = mailbox.lastIndexOf("@");
      const local = mailbox.slice(0, at);
      return destination(
        expandTemplate(this.#options.maildir, {
          domain: mailbox.slice(at + 1),
          user: userOf({ localText: local }),
          local,
        }),
        mailbox,
      );
    });
    // The table never resolves to nothing; should it ever, the recipient is
    // refused here rather than accepted with nowhere to go.
    if (destinations.length === 0) return REPLIES.unknownUser;
    return { recipient, destinations };
  }

  // RFC 5321 4.5.1: postmaster, with no domain or at any of ours, must be
  // accepted. One the file does not name goes where postmaster@ the first
  // domain goes: its entry (an alias, say) if the file has one, else a
  // mailbox of that name.
  #postmaster(table: RecipientTable): readonly string[] {
    const home = this.#options.defaultDomain.toLowerCase();
    const resolution = resolveRecipient(table, "postmaster", home);
    return resolution.kind === "mailboxes" ? resolution.mailboxes : [`postmaster@${home}`];
  }

  /** The Maildir a recipient's copy goes to when no recipients file renames it. */
  maildirFor(recipient: Address): string {
    return expandTemplate(this.#options.maildir, {
      domain: this.#domainOf(recipient),
      user: userOf(recipient),
      local: recipient.localText,
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

/** True when `value` is a {@link Route} rather than a refusal. */
export function isRoute(value: Route | Reply): value is Route {
  return "destinations" in value;
}
