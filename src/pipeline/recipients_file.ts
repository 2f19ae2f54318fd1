/**
 * The recipients file in force: read at start (a mistake stops the start)
 * and again on reload (a mistake then keeps the table in force, and says
 * why). Routes already decided keep the table they were decided with.
 *
 * @module
 */

import { describeError } from "../log.ts";
import type { Logger } from "@logtape/logtape";
import { ConfigError } from "../config/config.ts";
import { grantAdvice } from "../config/grant.ts";
import { parseRecipients, type RecipientTable } from "./recipients.ts";

/** Owns one recipients file and its current table. */
export class RecipientsFile {
  readonly #path: string;
  readonly #log: Logger;
  #table: RecipientTable;

  private constructor(path: string, table: RecipientTable, log: Logger) {
    this.#path = path;
    this.#table = table;
    this.#log = log;
  }

  /** Reads the file; throws {@link ConfigError} naming it when it is unusable. */
  static async load(path: string, log: Logger): Promise<RecipientsFile> {
    try {
      return new RecipientsFile(path, parseRecipients(await Deno.readTextFile(path)), log);
    } catch (error) {
      throw new ConfigError(
        `Cannot use --recipients ${JSON.stringify(path)}: ${
          grantAdvice(error, "read", path) ?? describeError(error)
        }`,
      );
    }
  }

  /** The table in force. */
  get table(): RecipientTable {
    return this.#table;
  }

  /** Reads the file again; on failure keeps the table in force and logs why. */
  async reload(): Promise<void> {
    try {
      const table = parseRecipients(await Deno.readTextFile(this.#path));
      this.#table = table;
      this.#log.info("Reloaded {file}: {count} addresses", {
        file: this.#path,
        count: table.mailboxes.size + table.aliases.size + table.catchAll.size,
      });
    } catch (error) {
      this.#log.error("Kept the recipients in force: cannot use {file}: {error}", {
        file: this.#path,
        error: describeError(error),
      });
    }
  }
}
