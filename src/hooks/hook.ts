/**
 * What a hook is: a pattern (an address, a domain or `*`) and a target (a URL
 * to POST to, or a command to run). Pure parsing and matching.
 *
 * @module
 */

/** Where a hook sends its message. */
export type HookTarget =
  | { readonly kind: "webhook"; readonly url: string }
  | { readonly kind: "exec"; readonly command: string };

/** One `--hook PATTERN=TARGET[,from=@domain][,auth=dmarc]`. */
export interface Hook {
  /** As written, for logs and job files. */
  readonly text: string;
  /** `alice@example.com`, `@example.com` or `*`, lower-cased. */
  readonly pattern: string;
  readonly target: HookTarget;
  /** When given, the From: header's address or domain must match one (`a@x.com`, `@x.com`). */
  readonly from?: readonly string[];
  /** `dmarc`: fire only when DMARC passed, so that the From: domain is the real sender's. */
  readonly auth?: "dmarc";
}

/** What the sender authentication found, as far as a hook's conditions need it. */
export interface SenderFacts {
  /** The From: header's address, lower-cased, or null. */
  readonly from: string | null;
  /** The DMARC result (`pass`, `fail`, `none`, ...), or null when authentication is off. */
  readonly dmarc: string | null;
}

/** True when a `,from=` / `,auth=` item belongs to the hook before it. */
export function isHookOption(text: string): boolean {
  return /^(from|auth)=/i.test(text.trim());
}

/** Adds one `from=` or `auth=` item to a hook; returns the reason it is wrong as a string. */
export function withHookOption(hook: Hook, text: string): Hook | string {
  const equals = text.indexOf("=");
  const key = text.slice(0, equals).trim().toLowerCase();
  const value = text.slice(equals + 1).trim().toLowerCase();
  const written = `${hook.text},${text.trim()}`;
  if (key === "auth") {
    if (value !== "dmarc") return `auth=${value} is unknown: write auth=dmarc`;
    return { ...hook, text: written, auth: "dmarc" };
  }
  if (!/^[^@\s,]*@[^@\s,]+$/.test(value)) {
    return `from=${value} must be an address or @domain, e.g. from=@example.com`;
  }
  return { ...hook, text: written, from: [...hook.from ?? [], value] };
}

/**
 * Whether a hook's sender conditions hold: with `auth=dmarc` DMARC must have
 * passed; with `from=` the From: address must match one of them.
 */
export function senderAllowed(hook: Hook, sender: SenderFacts | undefined): boolean {
  if (hook.auth === "dmarc" && sender?.dmarc !== "pass") return false;
  if (!hook.from) return true;
  const from = sender?.from;
  if (!from) return false;
  return hook.from.some((pattern) =>
    pattern.startsWith("@") ? from.endsWith(pattern) : from === pattern
  );
}

/** Parses `PATTERN=TARGET`; returns the reason it is wrong as a string. */
export function parseHook(text: string): Hook | string {
  const equals = text.indexOf("=");
  if (equals <= 0) {
    return "write PATTERN=TARGET, e.g. deploy@example.com=https://ci.example.com/hook";
  }
  const pattern = text.slice(0, equals).trim().toLowerCase();
  const targetText = text.slice(equals + 1).trim();
  if (pattern !== "*" && !/^[^@\s]*@[^@\s]+$/.test(pattern)) {
    return `the pattern ${JSON.stringify(pattern)} must be an address, @domain or *`;
  }
  if (targetText.startsWith("exec:")) {
    const command = targetText.slice(5);
    // No shell: the operator names one program; arguments would need a shell.
    if (!command.startsWith("/") || /\s/.test(command)) {
      return `the command ${JSON.stringify(command)} must be an absolute path without arguments`;
    }
    return { text, pattern, target: { kind: "exec", command } };
  }
  let url: URL;
  try {
    url = new URL(targetText);
  } catch {
    return `the target ${
      JSON.stringify(targetText)
    } must be an http(s):// URL or exec:/path/to/command`;
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    return `the target ${
      JSON.stringify(targetText)
    } must be an http(s):// URL or exec:/path/to/command`;
  }
  return { text, pattern, target: { kind: "webhook", url: url.href } };
}

/**
 * The recipients (`local@domain`) the hook's pattern matches: what the hook is
 * told of, so that it never learns of Bcc recipients that are none of its
 * business. Empty when the hook does not fire.
 */
export function matchingRecipients(hook: Hook, recipients: readonly string[]): string[] {
  if (hook.pattern === "*") return [...recipients];
  return recipients.filter((recipient) => {
    const lower = recipient.toLowerCase();
    return hook.pattern.startsWith("@") ? lower.endsWith(hook.pattern) : lower === hook.pattern;
  });
}
