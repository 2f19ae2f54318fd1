/**
 * The TLS certificate in force, and its reloading: on request (SIGHUP,
 * certbot's deploy hook) and when the certificate files change. Whatever
 * fails to load leaves the certificate in force, and says why; new
 * connections use a new one, existing ones go on with theirs.
 *
 * @module
 */

import { describeError } from "../log.ts";
import type { Logger } from "@logtape/logtape";
import type { SecureContext } from "node:tls";
import {
  type CertificateFacts,
  certificateFacts,
  type KeyPair,
  readKeyPair,
  secureContext,
} from "./certificates.ts";

/** Where the certificate comes from. */
export interface CertificateSource {
  /** False when TLS is off: there is then no context at all. */
  readonly tls: boolean;
  /** The PEM chain and key files; absent for a self-signed certificate made at start. */
  readonly certFile?: string;
  readonly keyFile?: string;
  /** The host name a self-signed certificate is made for. */
  readonly hostname: string;
}

// Certificate and key are often written one after the other: reload once
// things have been quiet this long, so that both are read together.
const SETTLE_MS = 500;

/** Holds the TLS context new connections use. */
export class CertificateStore {
  readonly #source: CertificateSource;
  readonly #log: Logger;
  #context: SecureContext | undefined;
  #facts: CertificateFacts | undefined;
  #watcher: Deno.FsWatcher | undefined;
  #watching: Promise<void> | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;

  private constructor(source: CertificateSource, log: Logger) {
    this.#source = source;
    this.#log = log;
  }

  /** Loads the certificate; throws (a ConfigError for unusable files) when it cannot. */
  static async load(source: CertificateSource, log: Logger): Promise<CertificateStore> {
    const store = new CertificateStore(source, log);
    if (!source.tls) return store;
    store.#use(
      source.certFile && source.keyFile
        ? await readKeyPair(source.certFile, source.keyFile)
        // Loaded only when needed (see self_signed.ts).
        : await (await import("./self_signed.ts")).selfSignedKeyPair(source.hostname),
    );
    return store;
  }

  #use(pair: KeyPair): void {
    this.#context = secureContext(pair);
    this.#facts = certificateFacts(pair);
  }

  /** The certificate in force: its subject and expiry, or undefined when TLS is off. */
  get facts(): CertificateFacts | undefined {
    return this.#facts;
  }

  /** The context new connections use, or undefined when TLS is off. */
  get context(): SecureContext | undefined {
    return this.#context;
  }

  /** True when the certificate is one made at start, not the operator's. */
  get selfSigned(): boolean {
    return this.#source.tls && !this.#source.certFile;
  }

  /** Reads the files again; on failure keeps the certificate in force and logs why. */
  async reload(why: string): Promise<void> {
    const { certFile, keyFile } = this.#source;
    if (!certFile || !keyFile) return;
    try {
      this.#use(await readKeyPair(certFile, keyFile));
      this.#log.info(
        "Reloaded the TLS certificate ({why}): new connections use it; {subject}, valid until {notAfter}",
        { why, subject: this.#facts!.subject, notAfter: this.#facts!.notAfter.toISOString() },
      );
    } catch (error) {
      this.#log.error("Kept the TLS certificate in force ({why}): {error}", {
        why,
        error: describeError(error),
      });
    }
  }

  /**
   * Watches the folders of the certificate and key (files are often replaced
   * by a rename, which a watch on the file itself would miss) until
   * {@link close}.
   */
  watch(): void {
    const { certFile, keyFile } = this.#source;
    if (!certFile || !keyFile || this.#watcher) return;
    const files = [certFile, keyFile];
    const folders = [
      ...new Set(files.map((file) => file.slice(0, Math.max(1, file.lastIndexOf("/"))))),
    ];
    const names = new Set(files.map((file) => file.slice(file.lastIndexOf("/") + 1)));
    try {
      this.#watcher = Deno.watchFs(folders, { recursive: false });
    } catch (error) {
      this.#log.warn("Not watching the certificate files: {error}", {
        error: describeError(error),
      });
      return;
    }
    const watcher = this.#watcher;
    this.#watching = (async () => {
      try {
        for await (const event of watcher) {
          if (!event.paths.some((path) => names.has(path.slice(path.lastIndexOf("/") + 1)))) {
            continue;
          }
          clearTimeout(this.#timer);
          this.#timer = setTimeout(() => void this.reload("files changed"), SETTLE_MS);
        }
      } catch { /* closed */ }
    })();
  }

  /** Stops watching. */
  async close(): Promise<void> {
    clearTimeout(this.#timer);
    try {
      this.#watcher?.close();
    } catch { /* already closed */ }
    await this.#watching;
  }
}
