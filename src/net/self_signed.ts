/**
 * The self-signed certificate Letterbox makes at start when the operator gave
 * none. Its own module so that @peculiar/x509 is loaded only then: with its
 * dependencies it takes about 5 MB of heap (10 MiB of RSS at start) that a
 * server with the operator's certificate would carry, and every garbage
 * collection walk, for nothing.
 *
 * @module
 */

import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import type { KeyPair } from "./certificates.ts";

/** Makes a self-signed ECDSA P-256 certificate for `hostname`, valid for a year. */
export async function selfSignedKeyPair(hostname: string): Promise<KeyPair> {
  x509.cryptoProvider.set(crypto);
  const algorithm = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const keys = await crypto.subtle.generateKey(algorithm, true, ["sign", "verify"]);
  const now = Date.now();
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Array.from(
      crypto.getRandomValues(new Uint8Array(8)),
      (b) => b.toString(16).padStart(2, "0"),
    )
      .join("").replace(/^[89a-f]/, "1"),
    name: `CN=${hostname}`,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 365 * 86_400_000),
    signingAlgorithm: algorithm,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.SubjectAlternativeNameExtension([{ type: "dns", value: hostname }]),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
    ],
  });
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", keys.privateKey));
  const base64 = btoa(String.fromCharCode(...pkcs8)).replace(/.{64}/g, "$&\n").trimEnd();
  return {
    cert: certificate.toString("pem"),
    key: `-----BEGIN PRIVATE KEY-----\n${base64}\n-----END PRIVATE KEY-----\n`,
  };
}
