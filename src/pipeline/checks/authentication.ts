/**
 * Sender authentication, the first check: SPF (MAIL FROM and HELO), DKIM,
 * DMARC and ARC with mailauth, one `Authentication-Results:` field (RFC 8601)
 * naming us as authserv-id, and the sender's DMARC policy applied as the
 * operator chose. Any incoming `Authentication-Results` that claims our
 * authserv-id is removed (RFC 8601 section 5): a forged one never reaches a
 * mailbox.
 *
 * The message streams into mailauth as it arrives (it hashes bodies as a
 * stream), so a large message is not held in memory for it.
 *
 * @module
 */

import { authenticate } from "mailauth";
import { PassThrough } from "node:stream";
import { formatAddress } from "../../protocol/address.ts";
import { type Reply, reply } from "../../protocol/replies.ts";
import type { Resolver } from "../../dns/resolver.ts";
import type { Envelope } from "../envelope.ts";
import type { Check, CheckRun, Verdict } from "./check.ts";

/** What to do with mail that fails each test; the flags of the same names. */
export interface AuthenticationPolicy {
  /** DMARC fails and the domain says p=reject: refuse with 550 (honour), file as junk, or ignore. */
  readonly dmarcReject: "honour" | "junk" | "off";
  /** DMARC fails and the domain says p=quarantine: file as junk, or ignore. */
  readonly dmarcQuarantine: "junk" | "off";
  /** SPF fails (and DMARC does not pass): note it in the header only, or refuse with 550. */
  readonly spfFail: "tag" | "reject";
  /** A DNS failure left SPF or DMARC undecided: deliver (noted in the header), or answer 451. */
  readonly dnsTemperror: "deliver" | "tempfail";
}

/** The defaults: the sender's own DMARC policy is honoured, nothing is lost for DNS trouble. */
export const DEFAULT_POLICY: AuthenticationPolicy = {
  dmarcReject: "honour",
  dmarcQuarantine: "junk",
  spfFail: "tag",
  dnsTemperror: "deliver",
};

/** The results, as hooks receive them (`authentication` in the payload) and hooks filter on. */
export interface AuthenticationFacts {
  readonly spf: { readonly result: string; readonly domain: string | null };
  readonly dkim: readonly {
    readonly result: string;
    readonly domain: string;
    readonly selector: string;
    readonly aligned: boolean;
  }[];
  readonly dmarc: {
    readonly result: string;
    /** The policy that applied (`reject`, `quarantine`, `none`), or null without a record. */
    readonly policy: string | null;
    /** The From: header's domain, which DMARC authenticates. */
    readonly fromDomain: string | null;
    /** The From: header's address, lower-cased (when there is exactly one). */
    readonly from: string | null;
    readonly alignment: { readonly spf: boolean; readonly dkim: boolean };
  };
  readonly arc: { readonly result: string };
}

/** How long one message's authentication may take in all; past it every result is temperror. */
export const AUTHENTICATION_TIMEOUT = 10_000;

/** Replies of this check. RFC 7372 gives SPF its own enhanced code. */
export const AUTHENTICATION_REPLIES = {
  dmarcReject: (domain: string): Reply =>
    reply(550, "5.7.1", `Message rejected by the DMARC policy of ${domain}`),
  spfFail: (domain: string): Reply =>
    reply(550, "5.7.23", `SPF check failed: ${domain} does not permit this host to send for it`),
  temperror: reply(
    451,
    "4.4.3",
    "Temporary DNS failure while authenticating the sender, try again later",
  ),
} as const;

/** Counts each result; the metrics' `authentication` counter, when metrics are on. */
export type ResultCounter = (method: string, result: string) => void;

/**
 * The authserv-id an Authentication-Results value starts with (RFC 8601
 * 2.2: comments may come first), lower-cased.
 */
export function authservId(value: string): string {
  return value.replace(/^(\s*\([^)]*\))*\s*/, "").split(/[\s;]/, 1)[0].toLowerCase();
}

/** Verifies the sender of every message. */
export class AuthenticationCheck implements Check {
  readonly name = "authentication";
  readonly #hostname: string;
  readonly #resolver: Resolver;
  readonly #policy: AuthenticationPolicy;
  readonly #count: ResultCounter | undefined;
  readonly #timeout: number;

  /** Verifies as `hostname` (the authserv-id), asking `resolver`, acting by `policy`. */
  constructor(
    hostname: string,
    resolver: Resolver,
    policy: AuthenticationPolicy = DEFAULT_POLICY,
    count?: ResultCounter,
    timeout: number = AUTHENTICATION_TIMEOUT,
  ) {
    this.#hostname = hostname;
    this.#resolver = resolver;
    this.#policy = policy;
    this.#count = count;
    this.#timeout = timeout;
  }

  /** Drops any Authentication-Results field that claims to be ours. */
  readonly dropsField = (name: string, value: string): boolean =>
    name === "authentication-results" && authservId(value) === this.#hostname.toLowerCase();

  begin(envelope: Envelope): CheckRun {
    const input = new PassThrough();
    const results = authenticate(input, {
      ip: envelope.clientAddress,
      helo: envelope.heloName,
      sender: envelope.sender ? formatAddress(envelope.sender) : "",
      mta: this.#hostname,
      resolver: this.#resolver.resolve as (name: string, rrtype: string) => Promise<string[]>,
      disableBimi: true,
    }) as Promise<MailauthResult>;
    // An aborted message ends the stream; its results are never asked for.
    results.catch(() => {});
    return {
      // mailauth keeps what it is given past the call: a copy.
      write: (content) => void input.write(content.slice()),
      abort: () => void input.destroy(),
      verdict: async () => {
        input.end();
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = new Promise<undefined>((resolve) => {
          timer = setTimeout(() => resolve(undefined), this.#timeout);
        });
        try {
          return this.#decide(await Promise.race([results, late]));
        } finally {
          clearTimeout(timer);
        }
      },
    };
  }

  #decide(results: MailauthResult | undefined): Verdict {
    const facts = summarise(results);
    const count = this.#count;
    if (count) {
      count("spf", facts.spf.result);
      for (const signature of facts.dkim) count("dkim", signature.result);
      if (facts.dkim.length === 0) count("dkim", "none");
      count("dmarc", facts.dmarc.result);
      count("arc", facts.arc.result);
    }
    const headerFields = results
      ? results.headers.replace(/\r\n/g, "\n").replace(/\n?$/, "\n")
      : `Authentication-Results: ${this.#hostname};\n spf=temperror; dkim=temperror; dmarc=temperror (timed out)\n`;
    const findings = {
      log: `spf=${facts.spf.result} dkim=${
        facts.dkim.map((signature) => signature.result).join(",") || "none"
      } dmarc=${facts.dmarc.result}${
        facts.dmarc.policy ? ` (p=${facts.dmarc.policy})` : ""
      } arc=${facts.arc.result}`,
      facts: facts as unknown as Record<string, unknown>,
    };
    const policy = this.#policy;
    const { dmarc, spf } = facts;
    if (dmarc.result === "fail" && dmarc.fromDomain) {
      const wanted = dmarc.policy === "reject"
        ? policy.dmarcReject
        : dmarc.policy === "quarantine"
        ? (policy.dmarcQuarantine === "junk" ? "junk" : "off")
        : "off";
      if (wanted === "honour") {
        return {
          action: "refuse",
          reply: AUTHENTICATION_REPLIES.dmarcReject(dmarc.fromDomain),
          reason: `DMARC p=reject of ${dmarc.fromDomain} failed`,
          findings,
        };
      }
      if (wanted === "junk") return { action: "junk", headerFields, findings };
    }
    if (spf.result === "fail" && policy.spfFail === "reject" && dmarc.result !== "pass") {
      return {
        action: "refuse",
        reply: AUTHENTICATION_REPLIES.spfFail(spf.domain ?? envelopeDomain(results)),
        reason: `SPF fail for ${spf.domain}`,
        findings,
      };
    }
    const undecided = dmarc.result === "temperror" ||
      (spf.result === "temperror" && dmarc.result !== "pass");
    if (undecided && policy.dnsTemperror === "tempfail") {
      return {
        action: "refuse",
        reply: AUTHENTICATION_REPLIES.temperror,
        reason: "DNS temperror",
        findings,
      };
    }
    return { action: "accept", headerFields, findings };
  }
}

function envelopeDomain(results: MailauthResult | undefined): string {
  return (results?.spf || undefined)?.domain ?? "the sender's domain";
}

/** Reduces mailauth's results to what hooks, logs and metrics use. */
export function summarise(results: MailauthResult | undefined): AuthenticationFacts {
  if (!results) {
    return {
      spf: { result: "temperror", domain: null },
      dkim: [],
      dmarc: {
        result: "temperror",
        policy: null,
        fromDomain: null,
        from: null,
        alignment: { spf: false, dkim: false },
      },
      arc: { result: "none" },
    };
  }
  const dmarc = results.dmarc || undefined;
  const spf = results.spf || undefined;
  return {
    spf: { result: spf?.status?.result ?? "none", domain: spf?.domain ?? null },
    dkim: (results.dkim?.results ?? []).filter((row) => row.signingDomain).map((row) => ({
      result: row.status.result,
      domain: row.signingDomain!,
      selector: row.selector ?? "",
      aligned: Boolean(row.status.aligned),
    })),
    dmarc: {
      result: dmarc?.status?.result ?? "none",
      policy: dmarc?.policy ?? null,
      fromDomain: dmarc?.domain ?? results.dkim?.headerFrom?.[0]?.split("@").pop() ?? null,
      from: results.dkim?.headerFrom?.length === 1
        ? results.dkim.headerFrom[0].toLowerCase()
        : null,
      alignment: {
        spf: Boolean(dmarc?.alignment?.spf?.result),
        dkim: Boolean(dmarc?.alignment?.dkim?.result),
      },
    },
    arc: { result: results.arc?.status?.result ?? "none" },
  };
}

/** The parts of mailauth's `authenticate()` result that Letterbox reads. */
export interface MailauthResult {
  readonly headers: string;
  readonly spf?: {
    readonly domain?: string;
    readonly status?: { readonly result: string };
  } | false;
  readonly dkim?: {
    readonly headerFrom?: readonly string[];
    readonly results?: readonly {
      readonly signingDomain?: string;
      readonly selector?: string;
      readonly status: { readonly result: string; readonly aligned?: string | false };
    }[];
  };
  readonly dmarc?: {
    readonly domain?: string;
    readonly policy?: string;
    readonly status?: { readonly result: string };
    readonly alignment?: {
      readonly spf?: { readonly result?: string | false };
      readonly dkim?: { readonly result?: string | false };
    };
  } | false;
  readonly arc?: { readonly status?: { readonly result: string } };
}
