/**
 * Start-up checks of the hooks: every one must be able to run for the next 24
 * hours, or the start stops with one line saying what to grant. Without this,
 * a hook missing its permission or its program failed, and was retried, for
 * a whole retry period while mail came in.
 *
 * @module
 */

import { ConfigError } from "../config/config.ts";
import { grantSentence } from "../config/grant.ts";
import type { Hook } from "./hook.ts";

/** Throws {@link ConfigError} for the first hook that could not run. */
export async function checkHooks(hooks: readonly Hook[]): Promise<void> {
  for (const hook of hooks) {
    const problem = await hookProblem(hook);
    if (problem) {
      throw new ConfigError(`Cannot use --hook ${JSON.stringify(hook.text)}: ${problem}`);
    }
  }
}

async function hookProblem(hook: Hook): Promise<string | undefined> {
  const target = hook.target;
  if (target.kind === "webhook") {
    const url = new URL(target.url);
    const host = `${url.hostname}:${url.port || (url.protocol === "https:" ? 443 : 80)}`;
    const net = await Deno.permissions.query({ name: "net", host });
    if (net.state !== "granted") {
      return grantSentence("net", host);
    }
    return undefined;
  }
  const command = target.command;
  const run = await Deno.permissions.query({ name: "run", command });
  if (run.state !== "granted") {
    return grantSentence("run", command);
  }
  // The program must exist and be executable (make build lets the binary read
  // HOOK_COMMANDS for this); where it may not look, running it will tell.
  const read = await Deno.permissions.query({ name: "read", path: command });
  if (read.state !== "granted") return undefined;
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(command);
  } catch {
    return `${command} does not exist`;
  }
  if (!info.isFile || ((info.mode ?? 0o777) & 0o111) === 0) return `${command} is not executable`;
  return undefined;
}
