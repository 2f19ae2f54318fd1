/**
 * How to grant a permission Letterbox was started without, in the words the
 * operator needs: `make run PERMISSIONS=...` for the development server, the
 * `make build` variable for the binary. One sentence, for start-up errors.
 *
 * @module
 */

import { dirname } from "@std/path/posix/dirname";

/** The `make build` variable that bakes each kind of permission into the binary. */
const BUILD_VARIABLE = {
  read: "CERT_DIR",
  write: "MAIL_ROOT",
  run: "HOOK_COMMANDS",
  net: "HOOK_HOSTS",
} as const;

/** What Deno calls a permission that is missing; `undefined` for any other error. */
export function grantAdvice(
  error: unknown,
  kind: keyof typeof BUILD_VARIABLE,
  value: string,
): string | undefined {
  if (!(error instanceof Deno.errors.NotCapable)) return undefined;
  return grantSentence(kind, value);
}

/**
 * "Letterbox may not read X; grant it with ..." for a permission known to be
 * missing; `variable` names the `make build` variable when it is not the
 * kind's usual one.
 */
export function grantSentence(
  kind: keyof typeof BUILD_VARIABLE,
  value: string,
  variable: string = BUILD_VARIABLE[kind],
): string {
  const verb = { read: "read", write: "write to", run: "run", net: "connect to" }[kind];
  return `Letterbox may not ${verb} ${value}; grant it with make run PERMISSIONS=--allow-${kind}=${value}, ` +
    `or build with make build ${variable}=${kind === "read" ? folderOf(value) : value}`;
}

// CERT_DIR names a folder: the one holding the file. A file at the top level
// is named itself rather than suggesting all of "/".
function folderOf(path: string): string {
  const folder = dirname(path);
  return folder === "/" || folder === "." ? path : folder;
}
