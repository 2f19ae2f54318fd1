/**
 * Certificates are reloaded when their files change (and on SIGHUP) without
 * dropping connections; a broken new pair keeps the old one in force.
 */

import { CERTS, run, spawnServer, TestClient, waitForLog } from "./_server.ts";
import { assertEquals, assertMatch, assertNotEquals } from "./_assert.ts";

/** The SHA-256 fingerprint of the certificate a new STARTTLS connection is shown. */
async function servedFingerprint(port: number): Promise<string> {
  const shown = await run("openssl", [
    "s_client",
    "-starttls",
    "smtp",
    "-connect",
    `127.0.0.1:${port}`,
  ], { stdin: "QUIT\n" });
  const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(shown.stdout)
    ?.[0];
  if (!pem) throw new Error(`No certificate shown:\n${shown.stderr}`);
  return await fileFingerprint(pem);
}

async function fileFingerprint(pem: string): Promise<string> {
  const result = await run("openssl", ["x509", "-noout", "-fingerprint", "-sha256"], {
    stdin: pem,
  });
  return result.stdout.trim();
}

/** A new leaf for localhost from the test CA, written to `dir`. */
async function newLeaf(dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  assertEquals(
    (await run("openssl", [
      "req",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-subj",
      "/CN=localhost",
      "-keyout",
      `${dir}/key.pem`,
      "-out",
      `${dir}/req.csr`,
    ])).code,
    0,
  );
  await Deno.writeTextFile(`${dir}/ext`, "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  const signed = await run("openssl", [
    "x509",
    "-req",
    "-in",
    `${dir}/req.csr`,
    "-CA",
    CERTS.ca,
    "-CAkey",
    CERTS.ca.replace("ca.pem", "ca-key.pem"),
    "-CAcreateserial",
    "-CAserial",
    `${dir}/serial`,
    "-days",
    "2",
    "-extfile",
    `${dir}/ext`,
    "-out",
    `${dir}/cert.pem`,
  ]);
  assertEquals(signed.code, 0, signed.stderr);
}

Deno.test("a replaced certificate is used by the next connection while existing ones go on", async () => {
  const root = await Deno.makeTempDir({ prefix: "letterbox-tls-" });
  await Deno.mkdir(`${root}/tls`);
  await Deno.copyFile(CERTS.cert, `${root}/tls/cert.pem`);
  await Deno.copyFile(CERTS.key, `${root}/tls/key.pem`);
  const server = await spawnServer([
    "--tls-cert",
    `${root}/tls/cert.pem`,
    "--tls-key",
    `${root}/tls/key.pem`,
  ], {
    maildir: root,
    useTestCert: false,
  });
  const client = await TestClient.connect(server.port);
  try {
    await client.reply();
    await client.upgrade();
    assertEquals((await client.command("EHLO client.test")).code, 250);
    const before = await servedFingerprint(server.port);
    assertEquals(before, await fileFingerprint(await Deno.readTextFile(CERTS.cert)));

    // A deploy hook writes the new pair next to the old one and renames it into place.
    await newLeaf(`${root}/new`);
    let mark = server.logs.length;
    await Deno.rename(`${root}/new/key.pem`, `${root}/tls/key.pem`);
    await Deno.rename(`${root}/new/cert.pem`, `${root}/tls/cert.pem`);
    await waitForLog(server.logs, "Reloaded the TLS certificate", mark);
    // Each reload names the certificate now in force: its subject and expiry.
    const reloaded = server.logs.slice(mark).find((l) =>
      String(l.message).startsWith("Reloaded the TLS certificate")
    )!.properties as Record<string, string>;
    assertMatch(reloaded.subject, /CN=/);
    assertMatch(reloaded.notAfter, /^\d{4}-\d\d-\d\dT/);
    const after = await servedFingerprint(server.port);
    assertNotEquals(after, before);
    assertEquals(after, await fileFingerprint(await Deno.readTextFile(`${root}/tls/cert.pem`)));
    assertEquals(
      (await client.command("NOOP")).code,
      250,
      "the connection made before the change goes on",
    );

    // A broken pair is refused and the one in force stays.
    mark = server.logs.length;
    await Deno.writeTextFile(`${root}/tls/cert.pem`, "not a certificate\n");
    await waitForLog(server.logs, "Kept the TLS certificate in force", mark);
    assertEquals(await servedFingerprint(server.port), after);

    // SIGHUP reloads too.
    await Deno.copyFile(CERTS.cert, `${root}/tls/cert.pem`);
    await Deno.copyFile(CERTS.key, `${root}/tls/key.pem`);
    await new Promise((resolve) => setTimeout(resolve, 800));
    mark = server.logs.length;
    server.process.kill("SIGHUP");
    await waitForLog(server.logs, 'Reloaded the TLS certificate ("SIGHUP")', mark);
    assertEquals(await servedFingerprint(server.port), before);
  } finally {
    client.close();
    await server.stop();
    await Deno.remove(root, { recursive: true });
  }
});
