/**
 * A small load client for tests: messages over one connection with
 * PIPELINING (MAIL, RCPT and DATA in one write, the content after 354), and a
 * seeded random generator so that every run is repeatable.
 *
 * @module
 */

import { TestClient } from "./_server.ts";

/** A message to send: who it is from and to, and its content in wire form (CRLF, no final dot). */
export interface LoadMessage {
  readonly id: string;
  readonly from: string;
  readonly to: string;
  readonly content: string;
}

/** mulberry32: a tiny seeded generator; returns floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Dot-stuffs content for the wire (RFC 5321 4.5.2) and appends the end marker. */
export function dataSection(content: string): string {
  return content.replace(/^\./gm, "..") + (content.endsWith("\r\n") ? "" : "\r\n") + ".\r\n";
}

/**
 * Sends messages taken from `next()` (until it returns undefined) over one
 * connection, calling `acknowledged` for each 250. Stops quietly when the
 * server goes away; returns how many were acknowledged.
 */
export async function sendMessages(
  port: number,
  next: () => LoadMessage | undefined,
  acknowledged: (message: LoadMessage, queueId: string) => void,
): Promise<number> {
  let count = 0;
  let client: TestClient | undefined;
  try {
    client = await TestClient.connect(port);
    await client.reply();
    await client.command("EHLO load.test");
    for (let message = next(); message; message = next()) {
      await client.send(`MAIL FROM:<${message.from}>\r\nRCPT TO:<${message.to}>\r\nDATA\r\n`);
      const replies = [await client.reply(), await client.reply(), await client.reply()];
      if (replies[2].code !== 354) {
        throw new Error(`Refused: ${replies.map((r) => r.text).join("")}`);
      }
      await client.send(dataSection(message.content));
      const reply = await client.reply(60_000);
      const queued = /^250 2\.0\.0 Ok: queued as (\S+)/.exec(reply.text);
      if (!queued) throw new Error(`Not queued: ${reply.text}`);
      count++;
      acknowledged(message, queued[1]);
    }
    await client.command("QUIT");
  } catch {
    // The server went away (a crash test kills it): what was acknowledged counts.
  } finally {
    client?.close();
  }
  return count;
}
