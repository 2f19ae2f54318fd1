/**
 * Flags and environment variables become one typed, validated {@link Config}.
 * Flags beat the environment, the environment beats the defaults. Every
 * mistake is one {@link ConfigError} sentence that names the value and what
 * would be right.
 *
 * @module
 */

import { type Cidr, parseCidr } from "../net/cidr.ts";
import { isDomainName } from "../protocol/address.ts";
import { maildirRootOf, templateProblem } from "../maildir/template.ts";
import { type Hook, isHookOption, parseHook, withHookOption } from "../hooks/hook.ts";
import { type NameServer, parseNameServer } from "../dns/resolver.ts";
import { type LmtpAddress, parseLmtpAddress } from "../lmtp/client.ts";
import type { AuthenticationPolicy } from "../pipeline/checks/authentication.ts";
import type { LOG_LEVELS, LogFormat } from "../log.ts";
import { envName, helpText, type Setting, type SettingName, SETTINGS } from "./settings.ts";

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
  /** Close with 554 5.5.0 when message content arrives before the 354. */
  readonly rejectUnauthPipelining: boolean;
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
  /** A file holding the hook secret, read at start. */
  readonly hookSecretFile?: string;
  readonly hookMaxAttachmentBytes: number;
  readonly hookRetryFor: number;
  readonly hookRetryDelay: number;
  readonly hookTimeout: number;
  readonly hookConcurrency: number;
  /** Where hook jobs wait: inside the Maildir root, so the same write permission covers it. */
  readonly hookSpool: string;
  /** Sender authentication, when on (the default). */
  readonly authentication?: {
    /** The DNS server to ask; the system's resolver when undefined. */
    readonly dnsServer?: NameServer;
    readonly policy: AuthenticationPolicy;
  };
  /** LMTP delivery instead of Maildir, when `--lmtp` names the server. */
  readonly lmtp?: {
    readonly address: LmtpAddress;
    readonly connections: number;
    /** Milliseconds. */
    readonly timeout: number;
    /** Where messages wait while they arrive, past what is held in memory. */
    readonly spool: string;
  };
  /** rspamd as the content filter, when `--rspamd` names its worker. */
  readonly rspamd?: {
    readonly url: string;
    /** Milliseconds. */
    readonly timeout: number;
    readonly concurrency: number;
    readonly fail: "open" | "tempfail";
    readonly maxSize: number;
  };
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

/** The `--help` text. */
export const HELP: string = helpText();

/** A setting's text as given, and where it came from (for error messages). */
interface Given {
  readonly texts: string[];
  readonly from: string;
}

/** Reads the command line: every flag must be a known setting; a flag beats the environment. */
function readArgs(args: readonly string[]): Map<SettingName, Given> | "help" | "version" {
  const byFlag = new Map(
    (Object.entries(SETTINGS) as [SettingName, Setting][]).map(([name, s]) => [s.flag, name]),
  );
  const given = new Map<SettingName, Given>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--help" || arg === "-h") return "help";
    if (arg === "--version") return "version";
    if (!arg.startsWith("--")) {
      throw new ConfigError(
        `Cannot use ${JSON.stringify(arg)}: Letterbox takes only options; see --help`,
      );
    }
    const equals = arg.indexOf("=");
    const flag = arg.slice(2, equals === -1 ? undefined : equals);
    const name = byFlag.get(flag);
    if (name === undefined) {
      throw new ConfigError(
        `Cannot use ${JSON.stringify(equals === -1 ? arg : arg.slice(0, equals))}: ` +
          "it is not an option; see --help",
      );
    }
    const setting: Setting = SETTINGS[name];
    let text: string;
    if (equals !== -1) text = arg.slice(equals + 1);
    else if (setting.kind === "switch") text = "true";
    else if (i + 1 < args.length) text = args[++i];
    else throw new ConfigError(`Cannot use --${flag}: it needs a value; see --help`);
    // A list flag adds up; any other given again replaces itself (the last one wins).
    const known = setting.kind === "list" ? given.get(name)?.texts ?? [] : [];
    given.set(name, { texts: [...known, text], from: `--${flag}` });
  }
  return given;
}

/** Refuses a `LETTERBOX_` variable that names no setting, suggesting the nearest one. */
function checkEnvNames(names: readonly string[]): void {
  const known = new Set<string>();
  for (const setting of Object.values(SETTINGS) as Setting[]) {
    known.add(envName(setting));
    for (const legacy of setting.legacyEnv ?? []) known.add(legacy);
  }
  for (const name of names) {
    if (!name.startsWith("LETTERBOX_") || known.has(name)) continue;
    const nearest = [...known].map((k) => ({ k, d: editDistance(k, name) }))
      .sort((a, b) => a.d - b.d)[0];
    throw new ConfigError(
      `Cannot use ${name}: it is not a setting` +
        (nearest && nearest.d <= 3 ? `; did you mean ${nearest.k}?` : "; see --help"),
    );
  }
}

// Levenshtein distance, for suggesting the setting a misspelt name meant.
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j] + 1,
        current[j - 1] + 1,
        previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length];
}

/**
 * Reads the configuration from command-line arguments and an environment
 * lookup; throws {@link ConfigError} on any mistake. `envNames` are the
 * variables set in the environment: a `LETTERBOX_` name that is no setting is
 * refused like an unknown flag, since a misspelt one would silently do nothing.
 */
export function parseConfig(
  args: string[],
  env: (name: string) => string | undefined,
  systemHostname: () => string,
  envNames: readonly string[] = [],
): Invocation {
  const fromArgs = readArgs(args);
  if (fromArgs === "help") return { kind: "help" };
  if (fromArgs === "version") return { kind: "version" };
  checkEnvNames(envNames);

  // One value per setting: the flag if given, else the environment, else the default.
  const raw = (name: SettingName): Given | undefined => {
    const flagged = fromArgs.get(name);
    if (flagged) return flagged;
    const setting: Setting = SETTINGS[name];
    for (const variable of [envName(setting), ...(setting.legacyEnv ?? [])]) {
      const text = env(variable);
      if (text !== undefined && text !== "") return { texts: [text], from: variable };
    }
    return undefined;
  };
  const problem = (given: Given, text: string, why: string): ConfigError =>
    new ConfigError(`Cannot use ${given.from} ${JSON.stringify(text)}: ${why}`);
  const from = (name: SettingName): string => raw(name)?.from ?? `--${SETTINGS[name].flag}`;
  const givenOf = (name: SettingName): Given => raw(name) ?? { texts: [], from: from(name) };

  const list = (name: SettingName): string[] | undefined => {
    const setting: Setting = SETTINGS[name];
    const texts = raw(name)?.texts ??
      (setting.default === undefined ? undefined : [setting.default]);
    return texts?.flatMap((text) => text.split(",")).map((item) => item.trim());
  };
  const text = (name: SettingName): string | undefined =>
    raw(name)?.texts[0] ?? (SETTINGS[name] as Setting).default;

  const switchOn = (name: SettingName): boolean => {
    const given = raw(name);
    if (!given) return false;
    const value = given.texts[0].toLowerCase();
    if (value === "1" || value === "true") return true;
    if (value === "0" || value === "false") return false;
    throw given.from.startsWith("--")
      ? problem(given, given.texts[0], "write true or false")
      : new ConfigError(`Cannot use ${given.from}=${JSON.stringify(given.texts[0])}: use 1 or 0`);
  };

  const number = (name: SettingName): number => {
    const setting: Setting = SETTINGS[name];
    const value = text(name)!;
    const parsed = setting.kind === "size"
      ? parseSize(value)
      : (setting.kind === "seconds" ? /^\d+(\.\d{1,3})?$/ : /^\d+$/).test(value)
      ? Number(value)
      : NaN;
    const min = setting.min ?? 0;
    const max = setting.max ?? Number.MAX_SAFE_INTEGER;
    if (!Number.isFinite(parsed) || parsed < min || parsed > max) {
      const what = setting.kind === "size"
        ? "a size such as 26214400, 25M or 512K"
        : setting.kind === "seconds"
        ? "a number of seconds"
        : "a whole number";
      throw problem(givenOf(name), value, `it must be ${what} from ${min} to ${max}`);
    }
    return setting.kind === "seconds" ? Math.round(parsed * 1000) : parsed;
  };

  const choice = (name: SettingName): string => {
    const setting: Setting = SETTINGS[name];
    const value = text(name)!;
    const choices = setting.choices ?? [];
    if (!choices.includes(value)) {
      throw problem(
        givenOf(name),
        value,
        choices.length === 2
          ? `use ${choices[0]} or ${choices[1]}`
          : `use one of ${choices.join(", ")}`,
      );
    }
    return value;
  };

  const allProxied = switchOn("proxyProtocol");
  const listen = parseListenList(list("listen")!, from("listen"), allProxied);
  const listenTls = parseListenList(list("listenTls") ?? [], from("listenTls"), allProxied);
  const proxyFrom = list("proxyFrom")!.map((item) => {
    const range = parseCidr(item);
    if (!range) {
      throw problem(
        givenOf("proxyFrom"),
        item,
        "write an address range such as 10.0.0.0/8 or 2001:db8::/32",
      );
    }
    return range;
  });

  const hostname = text("hostname") ?? systemHostname();
  if (!isDomainName(hostname)) {
    throw problem(givenOf("hostname"), hostname, "it must be a host name such as mx.example.com");
  }

  const maildir = text("maildir")!;
  const maildirProblem = maildir === "" ? "it must not be empty" : templateProblem(maildir);
  if (maildirProblem) throw problem(givenOf("maildir"), maildir, maildirProblem);

  const domains = (list("domains") ?? []).map((domain) => {
    if (!isDomainName(domain)) {
      throw problem(givenOf("domains"), domain, "it must be a domain name such as example.com");
    }
    return domain.toLowerCase();
  });

  const noTls = switchOn("noTls");
  const requireTls = switchOn("requireTls");
  const tlsCert = text("tlsCert");
  const tlsKey = text("tlsKey");
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

  if (text("hookSecret") !== undefined && text("hookSecretFile") !== undefined) {
    throw new ConfigError("Cannot use --hook-secret with --hook-secret-file: choose one");
  }
  const hooks: Hook[] = [];
  for (const item of list("hooks") ?? []) {
    // "PATTERN=URL,from=@example.com,auth=dmarc": the options follow their hook.
    const previous = hooks.at(-1);
    const hook = isHookOption(item)
      ? previous
        ? withHookOption(previous, item)
        : "write it after a hook, e.g. deploy@example.com=https://ci.example.com/hook,auth=dmarc"
      : parseHook(item);
    if (typeof hook === "string") throw problem(givenOf("hooks"), item, hook);
    if (isHookOption(item)) hooks.pop();
    hooks.push(hook);
  }
  const retryForText = text("hookRetryFor")!;
  const hookRetryFor = parseDuration(retryForText);
  if (!Number.isFinite(hookRetryFor) || hookRetryFor <= 0) {
    throw problem(
      givenOf("hookRetryFor"),
      retryForText,
      "write a duration such as 90s, 30m, 24h or 2d",
    );
  }
  const authenticationOn = choice("authentication") === "on";
  const conditional = hooks.find((hook) => hook.auth || hook.from);
  if (conditional && !authenticationOn) {
    throw new ConfigError(
      `Cannot use --hook ${JSON.stringify(conditional.text)} with --authentication off: ` +
        "its from=/auth= conditions read what authentication finds",
    );
  }
  const maildirRoot = maildirRootOf(maildir);
  const metrics = text("metrics");
  const lmtpText = text("lmtp");
  const lmtpAddress = lmtpText === undefined ? undefined : parseLmtpAddress(lmtpText);
  if (typeof lmtpAddress === "string") throw problem(givenOf("lmtp"), lmtpText!, lmtpAddress);
  const rspamdText = text("rspamd");
  if (rspamdText !== undefined) {
    let url: URL | undefined;
    try {
      url = new URL(rspamdText);
    } catch { /* said below */ }
    if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) {
      throw problem(
        givenOf("rspamd"),
        rspamdText,
        "write the worker's http:// URL, e.g. http://127.0.0.1:11333",
      );
    }
  }
  const dnsServerText = text("dnsServer");
  const dnsServer = dnsServerText === undefined ? undefined : parseNameServer(dnsServerText);
  if (typeof dnsServer === "string") throw problem(givenOf("dnsServer"), dnsServerText!, dnsServer);

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
      rejectUnauthPipelining: switchOn("rejectUnauthPipelining"),
      maxMessageSize: number("maxMessageSize"),
      maxRecipients: number("maxRecipients"),
      maxErrors: number("maxErrors"),
      maxConnections: number("maxConnections"),
      maxConnectionsPerIp: number("maxConnectionsPerIp"),
      greetDelay: number("greetDelay"),
      commandTimeout: number("commandTimeout"),
      dataTimeout: number("dataTimeout"),
      shutdownGrace: number("shutdownGrace"),
      proxyFrom,
      recipients: text("recipients"),
      hooks,
      hookSecret: text("hookSecret"),
      hookSecretFile: text("hookSecretFile"),
      hookMaxAttachmentBytes: number("hookMaxAttachmentBytes"),
      hookRetryFor,
      hookRetryDelay: number("hookRetryDelay"),
      hookTimeout: number("hookTimeout"),
      hookConcurrency: number("hookConcurrency"),
      // Inside the Maildir root, so that one write permission covers both. Under a
      // template a leading dot keeps it out of reach of every {domain} and {user}
      // (they never start with one); in a single Maildir a plain name keeps it
      // from looking like a Maildir++ folder to Dovecot.
      hookSpool: text("hookSpool") ??
        (maildirRoot === maildir.replace(/\/+$/, "")
          ? `${maildirRoot}/letterbox-hooks`
          : `${maildirRoot}/.letterbox-hooks`),
      authentication: !authenticationOn ? undefined : {
        dnsServer,
        policy: {
          dmarcReject: choice("dmarcReject") as AuthenticationPolicy["dmarcReject"],
          dmarcQuarantine: choice("dmarcQuarantine") as AuthenticationPolicy["dmarcQuarantine"],
          spfFail: choice("spfFail") as AuthenticationPolicy["spfFail"],
          dnsTemperror: choice("dnsTemperror") as AuthenticationPolicy["dnsTemperror"],
        },
      },
      lmtp: lmtpAddress === undefined ? undefined : {
        address: lmtpAddress,
        connections: number("lmtpConnections"),
        timeout: number("lmtpTimeout"),
        spool: maildirRoot === maildir.replace(/\/+$/, "")
          ? `${maildirRoot}/letterbox-lmtp`
          : `${maildirRoot}/.letterbox-lmtp`,
      },
      rspamd: rspamdText === undefined ? undefined : {
        url: rspamdText,
        timeout: number("rspamdTimeout"),
        concurrency: number("rspamdConcurrency"),
        fail: choice("rspamdFail") as "open" | "tempfail",
        maxSize: number("rspamdMaxSize"),
      },
      metrics: metrics === undefined ? undefined : parseListen(metrics, from("metrics")),
      subaddressFolders: switchOn("subaddressFolders"),
      logLevel: choice("logLevel") as Config["logLevel"],
      logFormat: choice("logFormat") as LogFormat,
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
