/**
 * Flags and environment variables become one typed, validated {@link Config}.
 * Flags beat the environment, the environment beats the defaults. Every
 * mistake is one {@link ConfigError} sentence that names the value and what
 * would be right.
 *
 * @module
 */

import { parseArgs as untypedParseArgs } from "@std/cli/parse-args";
import { type Cidr, LOOPBACK, parseCidr } from "../net/cidr.ts";
import { isDomainName } from "../protocol/address.ts";
import { maildirRootOf, templateProblem } from "../maildir/template.ts";
import { type Hook, parseHook } from "../hooks/hook.ts";
import { LIMITS } from "../limits.ts";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat } from "../log.ts";

/** A host and port to listen on. */
export interface ListenAddress {
  /** An IP address or host name, without brackets. */
  readonly hostname: string;
  /** The port; 0 asks the system for a free one. */
  readonly port: number;
  /** True when connections here begin with a PROXY protocol header. */
  readonly proxy?: boolean;
}

/** Everything Letterbox can be told at start. */
export interface Config {
  readonly listen: readonly ListenAddress[];
  readonly listenTls: readonly ListenAddress[];
  readonly hostname: string;
  readonly maildir: string;
  readonly domains: readonly string[];
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  readonly tls: boolean;
  readonly requireTls: boolean;
  readonly maxMessageSize: number;
  readonly maxRecipients: number;
  readonly maxErrors: number;
  readonly maxConnections: number;
  readonly maxConnectionsPerIp: number;
  /** Milliseconds; 0 = greet at once. */
  readonly greetDelay: number;
  /** Milliseconds. */
  readonly commandTimeout: number;
  /** Milliseconds. */
  readonly dataTimeout: number;
  /** Milliseconds. */
  readonly shutdownGrace: number;
  /** Hooks run for each delivered message. */
  readonly hooks: readonly Hook[];
  /** Hook settings; durations in milliseconds. */
  readonly hookSecret?: string;
  readonly hookMaxAttachmentBytes: number;
  readonly hookRetryFor: number;
  readonly hookRetryDelay: number;
  readonly hookTimeout: number;
  readonly hookConcurrency: number;
  /** Where hook jobs wait: inside the Maildir root, so the same write permission covers it. */
  readonly hookSpool: string;
  /** Where to serve Prometheus metrics and /healthz, when wanted. */
  readonly metrics?: ListenAddress;
  /** The recipients file, when there is one. */
  readonly recipients?: string;
  /** Deliver user+tag@ into the Maildir++ folder .tag. */
  readonly subaddressFolders: boolean;
  /** Address ranges allowed to send PROXY headers. */
  readonly proxyFrom: readonly Cidr[];
  readonly logLevel: typeof LOG_LEVELS[number];
  readonly logFormat: LogFormat;
}

/** A configuration mistake; its message is the one line printed before exit code 2. */
export class ConfigError extends Error {
  /** Creates the error with a one-sentence message. */
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** What the command line asked for besides running. */
export type Invocation =
  | { readonly kind: "run"; readonly config: Config }
  | { readonly kind: "help" }
  | { readonly kind: "version" };

interface ParseOptions {
  string: string[];
  boolean: string[];
  collect: string[];
  negatable: string[];
  default: Record<string, unknown>;
  unknown: (arg: string) => boolean;
}
type ParsedArgs = Record<string, unknown> & { _: (string | number)[] };
// The std parser ships without types (it comes from the deno-std npm package).
const parseArgs = untypedParseArgs as (args: string[], options: ParseOptions) => ParsedArgs;

/** Each setting: its flag, its environment variable, and how to read it. */
const SETTINGS = {
  listen: { flag: "listen", env: "LETTERBOX_LISTEN", list: true },
  listenTls: { flag: "listen-tls", env: "LETTERBOX_LISTEN_TLS", list: true },
  hostname: { flag: "hostname", env: "LETTERBOX_HOSTNAME", list: false },
  maildir: { flag: "maildir", env: "LETTERBOX_MAILDIR", list: false },
  domains: { flag: "domain", env: "LETTERBOX_DOMAINS", list: true },
  tlsCert: { flag: "tls-cert", env: "LETTERBOX_TLS_CERT", list: false },
  tlsKey: { flag: "tls-key", env: "LETTERBOX_TLS_KEY", list: false },
  maxMessageSize: { flag: "max-message-size", env: "LETTERBOX_MAX_MESSAGE_SIZE", list: false },
  maxRecipients: { flag: "max-recipients", env: "LETTERBOX_MAX_RECIPIENTS", list: false },
  maxErrors: { flag: "max-errors", env: "LETTERBOX_MAX_ERRORS", list: false },
  maxConnections: { flag: "max-connections", env: "LETTERBOX_MAX_CONNECTIONS", list: false },
  maxConnectionsPerIp: {
    flag: "max-connections-per-ip",
    env: "LETTERBOX_MAX_CONNECTIONS_PER_IP",
    list: false,
  },
  greetDelay: { flag: "greet-delay", env: "LETTERBOX_GREET_DELAY", list: false },
  commandTimeout: { flag: "command-timeout", env: "LETTERBOX_COMMAND_TIMEOUT", list: false },
  dataTimeout: { flag: "data-timeout", env: "LETTERBOX_DATA_TIMEOUT", list: false },
  shutdownGrace: { flag: "shutdown-grace", env: "LETTERBOX_SHUTDOWN_GRACE", list: false },
  logLevel: { flag: "log-level", env: "LETTERBOX_LOG_LEVEL", list: false },
  logFormat: { flag: "log-format", env: "LETTERBOX_LOG_FORMAT", list: false },
  proxyFrom: { flag: "proxy-from", env: "LETTERBOX_PROXY_FROM", list: true },
  recipients: { flag: "recipients", env: "LETTERBOX_RECIPIENTS", list: false },
  metrics: { flag: "metrics", env: "LETTERBOX_METRICS", list: false },
  hooks: { flag: "hook", env: "LETTERBOX_HOOKS", list: true },
  hookSecret: { flag: "hook-secret", env: "LETTERBOX_HOOK_SECRET", list: false },
  hookMaxAttachmentBytes: {
    flag: "hook-max-attachment-bytes",
    env: "LETTERBOX_HOOK_MAX_ATTACHMENT_BYTES",
    list: false,
  },
  hookRetryFor: { flag: "hook-retry-for", env: "LETTERBOX_HOOK_RETRY_FOR", list: false },
  hookRetryDelay: { flag: "hook-retry-delay", env: "LETTERBOX_HOOK_RETRY_DELAY", list: false },
  hookTimeout: { flag: "hook-timeout", env: "LETTERBOX_HOOK_TIMEOUT", list: false },
  hookConcurrency: { flag: "hook-concurrency", env: "LETTERBOX_HOOK_CONCURRENCY", list: false },
  hookSpool: { flag: "hook-spool", env: "LETTERBOX_HOOK_SPOOL", list: false },
} as const;

const BOOLEAN_SETTINGS = {
  proxyProtocol: { flag: "proxy-protocol", env: "LETTERBOX_PROXY_PROTOCOL" },
  subaddressFolders: { flag: "subaddress-folders", env: "LETTERBOX_SUBADDRESS_FOLDERS" },
  noTls: { flag: "no-tls", env: "LETTERBOX_NO_TLS" },
  requireTls: { flag: "require-tls", env: "LETTERBOX_REQUIRE_TLS" },
} as const;

/** The defaults, in one place. */
export const DEFAULTS = {
  listen: "127.0.0.1:2525",
  maildir: "./Maildir",
  logLevel: "info",
  logFormat: "text",
  shutdownGraceSeconds: 30,
} as const;

/** The `--help` text. */
export const HELP = `Letterbox: an inbound SMTP receiver that delivers to Maildir.

Usage: letterbox [options]

  --listen HOST:PORT         plain SMTP listener offering STARTTLS (repeatable; default ${DEFAULTS.listen})
  --listen-tls HOST:PORT     implicit-TLS listener, port 465 style (repeatable)
  --hostname NAME            name in the greeting, EHLO and Received (default: system host name)
  --maildir PATH             Maildir, or a template with {domain}, {user}, {local} (default ${DEFAULTS.maildir})
  --domain NAME              accept mail for this domain (repeatable; default: any domain)
  --tls-cert FILE            PEM certificate chain
  --tls-key FILE             PEM private key
  --no-tls                   offer no STARTTLS
  --require-tls              refuse MAIL, RCPT and DATA before STARTTLS
  --max-message-size BYTES   largest message, e.g. 25M or 512K (default ${LIMITS.maxMessageSize})
  --max-recipients N         recipients per message (default ${LIMITS.maxRecipients})
  --max-errors N             bad commands before hanging up (default ${LIMITS.maxErrors})
  --max-connections N        connections at once (default ${LIMITS.maxConnections})
  --max-connections-per-ip N connections at once from one address (default ${LIMITS.maxConnectionsPerIp})
  --greet-delay SECONDS      wait before the greeting; clients that talk first get 554 (default 0 = off)
  --command-timeout SECONDS  wait for a command (default ${LIMITS.commandTimeout / 1000})
  --data-timeout SECONDS     whole DATA phase (default ${LIMITS.dataTimeout / 1000})
  --shutdown-grace SECONDS   time to finish messages on SIGTERM (default ${DEFAULTS.shutdownGraceSeconds})
  --hook PATTERN=TARGET      run for each message to PATTERN (address, @domain or *): an http(s) URL
                             to POST JSON to, or exec:/path/to/command (repeatable)
  --hook-secret SECRET       sign webhook bodies with HMAC-SHA256
  --hook-max-attachment-bytes BYTES  attachments up to this go in the JSON as base64 (default 1M)
  --hook-retry-for DURATION  keep retrying a failing hook this long, e.g. 24h (default 24h)
  --hook-retry-delay SECONDS first retry delay, doubling each time (default 30)
  --hook-timeout SECONDS     time limit of one webhook call or command (default 30)
  --hook-concurrency N       hooks running at once (default 4)
  --hook-spool PATH          where hook jobs wait (default: letterbox-hooks in the Maildir root)
  --metrics HOST:PORT        serve Prometheus metrics on /metrics and a health check on /healthz
  --recipients FILE          who we accept mail for, with aliases; re-read on SIGHUP
  --subaddress-folders       deliver user+tag@ into the Maildir++ folder .tag
  --proxy-protocol           every listener expects a PROXY header (v1 or v2); or per listener: --listen 0.0.0.0:25,proxy
  --proxy-from CIDR          who may send PROXY headers (repeatable; default 127.0.0.0/8 and ::1)
  --log-level LEVEL          ${LOG_LEVELS.join(", ")} (default ${DEFAULTS.logLevel})
  --log-format FORMAT        text or json (default ${DEFAULTS.logFormat})
  --help, --version

Every option can also be set with its environment variable: LETTERBOX_ and the
option name in capitals with _ for -, e.g. LETTERBOX_MAX_MESSAGE_SIZE=25M;
LETTERBOX_DOMAIN is LETTERBOX_DOMAINS and list values are comma-separated.
`;

/** Where a value came from, for error messages. */
function source(flag: string, fromFlag: boolean, env: string): string {
  return fromFlag ? `--${flag}` : env;
}

/**
 * Reads the configuration from command-line arguments and an environment
 * lookup; throws {@link ConfigError} on any mistake.
 */
export function parseConfig(
  args: string[],
  env: (name: string) => string | undefined,
  systemHostname: () => string,
): Invocation {
  const unknown: string[] = [];
  const parsed = parseArgs(args, {
    string: Object.values(SETTINGS).map((s) => s.flag),
    boolean: [
      "help",
      "version",
      "tls",
      ...Object.values(BOOLEAN_SETTINGS).map((s) => s.flag).filter((f) => f !== "no-tls"),
    ],
    collect: Object.values(SETTINGS).filter((s) => s.list).map((s) => s.flag),
    negatable: ["tls"],
    // Only an explicit --no-tls turns TLS off.
    default: { tls: true },
    unknown: (arg) => {
      unknown.push(arg);
      return false;
    },
  });
  if (unknown.length > 0) {
    throw new ConfigError(
      `Cannot use ${JSON.stringify(unknown[0])}: it is not an option; see --help`,
    );
  }
  if (parsed._.length > 0) {
    throw new ConfigError(
      `Cannot use ${JSON.stringify(String(parsed._[0]))}: Letterbox takes only options; see --help`,
    );
  }
  if (parsed.help) return { kind: "help" };
  if (parsed.version) return { kind: "version" };

  // One value per setting: the flag if given, else the environment variable.
  const values = {} as Record<keyof typeof SETTINGS, { value: string[]; from: string } | undefined>;
  for (
    const [key, setting] of Object.entries(SETTINGS) as [
      keyof typeof SETTINGS,
      typeof SETTINGS[keyof typeof SETTINGS],
    ][]
  ) {
    const raw = parsed[setting.flag];
    // The parser gives [] for a list flag that was not used.
    if (raw !== undefined && !(Array.isArray(raw) && raw.length === 0)) {
      const list = (Array.isArray(raw) ? raw : [raw]).map(String);
      if (!setting.list && list.length > 1) {
        throw new ConfigError(`Cannot use --${setting.flag} more than once`);
      }
      const value = setting.list ? list.flatMap((item) => item.split(",")) : list;
      if (value.length === 0) continue;
      values[key] = {
        value: value.map((v) => v.trim()),
        from: source(setting.flag, true, setting.env),
      };
      continue;
    }
    const fromEnv = env(setting.env);
    if (fromEnv !== undefined && fromEnv !== "") {
      const value = setting.list ? fromEnv.split(",").map((v) => v.trim()) : [fromEnv];
      values[key] = { value, from: setting.env };
    }
  }
  const single = (key: keyof typeof SETTINGS) => values[key]?.value[0];
  const from = (key: keyof typeof SETTINGS) => values[key]?.from ?? `--${SETTINGS[key].flag}`;

  const flag = (key: keyof typeof BOOLEAN_SETTINGS): boolean => {
    const setting = BOOLEAN_SETTINGS[key];
    // --no-tls is the parser's negation of --tls; every other switch is itself.
    if (key === "noTls" ? parsed.tls === false : parsed[setting.flag] === true) return true;
    const raw = env(setting.env);
    if (raw === undefined || raw === "" || raw === "0" || raw.toLowerCase() === "false") {
      return false;
    }
    if (raw === "1" || raw.toLowerCase() === "true") return true;
    throw new ConfigError(`Cannot use ${setting.env}=${JSON.stringify(raw)}: use 1 or 0`);
  };

  const allProxied = flag("proxyProtocol");
  const listen = parseListenList(
    values.listen?.value ?? [DEFAULTS.listen],
    from("listen"),
    allProxied,
  );
  const listenTls = parseListenList(values.listenTls?.value ?? [], from("listenTls"), allProxied);
  const proxyFrom = (values.proxyFrom?.value ?? LOOPBACK).map((text) => {
    const range = parseCidr(text);
    if (!range) {
      throw new ConfigError(
        `Cannot use ${from("proxyFrom")} ${
          JSON.stringify(text)
        }: write an address range such as 10.0.0.0/8 or 2001:db8::/32`,
      );
    }
    return range;
  });

  const hostname = single("hostname") ?? systemHostname();
  if (!isDomainName(hostname)) {
    throw new ConfigError(
      `Cannot use ${from("hostname")} ${
        JSON.stringify(hostname)
      }: it must be a host name such as mx.example.com`,
    );
  }

  const maildir = single("maildir") ?? DEFAULTS.maildir;
  const problem = maildir === "" ? "it must not be empty" : templateProblem(maildir);
  if (problem) {
    throw new ConfigError(`Cannot use ${from("maildir")} ${JSON.stringify(maildir)}: ${problem}`);
  }

  const domains = (values.domains?.value ?? []).map((domain) => {
    if (!isDomainName(domain)) {
      throw new ConfigError(
        `Cannot use ${from("domains")} ${
          JSON.stringify(domain)
        }: it must be a domain name such as example.com`,
      );
    }
    return domain.toLowerCase();
  });

  const noTls = flag("noTls");
  const requireTls = flag("requireTls");
  const tlsCert = single("tlsCert");
  const tlsKey = single("tlsKey");
  if ((tlsCert === undefined) !== (tlsKey === undefined)) {
    throw new ConfigError(
      "Cannot use --tls-cert without --tls-key: give both, or neither for a self-signed certificate",
    );
  }
  if (noTls && requireTls) {
    throw new ConfigError("Cannot use --require-tls with --no-tls: choose one");
  }
  if (noTls && listenTls.length > 0) {
    throw new ConfigError("Cannot use --listen-tls with --no-tls: choose one");
  }
  if (noTls && tlsCert) throw new ConfigError("Cannot use --tls-cert with --no-tls: choose one");

  const logLevel = single("logLevel") ?? DEFAULTS.logLevel;
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw new ConfigError(
      `Cannot use ${from("logLevel")} ${JSON.stringify(logLevel)}: use one of ${
        LOG_LEVELS.join(", ")
      }`,
    );
  }
  const logFormat = single("logFormat") ?? DEFAULTS.logFormat;
  if (!(LOG_FORMATS as readonly string[]).includes(logFormat)) {
    throw new ConfigError(
      `Cannot use ${from("logFormat")} ${JSON.stringify(logFormat)}: use text or json`,
    );
  }

  const number = (
    key: keyof typeof SETTINGS,
    fallback: number,
    min: number,
    max: number,
    inSeconds = false,
  ): number => {
    const raw = single(key);
    if (raw === undefined) return fallback;
    const value = key === "maxMessageSize" || key === "hookMaxAttachmentBytes"
      ? parseSize(raw)
      : (inSeconds ? /^\d+(\.\d{1,3})?$/ : /^\d+$/).test(raw)
      ? Number(raw)
      : NaN;
    if (!Number.isFinite(value) || value < min || value > max) {
      const what = key === "maxMessageSize"
        ? "a size such as 26214400, 25M or 512K"
        : inSeconds
        ? "a number of seconds"
        : "a whole number";
      throw new ConfigError(
        `Cannot use ${from(key)} ${JSON.stringify(raw)}: it must be ${what} from ${min} to ${max}`,
      );
    }
    return value;
  };

  const hooks = (values.hooks?.value ?? []).map((text) => {
    const hook = parseHook(text);
    if (typeof hook === "string") {
      throw new ConfigError(`Cannot use ${from("hooks")} ${JSON.stringify(text)}: ${hook}`);
    }
    return hook;
  });
  const retryForText = single("hookRetryFor");
  const hookRetryFor = retryForText === undefined ? 86_400_000 : parseDuration(retryForText);
  if (!Number.isFinite(hookRetryFor) || hookRetryFor <= 0) {
    throw new ConfigError(
      `Cannot use ${from("hookRetryFor")} ${
        JSON.stringify(retryForText)
      }: write a duration such as 90s, 30m, 24h or 2d`,
    );
  }
  const maildirRoot = maildirRootOf(maildir);

  // Durations are given in seconds (fractions allowed) and kept in milliseconds.
  const seconds = (key: keyof typeof SETTINGS, fallbackMs: number, min: number): number =>
    Math.round(number(key, fallbackMs / 1000, min, 86_400, true) * 1000);

  return {
    kind: "run",
    config: {
      listen,
      listenTls,
      hostname: hostname.toLowerCase(),
      maildir,
      domains,
      tlsCert,
      tlsKey,
      tls: !noTls,
      requireTls,
      maxMessageSize: number("maxMessageSize", LIMITS.maxMessageSize, 1024, 2 ** 40),
      maxRecipients: number("maxRecipients", LIMITS.maxRecipients, 1, 100_000),
      maxErrors: number("maxErrors", LIMITS.maxErrors, 1, 1000),
      maxConnections: number("maxConnections", LIMITS.maxConnections, 1, 1_000_000),
      maxConnectionsPerIp: number("maxConnectionsPerIp", LIMITS.maxConnectionsPerIp, 1, 1_000_000),
      greetDelay: seconds("greetDelay", LIMITS.greetDelay, 0),
      commandTimeout: seconds("commandTimeout", LIMITS.commandTimeout, 0.1),
      dataTimeout: seconds("dataTimeout", LIMITS.dataTimeout, 0.1),
      shutdownGrace: seconds("shutdownGrace", DEFAULTS.shutdownGraceSeconds * 1000, 0),
      proxyFrom,
      recipients: single("recipients"),
      hooks,
      hookSecret: single("hookSecret"),
      hookMaxAttachmentBytes: number("hookMaxAttachmentBytes", 1_048_576, 0, 2 ** 40),
      hookRetryFor,
      hookRetryDelay: seconds("hookRetryDelay", 30_000, 0.01),
      hookTimeout: seconds("hookTimeout", 30_000, 0.1),
      hookConcurrency: number("hookConcurrency", 4, 1, 1000),
      // Inside the Maildir root, so that one write permission covers both. Under a
      // template a leading dot keeps it out of reach of every {domain} and {user}
      // (they never start with one); in a single Maildir a plain name keeps it
      // from looking like a Maildir++ folder to Dovecot.
      hookSpool: single("hookSpool") ??
        (maildirRoot === maildir.replace(/\/+$/, "")
          ? `${maildirRoot}/letterbox-hooks`
          : `${maildirRoot}/.letterbox-hooks`),
      metrics: single("metrics") === undefined
        ? undefined
        : parseListen(single("metrics")!, from("metrics")),
      subaddressFolders: flag("subaddressFolders"),
      logLevel: logLevel as Config["logLevel"],
      logFormat: logFormat as LogFormat,
    },
  };
}

/** Parses `90s`, `30m`, `24h`, `2d` or plain seconds into milliseconds; NaN otherwise. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)([smhd]?)$/.exec(text.trim());
  if (!match) return NaN;
  return Number(match[1]) *
    {
      "": 1000,
      s: 1000,
      m: 60_000,
      h: 3_600_000,
      d: 86_400_000,
    }[match[2] as "" | "s" | "m" | "h" | "d"];
}

/** Parses `25M`, `512K`, `1G` or plain octets; NaN when it is none of these. */
export function parseSize(text: string): number {
  const match = /^(\d+)([KMG]?)$/i.exec(text.trim());
  if (!match) return NaN;
  const unit =
    { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[match[2].toUpperCase() as "" | "K" | "M" | "G"];
  return Number(match[1]) * unit;
}

/**
 * Parses a list of listen addresses, where an item `proxy` marks the address
 * before it as one that begins with a PROXY header (`0.0.0.0:25,proxy`).
 */
export function parseListenList(
  items: readonly string[],
  from: string,
  allProxied: boolean,
): ListenAddress[] {
  const addresses: ListenAddress[] = [];
  for (const item of items) {
    if (item === "proxy") {
      const last = addresses.pop();
      if (!last) {
        throw new ConfigError(
          `Cannot use ${from} "proxy" alone: write it after an address, e.g. 0.0.0.0:25,proxy`,
        );
      }
      addresses.push({ ...last, proxy: true });
      continue;
    }
    addresses.push({ ...parseListen(item, from), proxy: allProxied });
  }
  return addresses;
}

/** Parses `HOST:PORT` or `[IPV6]:PORT`; throws {@link ConfigError} naming `from`. */
export function parseListen(text: string, from: string): ListenAddress {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) {
    throw new ConfigError(
      `Cannot use ${from} ${
        JSON.stringify(text)
      }: write HOST:PORT with a port from 0 to 65535, e.g. 127.0.0.1:2525 or [::1]:2525`,
    );
  }
  const hostname = match[1] ?? match[2];
  if (match[2] !== undefined && !/^(?:\d{1,3}(?:\.\d{1,3}){3}|[A-Za-z0-9.-]+)$/.test(hostname)) {
    throw new ConfigError(
      `Cannot use ${from} ${JSON.stringify(text)}: ${
        JSON.stringify(hostname)
      } is not an address or host name`,
    );
  }
  return { hostname, port };
}
