/**
 * `letterbox check`: the probes an MX should survive, each one a line of
 * pass / FAIL / warn / not tested with its evidence (what was sent, what came
 * back). SMTP smuggling (every non-standard end of data, in one write and in
 * two phases), STARTTLS command injection, legacy TLS, the certificate, and
 * protocol hygiene. It talks only to the host it is given, opens at most
 * {@link MAX_CONNECTIONS} connections, and every message it sends says in
 * its subject that it is a probe.
 *
 * @module
 */

import net from "node:net";
import tls from "node:tls";
import { SmtpClient, type WireReply, withTimeout } from "./smtp_client.ts";
import { LEGACY_VERSIONS, legacyAnswer, legacyClientHello } from "./tls_hello.ts";

/** How one check came out. */
export type Status = "pass" | "FAIL" | "warn" | "not tested";

/** One line of the report. */
export interface CheckResult {
  readonly check: string;
  readonly status: Status;
  /** What was sent and what came back, or why it was not tested. */
  readonly evidence: string;
}

/** What to check, and how patiently. */
export interface CheckOptions {
  readonly host: string;
  /** The SMTP port (25, with STARTTLS). */
  readonly port: number;
  /** An implicit-TLS port to check too (465), if any. */
  readonly tlsPort?: number;
  /** A recipient the server accepts; without one, `<postmaster>` (RFC 5321 4.5.1). */
  readonly rcpt?: string;
  /** A certificate no public CA signs is a failure, not a warning. */
  readonly strictTls: boolean;
  /** The longest wait for any one reply, in ms. */
  readonly timeoutMs: number;
  /** How long to wait for answers the server must not give (a smuggled 354), in ms. */
  readonly waitMs: number;
  /** CA certificates to trust besides the public ones (for tests with a private CA). */
  readonly caCerts?: readonly string[];
}

/** The most connections one check run opens. */
export const MAX_CONNECTIONS = 40;

/**
 * The non-standard end-of-data sequences behind SMTP smuggling
 * (CVE-2023-51764 and relatives; SEC Consult, 2023): only CRLF.CRLF may end DATA.
 */
export const SMUGGLING_SEQUENCES: readonly string[] = [
  "\n.\n",
  "\n.\r\n",
  "\r.\r",
  "\r.\r\n",
  "\r\n.\r",
  "\r\n.\n",
  "\r.\n",
  "\n.\r",
  "\r\n\0.\r\n",
  "\r\n.\0\r\n",
  "\r\n.\r\r\n",
  "\r\r\n.\r\r\n",
  "\n\n.\r\n",
];

const SENDER = "letterbox-check@probe.invalid";

/** Runs every check against one MX; resolves with the report's lines, in order. */
export async function runChecks(options: CheckOptions): Promise<CheckResult[]> {
  const run = new CheckRun(options);
  const results: CheckResult[] = [];
  const add = async (probe: () => Promise<CheckResult | CheckResult[]>) => {
    try {
      results.push(...[await probe()].flat());
    } catch (error) {
      results.push({
        check: "connection",
        status: "FAIL",
        evidence: error instanceof Error ? error.message : String(error),
      });
    }
  };
  await add(() => run.hygiene());
  await add(() => run.smuggling());
  await add(() => run.starttlsInjection());
  await add(() => run.mailWithoutEhloAfterTls());
  await add(() => run.certificate(options.port, true));
  if (options.tlsPort) await add(() => run.certificate(options.tlsPort!, false));
  // Last of the TLS checks: hand-made legacy hellos are what a weak TLS stack trips over.
  await add(() => run.legacyTls(options.port, true));
  if (options.tlsPort) await add(() => run.legacyTls(options.tlsPort!, false));
  await add(() => run.delivery());
  return results;
}

/** How a run turns into an exit status: 1 when anything failed, else 0 (warnings allowed). */
export function exitStatus(results: readonly CheckResult[]): number {
  return results.some((result) => result.status === "FAIL") ? 1 : 0;
}

// What bytes look like in evidence: escaped, and cut at a readable length.
function shown(text: string, max = 120): string {
  const quoted = JSON.stringify(text);
  return quoted.length > max ? `${quoted.slice(0, max - 4)}..."` : quoted;
}

function firstLine(reply: WireReply | undefined): string {
  return reply ? reply.text.split("\r\n")[0] : "(no reply)";
}

class CheckRun {
  readonly #options: CheckOptions;
  #connections = 0;
  #extensions: string[] = [];

  constructor(options: CheckOptions) {
    this.#options = options;
  }

  get #recipient(): string {
    return this.#options.rcpt ?? "postmaster";
  }

  async #connect(port = this.#options.port): Promise<{ client: SmtpClient; greeting: WireReply }> {
    if (++this.#connections > MAX_CONNECTIONS) {
      throw new Error(`more than ${MAX_CONNECTIONS} connections: stopping`);
    }
    const client = await SmtpClient.connect(this.#options.host, port, this.#options.timeoutMs);
    const greeting = await client.reply(this.#options.timeoutMs);
    if (!greeting || greeting.code !== 220) {
      client.close();
      throw new Error(`no 220 greeting from port ${port}: ${firstLine(greeting)}`);
    }
    return { client, greeting };
  }

  // EHLO, then STARTTLS and EHLO again inside TLS; undefined when STARTTLS is not offered.
  async #tlsSession(client: SmtpClient): Promise<WireReply | undefined> {
    const timeout = this.#options.timeoutMs;
    await client.command("EHLO check.letterbox.invalid", timeout);
    const ready = await client.command("STARTTLS", timeout);
    if (ready?.code !== 220) return undefined;
    await client.startTls(timeout, this.#options.caCerts ? [...this.#options.caCerts] : undefined);
    return ready;
  }

  async hygiene(): Promise<CheckResult[]> {
    const timeout = this.#options.timeoutMs;
    const { client, greeting } = await this.#connect();
    const results: CheckResult[] = [];
    try {
      const name = greeting.text.slice(4).split(/[\s\r]/)[0];
      results.push({
        check: "greeting names a host",
        status: /^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$/.test(name) ? "pass" : "warn",
        evidence: firstLine(greeting),
      });
      const ehlo = await client.command("EHLO check.letterbox.invalid", timeout);
      this.#extensions = (ehlo?.text ?? "").split("\r\n").slice(1).map((line) =>
        line.slice(4).split(" ")[0].toUpperCase()
      ).filter((word) => word !== "");
      results.push({
        check: "multi-line reply in one write",
        status: !ehlo || ehlo.code !== 250 ? "FAIL" : ehlo.reads === 1 ? "pass" : "warn",
        evidence: ehlo
          ? `EHLO reply, ${ehlo.text.split("\r\n").length - 1} lines in ${ehlo.reads} reads`
          : "(no reply to EHLO)",
      });
      const noop = await client.command("NOOP", timeout);
      const enhanced = this.#extensions.includes("ENHANCEDSTATUSCODES") &&
        /^\d{3} \d\.\d{1,3}\.\d{1,3} /.test(noop?.text ?? "");
      results.push({
        check: "enhanced status codes",
        status: enhanced ? "pass" : "warn",
        evidence: `NOOP -> ${firstLine(noop)}`,
      });
      if (!this.#extensions.includes("PIPELINING")) {
        results.push({
          check: "PIPELINING honoured",
          status: "not tested",
          evidence: "not offered",
        });
      } else {
        await client.send("RSET\r\nNOOP\r\nNOOP\r\n");
        const replies = [
          await client.reply(timeout),
          await client.reply(timeout),
          await client.reply(timeout),
        ];
        const ok = replies.every((reply) => reply?.code === 250);
        results.push({
          check: "PIPELINING honoured",
          status: ok ? "pass" : "FAIL",
          evidence: `"RSET\\r\\nNOOP\\r\\nNOOP\\r\\n" in one write -> ${
            replies.map(firstLine).join(" | ")
          }`,
        });
      }
      await client.send(`XLONGLINE ${"x".repeat(3000)}\r\n`);
      const long = await client.reply(timeout);
      await client.drain(this.#options.waitMs);
      results.push({
        check: "reply to an over-long line",
        status: long && long.code >= 500 ? "pass" : long ? "warn" : client.closed ? "warn" : "FAIL",
        evidence: `a 3,010-octet command line -> ${
          long ? firstLine(long) : client.closed ? "(closed)" : "(no reply)"
        }`,
      });
      await client.command("QUIT", timeout);
    } finally {
      client.close();
    }
    return results;
  }

  async starttlsInjection(): Promise<CheckResult[]> {
    if (!this.#extensions.includes("STARTTLS")) {
      return [
        {
          check: "STARTTLS command injection",
          status: "not tested",
          evidence: "STARTTLS not offered",
        },
        {
          check: "no second STARTTLS inside TLS",
          status: "not tested",
          evidence: "STARTTLS not offered",
        },
      ];
    }
    const timeout = this.#options.timeoutMs;
    const { client } = await this.#connect();
    try {
      await client.command("EHLO check.letterbox.invalid", timeout);
      // The injected command rides in the same packet as STARTTLS.
      const sent = "STARTTLS\r\nNOOP\r\n";
      await client.send(sent);
      const ready = await client.reply(timeout);
      if (ready?.code !== 220) {
        return [{
          check: "STARTTLS command injection",
          status: "not tested",
          evidence: `STARTTLS -> ${firstLine(ready)}`,
        }];
      }
      try {
        await client.startTls(
          timeout,
          this.#options.caCerts ? [...this.#options.caCerts] : undefined,
        );
      } catch (error) {
        return [{
          check: "STARTTLS command injection",
          status: "not tested",
          evidence: `TLS handshake failed: ${error instanceof Error ? error.message : error}`,
        }];
      }
      // Nothing may come before we say anything inside TLS.
      const early = await client.drain(this.#options.waitMs);
      const injection: CheckResult = {
        check: "STARTTLS command injection",
        status: early === "" ? "pass" : "FAIL",
        evidence: early === ""
          ? `${shown(sent)} in one write: nothing answered inside TLS`
          : `${shown(sent)} in one write: inside TLS, before any command, the server sent ${
            shown(early)
          }`,
      };
      await client.command("EHLO check.letterbox.invalid", timeout);
      const again = await client.command("STARTTLS", timeout);
      const second: CheckResult = {
        check: "no second STARTTLS inside TLS",
        status: again?.code === 220 ? "FAIL" : "pass",
        evidence: `STARTTLS inside TLS -> ${firstLine(again)}`,
      };
      return [injection, second];
    } finally {
      client.close();
    }
  }

  async mailWithoutEhloAfterTls(): Promise<CheckResult> {
    const check = "state reset after STARTTLS";
    if (!this.#extensions.includes("STARTTLS")) {
      return { check, status: "not tested", evidence: "STARTTLS not offered" };
    }
    const timeout = this.#options.timeoutMs;
    const { client } = await this.#connect();
    try {
      if (!await this.#tlsSession(client).catch(() => undefined)) {
        return { check, status: "not tested", evidence: "STARTTLS did not complete" };
      }
      // RFC 3207 4.2: after TLS the client must say EHLO again; MAIL first must be refused.
      const mail = await client.command(`MAIL FROM:<${SENDER}>`, timeout);
      return {
        check,
        status: mail?.code === 250 ? "FAIL" : "pass",
        evidence: `MAIL without a new EHLO after TLS -> ${firstLine(mail)}`,
      };
    } finally {
      client.close();
    }
  }

  async legacyTls(port: number, starttls: boolean): Promise<CheckResult[]> {
    const results: CheckResult[] = [];
    for (const [name, version] of Object.entries(LEGACY_VERSIONS)) {
      const check = `${name} refused${starttls ? "" : ` on port ${port}`}`;
      if (starttls && !this.#extensions.includes("STARTTLS")) {
        results.push({ check, status: "not tested", evidence: "STARTTLS not offered" });
        continue;
      }
      const client = starttls
        ? (await this.#connect(port)).client
        : await SmtpClient.connect(this.#options.host, port, this.#options.timeoutMs);
      if (!starttls) this.#connections++;
      try {
        if (starttls) {
          await client.command("EHLO check.letterbox.invalid", this.#options.timeoutMs);
          const ready = await client.command("STARTTLS", this.#options.timeoutMs);
          if (ready?.code !== 220) {
            results.push({
              check,
              status: "not tested",
              evidence: `STARTTLS -> ${firstLine(ready)}`,
            });
            continue;
          }
        }
        await client.send(legacyClientHello(version, this.#options.host));
        const answer = await client.readBytes(this.#options.timeoutMs, 6);
        const accepted = legacyAnswer(answer) === "accepted";
        const hex = [...answer.subarray(0, 7)].map((b) => b.toString(16).padStart(2, "0")).join(
          " ",
        );
        results.push({
          check,
          status: accepted ? "FAIL" : "pass",
          evidence: `a ${name}-only ClientHello -> ${
            answer.length === 0
              ? "closed without a record"
              : accepted
              ? `ServerHello (${hex})`
              : `alert or other (${hex})`
          }`,
        });
      } finally {
        client.close();
      }
    }
    return results;
  }

  async certificate(port: number, starttls: boolean): Promise<CheckResult[]> {
    const where = starttls ? "" : ` on port ${port}`;
    if (starttls && !this.#extensions.includes("STARTTLS")) {
      return [{
        check: `certificate${where}`,
        status: "not tested",
        evidence: "STARTTLS not offered",
      }];
    }
    if (++this.#connections > MAX_CONNECTIONS) throw new Error("too many connections");
    const facts = await peerCertificate(
      this.#options.host,
      port,
      starttls,
      this.#options.timeoutMs,
      this.#options.caCerts,
    );
    const results: CheckResult[] = [];
    const trusted = facts.authorizationError === undefined;
    results.push({
      check: `certificate chain${where}`,
      status: trusted ? "pass" : this.#options.strictTls ? "FAIL" : "warn",
      evidence: trusted
        ? `signed by a trusted CA (issuer ${facts.issuer})`
        : `${facts.authorizationError}: no public CA signs it (senders use TLS opportunistically, so mail still flows)`,
    });
    results.push({
      check: `certificate names the host${where}`,
      status: facts.nameError === undefined ? "pass" : this.#options.strictTls ? "FAIL" : "warn",
      evidence: facts.nameError ?? `${this.#options.host} is in ${facts.altNames || facts.subject}`,
    });
    const days = (facts.notAfter.getTime() - Date.now()) / 86_400_000;
    results.push({
      check: `certificate not expiring within 14 days${where}`,
      status: days >= 14 ? "pass" : "FAIL",
      evidence: `valid until ${facts.notAfter.toISOString()} (${Math.floor(days)} days)`,
    });
    return results;
  }

  async smuggling(): Promise<CheckResult[]> {
    const results: CheckResult[] = [];
    for (const marker of SMUGGLING_SEQUENCES) {
      const outcomes: string[] = [];
      let failed = false;
      let tested = true;
      for (const twoPhases of [false, true]) {
        const outcome = await this.#smuggle(marker, twoPhases);
        if (outcome === undefined) {
          tested = false;
          outcomes.push(twoPhases ? "two phases: not tested" : "one write: not tested");
          continue;
        }
        if (outcome.failed) failed = true;
        outcomes.push(`${twoPhases ? "two phases" : "one write"}: ${outcome.evidence}`);
      }
      results.push({
        check: `smuggling ${shown(marker)}`,
        status: failed ? "FAIL" : tested ? "pass" : "not tested",
        evidence: outcomes.join("; "),
      });
    }
    return results;
  }

  // One message whose content holds a fake end of data and a whole second
  // transaction behind it. A strict server stores one message (one 250); one
  // that ends DATA at the fake end answers the second transaction (a 354).
  async #smuggle(
    marker: string,
    twoPhases: boolean,
  ): Promise<{ failed: boolean; evidence: string } | undefined> {
    const timeout = this.#options.timeoutMs;
    const { client } = await this.#connect();
    try {
      await client.command("EHLO check.letterbox.invalid", timeout);
      if ((await client.command(`MAIL FROM:<${SENDER}>`, timeout))?.code !== 250) return undefined;
      if ((await client.command(`RCPT TO:<${this.#recipient}>`, timeout))?.code !== 250) {
        return undefined;
      }
      if ((await client.command("DATA", timeout))?.code !== 354) return undefined;
      const first =
        `Subject: letterbox check probe (SMTP smuggling, ${JSON.stringify(marker)})\r\n` +
        `From: <${SENDER}>\r\n\r\nThis is a probe by letterbox check; it may be deleted.${marker}`;
      const second = `MAIL FROM:<${SENDER}>\r\nRCPT TO:<${this.#recipient}>\r\nDATA\r\n` +
        "Subject: letterbox check probe (smuggled message)\r\n\r\nsmuggled\r\n.\r\n";
      let early = "";
      if (twoPhases) {
        await client.send(first);
        early = await client.drain(this.#options.waitMs);
        await client.send(second);
      } else {
        await client.send(first + second);
      }
      // The message's own reply, then a while for any the fake end would add.
      const answer = await client.reply(timeout);
      const replies = early + (answer?.text ?? "") + await client.drain(this.#options.waitMs);
      await client.send("QUIT\r\n").catch(() => {});
      const codes = replies.split("\r\n").filter((line) => /^\d{3} /.test(line)).map((l) =>
        l.slice(0, 3)
      );
      const failed = early !== "" || codes.includes("354") || codes.length > 1;
      return {
        failed,
        evidence: failed
          ? `the fake end was answered: ${shown(replies, 90)}`
          : `one reply (${codes[0] ?? "none"})`,
      };
    } finally {
      client.close();
    }
  }

  async delivery(): Promise<CheckResult> {
    const check = "delivery of a probe message";
    if (!this.#options.rcpt) {
      return { check, status: "not tested", evidence: "no --rcpt given" };
    }
    const timeout = this.#options.timeoutMs;
    const { client } = await this.#connect();
    try {
      await client.command("EHLO check.letterbox.invalid", timeout);
      const steps = [
        await client.command(`MAIL FROM:<${SENDER}>`, timeout),
        await client.command(`RCPT TO:<${this.#options.rcpt}>`, timeout),
        await client.command("DATA", timeout),
      ];
      if (steps[2]?.code !== 354) {
        return { check, status: "FAIL", evidence: steps.map(firstLine).join(" | ") };
      }
      const reply = await client.command(
        `Subject: letterbox check probe (delivery test)\r\nFrom: <${SENDER}>\r\n` +
          `To: <${this.#options.rcpt}>\r\n\r\nThis is a probe by letterbox check; it may be deleted.\r\n.`,
        timeout,
      );
      await client.command("QUIT", timeout).catch(() => undefined);
      return { check, status: reply?.code === 250 ? "pass" : "FAIL", evidence: firstLine(reply) };
    } finally {
      client.close();
    }
  }
}

/** The server certificate as a TLS client sees it: trust, name, expiry. */
interface PeerCertificate {
  readonly authorizationError?: string;
  readonly nameError?: string;
  readonly subject: string;
  readonly issuer: string;
  readonly altNames: string;
  readonly notAfter: Date;
}

// node:tls reads the certificate (Deno.startTls tells no more than whether it
// verified); over STARTTLS it takes the socket after the 220.
async function peerCertificate(
  host: string,
  port: number,
  starttls: boolean,
  timeoutMs: number,
  caCerts: readonly string[] | undefined,
): Promise<PeerCertificate> {
  const socket = net.connect({ host, port });
  try {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        socket.once("connect", () => resolve());
        socket.once("error", reject);
      }),
      timeoutMs,
      "connect",
    );
    if (starttls) {
      let buffered = "";
      const replyTo = async (line?: string) => {
        if (line) socket.write(`${line}\r\n`);
        await withTimeout(
          new Promise<void>((resolve, reject) => {
            const onData = (data: Uint8Array) => {
              buffered += new TextDecoder().decode(data);
              if (/(^|\n)\d{3} [^\n]*\n/.test(buffered)) {
                socket.off("data", onData);
                resolve();
              }
            };
            socket.on("data", onData);
            socket.once("error", reject);
          }),
          timeoutMs,
          "reply",
        );
        const text = buffered;
        buffered = "";
        return text;
      };
      await replyTo();
      await replyTo("EHLO check.letterbox.invalid");
      const ready = await replyTo("STARTTLS");
      if (!ready.startsWith("220")) throw new Error(`STARTTLS -> ${ready.trim()}`);
    }
    const secure = tls.connect({
      socket,
      servername: /^[\d.]+$|:/.test(host) ? undefined : host,
      rejectUnauthorized: false,
      ...(caCerts ? { ca: [...tls.rootCertificates, ...caCerts] } : {}),
    });
    try {
      await withTimeout(
        new Promise<void>((resolve, reject) => {
          secure.once("secureConnect", () => resolve());
          secure.once("error", reject);
        }),
        timeoutMs,
        "TLS handshake",
      );
      const cert = secure.getPeerCertificate();
      const nameError = tls.checkServerIdentity(host, cert);
      const name = (record: Record<string, string | string[]> | undefined) =>
        record ? Object.entries(record).map(([k, v]) => `${k}=${v}`).join(", ") : "";
      return {
        authorizationError: secure.authorized
          ? undefined
          : String(secure.authorizationError ?? "not verified"),
        nameError: nameError ? nameError.message : undefined,
        subject: name(cert.subject as unknown as Record<string, string>),
        issuer: name(cert.issuer as unknown as Record<string, string>),
        altNames: cert.subjectaltname ?? "",
        notAfter: new Date(cert.valid_to),
      };
    } finally {
      secure.destroy();
    }
  } finally {
    socket.destroy();
  }
}
