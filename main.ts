/**
 * Letterbox's entry: parse the configuration, start the application, wait
 * for signals. Everything else lives in src/app.ts.
 *
 * @module
 */

import { startLetterbox } from "./src/app.ts";
import { checkCommand } from "./src/check/command.ts";
import { hooksCommand } from "./src/hooks/spool_command.ts";
import { ConfigError, HELP, parseConfig } from "./src/config/config.ts";
import { configureLogging, describeError, logger } from "./src/log.ts";
import { VERSION } from "./src/version.ts";

const encoder = new TextEncoder();

function fail(error: unknown): never {
  const message = error instanceof ConfigError
    ? error.message
    : `Cannot start: ${describeError(error)}`;
  Deno.stderr.writeSync(encoder.encode(`letterbox: ${message}\n`));
  Deno.exit(2);
}

/**
 * The names of the LETTERBOX_ variables set, so that a misspelt one is refused.
 * Deno lists names only with access to every variable (make run and the
 * binary have it for this); without it the check is skipped.
 */
function letterboxEnvNames(): string[] {
  try {
    return Object.keys(Deno.env.toObject()).filter((name) => name.startsWith("LETTERBOX_"));
  } catch {
    return [];
  }
}

async function main(): Promise<void> {
  // letterbox check HOST[:PORT]: the MX self-test, a client; nothing of the server starts.
  if (Deno.args[0] === "check") {
    const write = (stream: { writeSync(bytes: Uint8Array): number }) => (line: string) =>
      void stream.writeSync(encoder.encode(`${line}\n`));
    Deno.exit(await checkCommand(Deno.args.slice(1), write(Deno.stdout), write(Deno.stderr)));
  }
  // letterbox hooks list|retry ID [options]: the spool of the server these options describe.
  const hooksCommandArgs = Deno.args[0] === "hooks"
    ? Deno.args.slice(1, Deno.args[1] === "retry" ? 3 : 2)
    : undefined;
  const args = hooksCommandArgs ? Deno.args.slice(1 + hooksCommandArgs.length) : Deno.args;
  let invocation;
  try {
    invocation = parseConfig(
      args,
      (name) => Deno.env.get(name),
      () => Deno.hostname(),
      letterboxEnvNames(),
    );
  } catch (error) {
    fail(error);
  }
  if (invocation.kind === "help") return void Deno.stdout.writeSync(encoder.encode(HELP));
  if (invocation.kind === "version") {
    return void Deno.stdout.writeSync(
      encoder.encode(`letterbox ${VERSION} (deno ${Deno.version.deno})\n`),
    );
  }
  const config = invocation.config;
  if (hooksCommandArgs) {
    const code = await hooksCommand(
      config.hookSpool,
      hooksCommandArgs,
      (line) => Deno.stdout.writeSync(encoder.encode(`${line}\n`)),
    );
    Deno.exit(code);
  }
  await configureLogging(config.logLevel, config.logFormat);
  let app;
  try {
    app = await startLetterbox(config);
  } catch (error) {
    fail(error);
  }
  const log = logger("server");
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info("Received {signal}: shutting down", { signal });
    await app.shutdown(config.shutdownGrace);
    log.info("Stopped");
    Deno.exit(0);
  };
  // SIGHUP (systemctl reload, certbot's deploy hook) re-reads the recipients
  // file and the certificate.
  Deno.addSignalListener("SIGHUP", () => {
    log.info("Received SIGHUP: reloading");
    void app.reload();
  });
  Deno.addSignalListener("SIGTERM", () => void stop("SIGTERM"));
  Deno.addSignalListener("SIGINT", () => void stop("SIGINT"));
}

if (import.meta.main) await main();
