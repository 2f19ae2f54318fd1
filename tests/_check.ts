/** Runs `letterbox check` for the check tests. */

import { CERTS, REPO, run } from "./_server.ts";

/** What one run of `letterbox check` printed, and a line's status by check name. */
export interface CheckResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  readonly lines: string[];
  status(name: string): string | undefined;
}

/** Runs `main.ts check` as a user would, with the test CA trusted. */
export async function check(target: string, extra: string[] = []): Promise<CheckResult> {
  const result = await run(Deno.execPath(), [
    "run",
    "-A",
    `${REPO}/main.ts`,
    "check",
    target,
    "--ca",
    CERTS.ca,
    "--wait",
    "0.1",
    "--timeout",
    "3",
    ...extra,
  ]);
  const lines = result.stdout.trim().split("\n");
  const status = (name: string) =>
    lines.find((line) => line.slice(11).startsWith(name))?.slice(0, 10).trim();
  return { ...result, lines, status };
}
