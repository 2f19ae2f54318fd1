/**
 * Every setting Letterbox takes, one row each: its flag, its environment
 * variable (always `LETTERBOX_` and the flag in capitals with `_` for `-`),
 * its kind, default, bounds and help text. The parser in config.ts is a loop
 * over these rows, and `--help` is generated from them, so a default and its
 * help can never disagree. A new setting is one new row.
 *
 * @module
 */

import { LIMITS } from "../limits.ts";
import { LOG_FORMATS, LOG_LEVELS } from "../log.ts";

/** How a setting's text is read. */
export type SettingKind =
  /** Free text, one value. */
  | "text"
  /** Comma-separated values; the flag may be repeated. */
  | "list"
  /** On or off: `--flag`, `--flag=true|false`; in the environment 1, 0, true or false. */
  | "switch"
  /** A whole number within the bounds. */
  | "count"
  /** Octets, with K, M or G. */
  | "size"
  /** Seconds (fractions allowed), kept in milliseconds. */
  | "seconds"
  /** A duration such as 90s, 30m, 24h or 2d, kept in milliseconds. */
  | "duration"
  /** One of `choices`. */
  | "choice";

/** One setting. */
export interface Setting {
  /** The flag without its dashes. */
  readonly flag: string;
  readonly kind: SettingKind;
  /** The placeholder in `--help`, e.g. `HOST:PORT`. */
  readonly arg?: string;
  /** The default, as text the parser reads (so `--help` shows what applies). */
  readonly default?: string;
  /** How `--help` describes the default when it is not a fixed value. */
  readonly defaultText?: string;
  readonly min?: number;
  readonly max?: number;
  readonly choices?: readonly string[];
  /** Older environment names still read, for installations that used them. */
  readonly legacyEnv?: readonly string[];
  readonly help: string;
}

/** The environment variable of a setting. */
export function envName(setting: Setting): string {
  return `LETTERBOX_${setting.flag.toUpperCase().replaceAll("-", "_")}`;
}

/** Every setting, in the order `--help` lists them. */
export const SETTINGS = {
  listen: {
    flag: "listen",
    kind: "list",
    arg: "HOST:PORT",
    default: "127.0.0.1:2525",
    help: "plain SMTP listener offering STARTTLS (repeatable)",
  },
  listenTls: {
    flag: "listen-tls",
    kind: "list",
    arg: "HOST:PORT",
    help: "implicit-TLS listener, port 465 style (repeatable)",
  },
  hostname: {
    flag: "hostname",
    kind: "text",
    arg: "NAME",
    defaultText: "the system host name",
    help: "name in the greeting, EHLO and Received",
  },
  maildir: {
    flag: "maildir",
    kind: "text",
    arg: "PATH",
    default: "./Maildir",
    help: "Maildir, or a template with {domain}, {user}, {local}",
  },
  domains: {
    flag: "domain",
    kind: "list",
    arg: "NAME",
    defaultText: "any domain",
    legacyEnv: ["LETTERBOX_DOMAINS"],
    help: "accept mail for this domain (repeatable)",
  },
  tlsCert: { flag: "tls-cert", kind: "text", arg: "FILE", help: "PEM certificate chain" },
  tlsKey: { flag: "tls-key", kind: "text", arg: "FILE", help: "PEM private key" },
  noTls: { flag: "no-tls", kind: "switch", help: "offer no STARTTLS" },
  requireTls: {
    flag: "require-tls",
    kind: "switch",
    help: "refuse MAIL, RCPT and DATA before STARTTLS",
  },
  maxMessageSize: {
    flag: "max-message-size",
    kind: "size",
    arg: "BYTES",
    default: String(LIMITS.maxMessageSize),
    min: 1024,
    max: 2 ** 40,
    help: "largest message, e.g. 25M or 512K",
  },
  maxRecipients: {
    flag: "max-recipients",
    kind: "count",
    arg: "N",
    default: String(LIMITS.maxRecipients),
    min: 1,
    max: 100_000,
    help: "recipients per message",
  },
  maxErrors: {
    flag: "max-errors",
    kind: "count",
    arg: "N",
    default: String(LIMITS.maxErrors),
    min: 1,
    max: 1000,
    help: "bad commands before hanging up",
  },
  maxConnections: {
    flag: "max-connections",
    kind: "count",
    arg: "N",
    default: String(LIMITS.maxConnections),
    min: 1,
    max: 1_000_000,
    help: "connections at once",
  },
  maxConnectionsPerIp: {
    flag: "max-connections-per-ip",
    kind: "count",
    arg: "N",
    default: String(LIMITS.maxConnectionsPerIp),
    min: 1,
    max: 1_000_000,
    help: "connections at once from one address",
  },
  greetDelay: {
    flag: "greet-delay",
    kind: "seconds",
    arg: "SECONDS",
    default: String(LIMITS.greetDelay / 1000),
    min: 0,
    max: 86_400,
    help: "wait before the greeting; clients that talk first get 554 (0 = off)",
  },
  commandTimeout: {
    flag: "command-timeout",
    kind: "seconds",
    arg: "SECONDS",
    default: String(LIMITS.commandTimeout / 1000),
    min: 0.1,
    max: 86_400,
    help: "wait for a command",
  },
  dataTimeout: {
    flag: "data-timeout",
    kind: "seconds",
    arg: "SECONDS",
    default: String(LIMITS.dataTimeout / 1000),
    min: 0.1,
    max: 86_400,
    help: "whole DATA phase",
  },
  shutdownGrace: {
    flag: "shutdown-grace",
    kind: "seconds",
    arg: "SECONDS",
    default: "30",
    min: 0,
    max: 86_400,
    help: "time to finish messages on SIGTERM",
  },
  hooks: {
    flag: "hook",
    kind: "list",
    arg: "PATTERN=TARGET",
    legacyEnv: ["LETTERBOX_HOOKS"],
    help: "run for each message to PATTERN (address, @domain or *): an http(s) URL to POST " +
      "JSON to, or exec:/path/to/command; then ,from=@domain and ,auth=dmarc to fire only " +
      "for mail that DMARC authenticates as from there (repeatable)",
  },
  hookSecret: {
    flag: "hook-secret",
    kind: "text",
    arg: "SECRET",
    help: "sign webhook bodies with HMAC-SHA256",
  },
  hookSecretFile: {
    flag: "hook-secret-file",
    kind: "text",
    arg: "FILE",
    help: "read the webhook signing secret from FILE (a secret on the command line shows in ps)",
  },
  hookMaxAttachmentBytes: {
    flag: "hook-max-attachment-bytes",
    kind: "size",
    arg: "BYTES",
    default: "1M",
    min: 0,
    max: 2 ** 40,
    help: "attachments up to this go in the JSON as base64",
  },
  hookRetryFor: {
    flag: "hook-retry-for",
    kind: "duration",
    arg: "DURATION",
    default: "24h",
    help: "keep retrying a failing hook this long, e.g. 24h",
  },
  hookRetryDelay: {
    flag: "hook-retry-delay",
    kind: "seconds",
    arg: "SECONDS",
    default: "30",
    min: 0.01,
    max: 86_400,
    help: "first retry delay, doubling each time",
  },
  hookTimeout: {
    flag: "hook-timeout",
    kind: "seconds",
    arg: "SECONDS",
    default: "30",
    min: 0.1,
    max: 86_400,
    help: "time limit of one webhook call or command",
  },
  hookConcurrency: {
    flag: "hook-concurrency",
    kind: "count",
    arg: "N",
    default: "4",
    min: 1,
    max: 1000,
    help: "hooks running at once",
  },
  hookSpool: {
    flag: "hook-spool",
    kind: "text",
    arg: "PATH",
    defaultText: "letterbox-hooks in the Maildir root",
    help: "where hook jobs wait",
  },
  authentication: {
    flag: "authentication",
    kind: "choice",
    arg: "on|off",
    default: "on",
    choices: ["on", "off"],
    help: "verify SPF, DKIM, DMARC and ARC and add Authentication-Results",
  },
  dnsServer: {
    flag: "dns-server",
    kind: "text",
    arg: "HOST:PORT",
    defaultText: "the system resolver",
    help: "the DNS server authentication asks (a local caching resolver such as unbound)",
  },
  dmarcReject: {
    flag: "dmarc-reject",
    kind: "choice",
    arg: "ACTION",
    default: "honour",
    choices: ["honour", "junk", "off"],
    help: "DMARC fails where the domain says p=reject: honour (550 5.7.1), junk or off",
  },
  dmarcQuarantine: {
    flag: "dmarc-quarantine",
    kind: "choice",
    arg: "ACTION",
    default: "junk",
    choices: ["junk", "off"],
    help: "DMARC fails where the domain says p=quarantine: junk (the Junk folder) or off",
  },
  spfFail: {
    flag: "spf-fail",
    kind: "choice",
    arg: "ACTION",
    default: "tag",
    choices: ["tag", "reject"],
    help: "SPF fails and DMARC does not pass: tag (in the header) or reject (550 5.7.23)",
  },
  dnsTemperror: {
    flag: "dns-temperror",
    kind: "choice",
    arg: "ACTION",
    default: "deliver",
    choices: ["deliver", "tempfail"],
    help: "DNS failed during authentication: deliver (noted temperror) or tempfail (451)",
  },
  lmtp: {
    flag: "lmtp",
    kind: "text",
    arg: "ADDRESS",
    help: "deliver by LMTP to HOST:PORT or unix:/path (Dovecot's lmtp) instead of into Maildir",
  },
  lmtpConnections: {
    flag: "lmtp-connections",
    kind: "count",
    arg: "N",
    default: "16",
    min: 1,
    max: 1000,
    help: "LMTP connections at once (reused between messages)",
  },
  lmtpTimeout: {
    flag: "lmtp-timeout",
    kind: "seconds",
    arg: "SECONDS",
    default: "60",
    min: 0.1,
    max: 3600,
    help: "time for each LMTP reply (and for a free connection)",
  },
  rspamd: {
    flag: "rspamd",
    kind: "text",
    arg: "URL",
    help: "check each message with rspamd's worker at URL, e.g. http://127.0.0.1:11333",
  },
  rspamdTimeout: {
    flag: "rspamd-timeout",
    kind: "seconds",
    arg: "SECONDS",
    default: "10",
    min: 0.1,
    max: 600,
    help: "time for one rspamd check, waiting for a free slot included",
  },
  rspamdConcurrency: {
    flag: "rspamd-concurrency",
    kind: "count",
    arg: "N",
    default: "16",
    min: 1,
    max: 1000,
    help: "rspamd checks in flight at once",
  },
  rspamdFail: {
    flag: "rspamd-fail",
    kind: "choice",
    arg: "open|tempfail",
    default: "open",
    choices: ["open", "tempfail"],
    help: "rspamd down or slow: open (deliver, marked unchecked) or tempfail (451)",
  },
  rspamdMaxSize: {
    flag: "rspamd-max-size",
    kind: "size",
    arg: "BYTES",
    default: "4M",
    min: 1024,
    max: 2 ** 30,
    help: "larger messages are delivered unchecked (the whole message is held to send it)",
  },
  metrics: {
    flag: "metrics",
    kind: "text",
    arg: "HOST:PORT",
    help: "serve Prometheus metrics on /metrics and a health check on /healthz",
  },
  recipients: {
    flag: "recipients",
    kind: "text",
    arg: "FILE",
    help: "who we accept mail for, with aliases; re-read on SIGHUP",
  },
  rejectUnauthPipelining: {
    flag: "reject-unauth-pipelining",
    kind: "switch",
    help: "close with 554 5.5.0 when message content arrives before the 354 (RFC 2920 says wait)",
  },
  subaddressFolders: {
    flag: "subaddress-folders",
    kind: "switch",
    help: "deliver user+tag@ into the Maildir++ folder .tag",
  },
  proxyProtocol: {
    flag: "proxy-protocol",
    kind: "switch",
    help: "every listener expects a PROXY header (v1 or v2); or per listener: " +
      "--listen 0.0.0.0:25,proxy",
  },
  proxyFrom: {
    flag: "proxy-from",
    kind: "list",
    arg: "CIDR",
    default: "127.0.0.0/8,::1/128",
    help: "who may send PROXY headers (repeatable)",
  },
  logLevel: {
    flag: "log-level",
    kind: "choice",
    arg: "LEVEL",
    default: "info",
    choices: LOG_LEVELS,
    help: LOG_LEVELS.join(", "),
  },
  logFormat: {
    flag: "log-format",
    kind: "choice",
    arg: "FORMAT",
    default: "text",
    choices: LOG_FORMATS,
    help: "text or json",
  },
} as const satisfies Record<string, Setting>;

/** The name of one setting. */
export type SettingName = keyof typeof SETTINGS;

const HELP_COLUMN = 29;

/** The `--help` text, made from {@link SETTINGS}. */
export function helpText(): string {
  const lines = [
    "Letterbox: an inbound SMTP receiver that delivers to Maildir.",
    "",
    "Usage: letterbox [options]",
    "       letterbox hooks list [options]        hook jobs waiting and given up, in the spool",
    "       letterbox hooks retry ID [options]    queue a job again (then reload the server)",
    "       letterbox check HOST[:PORT] ...       probe an MX (see letterbox check --help)",
    "",
  ];
  for (const setting of Object.values(SETTINGS) as Setting[]) {
    const left = `  --${setting.flag}${"arg" in setting && setting.arg ? ` ${setting.arg}` : ""}`;
    const fallback = setting.defaultText ?? setting.default;
    const help = `${setting.help}${fallback === undefined ? "" : ` (default ${fallback})`}`;
    lines.push(
      left.length < HELP_COLUMN - 1
        ? `${left.padEnd(HELP_COLUMN)}${help}`
        : `${left}\n${" ".repeat(HELP_COLUMN)}${help}`,
    );
  }
  lines.push(
    "  --help, --version",
    "",
    "Every option can also be set with its environment variable: LETTERBOX_ and the",
    "option name in capitals with _ for -, e.g. LETTERBOX_MAX_MESSAGE_SIZE=25M or",
    "LETTERBOX_DOMAIN=example.com,example.org (list values are comma-separated; switches",
    "take 1 or 0). A flag beats its environment variable; switches take --flag=false too.",
    "",
  );
  return lines.join("\n");
}
