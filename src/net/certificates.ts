/**
 * TLS material: the operator's PEM files, or one self-signed certificate made
 * in memory at start when none is given (self_signed.ts; for local use and for MX peers,
 * which do not verify certificates by default).
 *
 * @module
 */

import { describeError } from "../log.ts";
import { createPrivateKey, X509Certificate } from "node:crypto";
import tls from "node:tls";
import { ConfigError } from "../config/config.ts";
import { grantAdvice } from "../config/grant.ts";

/** A certificate chain and its key, PEM-encoded. */
export interface KeyPair {
  readonly cert: string;
  readonly key: string;
}

/** Builds a server context; only TLS 1.2 and newer, as RFC 8996 asks. */
export function secureContext(pair: KeyPair): tls.SecureContext {
  return tls.createSecureContext({ cert: pair.cert, key: pair.key, minVersion: "TLSv1.2" });
}

/** Reads and checks a PEM certificate chain and key; throws {@link ConfigError}. */
export async function readKeyPair(certFile: string, keyFile: string): Promise<KeyPair> {
  const read = async (file: string, flag: string) => {
    try {
      return await Deno.readTextFile(file);
    } catch (error) {
      throw new ConfigError(
        `Cannot read ${flag} ${JSON.stringify(file)}: ${
          grantAdvice(error, "read", file) ?? describeError(error)
        }`,
      );
    }
  };
  const pair = { cert: await read(certFile, "--tls-cert"), key: await read(keyFile, "--tls-key") };
  try {
    checkKeyPair(pair);
    secureContext(pair);
  } catch (error) {
    throw new ConfigError(
      `Cannot use --tls-cert ${JSON.stringify(certFile)} with --tls-key ${
        JSON.stringify(keyFile)
      }: ${describeError(error)}`,
    );
  }
  return pair;
}

/**
 * Checks that the chain starts with a certificate and that the key is its
 * key. Deno's `createSecureContext` accepts anything and fails only at the
 * first handshake, which would turn a bad reload into broken TLS.
 */
export function checkKeyPair(pair: KeyPair): void {
  const first = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(pair.cert)?.[0];
  if (!first) throw new Error("the certificate file holds no PEM certificate");
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(first);
  } catch {
    throw new Error("the certificate does not parse");
  }
  let key;
  try {
    key = createPrivateKey(pair.key);
  } catch {
    throw new Error("the key file holds no PEM private key");
  }
  if (!certificate.checkPrivateKey(key)) {
    throw new Error("the key does not belong to the certificate");
  }
}

/** The leaf certificate's subject and expiry, for logs and metrics. */
export interface CertificateFacts {
  readonly subject: string;
  readonly notAfter: Date;
}

/** Reads the subject and expiry of the first certificate in a PEM chain. */
export function certificateFacts(pair: KeyPair): CertificateFacts {
  const first = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(pair.cert)?.[0];
  const certificate = new X509Certificate(first ?? pair.cert);
  return {
    subject: certificate.subject.replaceAll("\n", ", "),
    notAfter: new Date(certificate.validTo),
  };
}
