/**
 * Maildir path templates: the placeholders a `--maildir` value may hold, the
 * check that no recipient can choose where the tree starts, and the expansion
 * of a template for one mailbox. Pure string work: no path is touched here.
 *
 * @module
 */

import type { Address } from "../protocol/address.ts";

/** The placeholders a Maildir template may hold. */
export const PLACEHOLDERS = ["{domain}", "{user}", "{local}"] as const;

/** The values a template is expanded with, one path segment each. */
export interface TemplateValues {
  /** The domain, lower-cased. */
  readonly domain: string;
  /** The local part without its `+tag`, lower-cased. */
  readonly user: string;
  /** The local part as given, unquoted. */
  readonly local: string;
}

// A value that becomes one path segment: no separators, no dot-segments, no
// leading dot (Maildir++ folders and hidden files start with one), no
// controls. Looked at after unquoting, since that is what reaches the path.
// deno-lint-ignore no-control-regex
const UNSAFE_SEGMENT = /[\/\\\x00-\x1f\x7f]|^\.|\.\.|^$/;
const MAX_SEGMENT_BYTES = 255;

/** True when the template holds any placeholder. */
export function isTemplate(template: string): boolean {
  return PLACEHOLDERS.some((placeholder) => template.includes(placeholder));
}

/** Fills in a template; a path without placeholders comes back as it is. */
export function expandTemplate(template: string, values: TemplateValues): string {
  if (!isTemplate(template)) return template;
  return template
    .replaceAll("{domain}", values.domain)
    .replaceAll("{user}", values.user)
    .replaceAll("{local}", values.local);
}

/** The local part without its `+tag`, lower-cased: Dovecot's `%n` for the usual setup. */
export function userOf(recipient: Pick<Address, "localText">): string {
  const plus = recipient.localText.indexOf("+");
  return (plus === -1 ? recipient.localText : recipient.localText.slice(0, plus)).toLowerCase();
}

/** True when a value can be one path segment without escaping its directory. */
export function isSafeSegment(value: string): boolean {
  return !UNSAFE_SEGMENT.test(value) && new TextEncoder().encode(value).length <= MAX_SEGMENT_BYTES;
}

/**
 * Checks a Maildir path or template: it must not use `..` segments, every
 * brace must belong to a placeholder, and every placeholder must come after a
 * fixed root directory, so that no recipient can choose where the tree
 * starts. Returns the reason it is unsafe, or undefined.
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
  // What is left once the placeholders are taken out must hold no brace: an
  // unclosed "{domain" would otherwise become a directory of that name.
  let rest = template;
  for (const placeholder of PLACEHOLDERS) rest = rest.replaceAll(placeholder, "");
  if (/[{}]/.test(rest)) {
    return "a brace is not closed; placeholders are {domain}, {user} and {local}";
  }
  const first = PLACEHOLDERS.map((p) => template.indexOf(p)).filter((i) => i !== -1);
  if (first.length === 0) return undefined;
  const root = template.slice(0, Math.min(...first));
  if (!root.includes("/") || root.replace(/\/+$/, "") === "") {
    return "placeholders must come after a fixed root directory, e.g. /var/vmail/{domain}/{user}";
  }
  return undefined;
}

/** The fixed directory a Maildir path or template starts with: what write permission must cover. */
export function maildirRootOf(maildir: string): string {
  const first = PLACEHOLDERS.map((p) => maildir.indexOf(p)).filter((i) => i !== -1);
  if (first.length === 0) return maildir.replace(/\/+$/, "");
  const prefix = maildir.slice(0, Math.min(...first));
  return prefix.slice(0, prefix.lastIndexOf("/")) || "/";
}
