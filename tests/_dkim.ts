/**
 * DKIM signing for tests and the benchmark: an RSA key made fresh with
 * WebCrypto, its DNS record, and mailauth's signer.
 */

import { dkimSign } from "mailauth";

/** A signing key and the TXT record that publishes it. */
export interface DkimKey {
  /** PKCS #8 PEM, as mailauth's signer takes it. */
  readonly privateKey: string;
  /** The `sel._domainkey` TXT value: `v=DKIM1; k=rsa; p=...`. */
  readonly record: string;
}

const base64 = (bytes: ArrayBuffer) => btoa(String.fromCharCode(...new Uint8Array(bytes)));

/** Makes a 2048-bit RSA key. */
export async function makeDkimKey(): Promise<DkimKey> {
  const keys = await crypto.subtle.generateKey(
    {
      name: "RSASSA-PKCS1-v1_5",
      modulusLength: 2048,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    true,
    ["sign", "verify"],
  ) as CryptoKeyPair;
  const pkcs8 = base64(await crypto.subtle.exportKey("pkcs8", keys.privateKey));
  return {
    privateKey: `-----BEGIN PRIVATE KEY-----\n${
      pkcs8.replace(/.{64}/g, "$&\n")
    }\n-----END PRIVATE KEY-----\n`,
    record: `v=DKIM1; k=rsa; p=${base64(await crypto.subtle.exportKey("spki", keys.publicKey))}`,
  };
}

/** `text` with a DKIM-Signature (relaxed/relaxed) for `domain`, selector `sel`, on top. */
export async function dkimSigned(key: DkimKey, domain: string, text: string): Promise<string> {
  // The signing fields go inside signatureData: at the top level (as the
  // package's types suggest) mailauth signs nothing and says nothing.
  const result = await dkimSign(
    text,
    {
      canonicalization: "relaxed/relaxed",
      signatureData: [{ signingDomain: domain, selector: "sel", privateKey: key.privateKey }],
    } as unknown as Parameters<typeof dkimSign>[1],
  );
  if (!result.signatures) throw new Error("dkimSign signed nothing");
  return result.signatures + text;
}
