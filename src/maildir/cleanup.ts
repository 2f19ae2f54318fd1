/**
 * Start-up clean-up: files left in a Maildir's `tmp/` by a crash. The Maildir
 * specification says a file in `tmp/` untouched for 36 hours is debris.
 *
 * @module
 */

import { PLACEHOLDERS } from "./template.ts";

/**
 * Lists the Maildirs a path or template names that exist now: the path
 * itself, or every directory tree that matches the template below its fixed
 * root (a placeholder matches any one directory name).
 */
export async function knownMaildirs(template: string): Promise<string[]> {
  const segments = template.split("/");
  const firstPlaceholder = segments.findIndex((segment) =>
    PLACEHOLDERS.some((p) => segment.includes(p))
  );
  if (firstPlaceholder === -1) return await isDirectory(template) ? [template] : [];
  let found = [segments.slice(0, firstPlaceholder).join("/") || "/"];
  for (const segment of segments.slice(firstPlaceholder)) {
    const pattern = segmentPattern(segment);
    const next: string[] = [];
    for (const dir of found) {
      if (!pattern) {
        if (await isDirectory(`${dir}/${segment}`)) next.push(`${dir}/${segment}`);
        continue;
      }
      try {
        for await (const entry of Deno.readDir(dir)) {
          if (entry.isDirectory && pattern.test(entry.name)) next.push(`${dir}/${entry.name}`);
        }
      } catch { /* unreadable or gone: nothing below it to clean */ }
    }
    found = next;
  }
  return found;
}

/** Removes files in `maildir/tmp` last modified before `maxAgeMs` ago; returns how many. */
export async function removeStaleTmpFiles(
  maildir: string,
  maxAgeMs: number,
  now: number = Date.now(),
): Promise<number> {
  let removed = 0;
  try {
    for await (const entry of Deno.readDir(`${maildir}/tmp`)) {
      if (!entry.isFile) continue;
      const path = `${maildir}/tmp/${entry.name}`;
      const stat = await Deno.lstat(path).catch(() => undefined);
      // The specification measures from the last access; mtime is what every
      // file system keeps reliably (many mount with noatime).
      if (stat?.mtime && now - stat.mtime.getTime() > maxAgeMs) {
        await Deno.remove(path).then(() => removed++, () => {});
      }
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return removed;
}

function segmentPattern(segment: string): RegExp | undefined {
  if (!PLACEHOLDERS.some((p) => segment.includes(p))) return undefined;
  const parts = segment.split(/(\{domain\}|\{user\}|\{local\})/);
  const source = parts.map((part) =>
    (PLACEHOLDERS as readonly string[]).includes(part)
      ? "[^/]+"
      : part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
  ).join("");
  return new RegExp(`^${source}$`);
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}
