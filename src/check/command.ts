/**
 * `letterbox check HOST[:PORT] [options]`: reads its own few options, runs
 * the probes and prints one line per check (or JSON). Exit status 0 when
 * nothing failed (warnings allowed), 1 when something did, 2 for usage errors.
 *
 * @module
 */

import { type CheckResult, exitStatus, runChecks } from "./probes.ts";

/** The usage line, for --help and mistakes. */
export const CHECK_USAGE =
  "Usage: letterbox check HOST[:PORT] [--tls-port 465] [--rcpt ADDRESS] [--json] [--strict-tls]\n" +
  "                       [--timeout SECONDS] [--wait SECONDS] [--ca FILE]";

/** Runs the command; returns the exit status. `out` and `err` write one line each. */
export async function checkCommand(
  args: readonly string[],
  out: (line: string) => void,
  err: (line: string) => void,
): Promise<number> {
  let target: string | undefined;
  const options: Record<string, string | true> = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--json" || arg === "--strict-tls") options[arg.slice(2)] = true;
    else if (["--tls-port", "--rcpt", "--timeout", "--wait", "--ca"].includes(arg)) {
      const value = args[++i];
      if (value === undefined) return usage(err, `${arg} needs a value`);
      options[arg.slice(2)] = value;
    } else if (arg === "--help") {
      out(CHECK_USAGE);
      return 0;
    } else if (!arg.startsWith("--") && target === undefined) target = arg;
    else return usage(err, `${JSON.stringify(arg)} is not an option of check`);
  }
  if (!target) return usage(err, "name the MX to check");
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]+))(?::(\d{1,5}))?$/.exec(target);
  const port = Number(match?.[3] ?? 25);
  if (!match || port < 1 || port > 65535) {
    return usage(err, `${JSON.stringify(target)} is not HOST or HOST:PORT`);
  }
  const number = (name: string, fallback: number, min: number, max: number) => {
    const value = options[name];
    if (value === undefined) return fallback;
    const parsed = Number(value);
    return Number.isFinite(parsed) && parsed >= min && parsed <= max ? parsed : NaN;
  };
  const tlsPort = options["tls-port"] === undefined ? undefined : number("tls-port", 0, 1, 65535);
  const timeout = number("timeout", 10, 0.1, 300);
  const wait = number("wait", 1, 0, 60);
  if ([tlsPort ?? 1, timeout, wait].some(Number.isNaN)) {
    return usage(err, "--tls-port takes a port, --timeout and --wait a number of seconds");
  }
  let caCerts: string[] | undefined;
  if (typeof options.ca === "string") {
    try {
      caCerts = [await Deno.readTextFile(options.ca)];
    } catch (error) {
      return usage(err, `cannot read --ca ${JSON.stringify(options.ca)}: ${error}`);
    }
  }
  const host = match[1] ?? match[2];
  const results = await runChecks({
    host,
    port,
    tlsPort,
    rcpt: typeof options.rcpt === "string" ? options.rcpt : undefined,
    strictTls: options["strict-tls"] === true,
    timeoutMs: timeout * 1000,
    waitMs: wait * 1000,
    caCerts,
  });
  if (options.json) {
    out(JSON.stringify({ host, port, tlsPort, results, failed: failures(results) }, null, 2));
  } else {
    out(`letterbox check ${host}:${port}${tlsPort ? ` (and ${tlsPort}, implicit TLS)` : ""}`);
    for (const result of results) {
      out(`${result.status.padEnd(10)} ${result.check}: ${result.evidence}`);
    }
    out(
      `${failures(results)} failed, ${results.filter((r) => r.status === "warn").length} warnings`,
    );
  }
  return exitStatus(results);
}

function failures(results: readonly CheckResult[]): number {
  return results.filter((result) => result.status === "FAIL").length;
}

function usage(err: (line: string) => void, problem: string): number {
  err(`letterbox check: ${problem}`);
  err(CHECK_USAGE);
  return 2;
}
