/**
 * Real clients against the real program: Python's smtplib, swaks and
 * openssl s_client, each over STARTTLS.
 */

import { CERTS, readMessages, run, startServer } from "./_server.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./_assert.ts";

const PYTHON_SEND = `
import smtplib, ssl, sys
from email.message import EmailMessage
port, ca = int(sys.argv[1]), sys.argv[2]
msg = EmailMessage()
msg["From"] = "Bob <bob@sender.test>"
msg["To"] = "alice@example.com"
msg["Subject"] = "Quarterly report"
msg["Message-ID"] = "<report-1@sender.test>"
msg.set_content("Numbers attached.\\n")
msg.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="octet-stream", filename="data.bin")
context = ssl.create_default_context(cafile=ca)
with smtplib.SMTP("127.0.0.1", port, local_hostname="py.test") as smtp:
    smtp.starttls(context=context)
    smtp.ehlo("py.test")
    refused = smtp.send_message(msg)
    print("refused", refused)
`;

Deno.test("Python smtplib sends a multipart message with an attachment over STARTTLS", async () => {
  const server = await startServer();
  try {
    const result = await run("python3", ["-c", PYTHON_SEND, String(server.port), CERTS.ca]);
    assertEquals(result.stderr, "");
    assertEquals(result.stdout.trim(), "refused {}");
    const [message] = await readMessages(server.maildir);
    assertStringIncludes(message, "with ESMTPS id");
    assertStringIncludes(message, 'filename="data.bin"');
    const delivered = server.logs.find((l) => String(l.message).startsWith("Delivered"));
    const properties = delivered?.properties as Record<string, unknown>;
    assertEquals(properties.subject, "Quarterly report");
    assertEquals(properties.messageId, "<report-1@sender.test>");
    assertEquals(properties.attachments, 1);
  } finally {
    await server.stop();
  }
});

Deno.test("the attachment sent by smtplib is stored byte-exact (decoded back by Python)", async () => {
  const server = await startServer();
  try {
    await run("python3", ["-c", PYTHON_SEND, String(server.port), CERTS.ca]);
    const [name] = [...Deno.readDirSync(`${server.maildir}/new`)].map((e) => e.name);
    const check = await run("python3", [
      "-c",
      `import email, sys
m = email.message_from_binary_file(open(sys.argv[1], "rb"))
parts = [p for p in m.walk() if p.get_filename() == "data.bin"]
print(parts[0].get_payload(decode=True) == bytes(range(256)) * 40)`,
      `${server.maildir}/new/${name}`,
    ]);
    assertEquals(check.stdout.trim(), "True");
  } finally {
    await server.stop();
  }
});

Deno.test({
  name: "swaks delivers over STARTTLS",
  fn: async () => {
    const server = await startServer();
    try {
      const result = await run("swaks", [
        "--to",
        "someone@example.com",
        "--from",
        "swaks@sender.test",
        "--server",
        `127.0.0.1:${server.port}`,
        "--tls",
        "--header",
        "Subject: via swaks",
        "--body",
        "swaks body",
      ]);
      assertEquals(result.code, 0, result.stdout + result.stderr);
      assertMatch(result.stdout, /<~ {2}250 2\.0\.0 Ok: queued as /);
      const [message] = await readMessages(server.maildir);
      assertStringIncludes(message, "Subject: via swaks");
      assertStringIncludes(message, "swaks body");
      assertMatch(message, /with ESMTPS id/);
    } finally {
      await server.stop();
    }
  },
});

/** Runs `openssl s_client -starttls smtp` against the server with extra options and input. */
function sClient(port: number, options: string[], input: string) {
  return run("openssl", [
    "s_client",
    "-starttls",
    "smtp",
    "-connect",
    `127.0.0.1:${port}`,
    ...options,
  ], {
    stdin: input,
  });
}

Deno.test({
  name: "openssl s_client -starttls smtp verifies our chain and can send a message",
  fn: async () => {
    const server = await startServer();
    try {
      // s_client sends the EHLO and STARTTLS itself; what we type runs inside TLS.
      const result = await sClient(
        server.port,
        [
          "-CAfile",
          CERTS.ca,
          "-verify_hostname",
          "localhost",
          "-verify_return_error",
          "-crlf",
          "-quiet",
          "-ign_eof",
        ],
        "EHLO openssl.test\nMAIL FROM:<o@sender.test>\nRCPT TO:<r@example.com>\nDATA\nSubject: openssl\n\nover tls\n.\nQUIT\n",
      );
      assertEquals(result.code, 0, result.stderr);
      assertMatch(result.stdout, /250 2\.0\.0 Ok: queued as [0-9A-Z]+\r\n221 2\.0\.0 Bye/);
      const [message] = await readMessages(server.maildir);
      assertStringIncludes(message, "over tls");
      assert(message.includes("(using TLSv1.3"), "TLS 1.3 negotiated");
    } finally {
      await server.stop();
    }
  },
});

Deno.test({
  name: "openssl cannot negotiate TLS 1.1 or older",
  fn: async () => {
    const server = await startServer();
    try {
      const result = await sClient(server.port, [
        "-tls1_1",
        "-cipher",
        "DEFAULT@SECLEVEL=0",
      ], "QUIT\n");
      assert(result.code !== 0, "handshake must fail");
    } finally {
      await server.stop();
    }
  },
});

Deno.test("smtplib's send_message() with mail_options=['SMTPUTF8'] (SMTPUTF8 sent twice) is accepted", async () => {
  const server = await startServer(["--no-tls"], { useTestCert: false });
  try {
    const result = await run("python3", [
      "-c",
      `import smtplib, sys
from email.message import EmailMessage
msg = EmailMessage()
msg["From"] = "jörg@example.org"
msg["To"] = "alice@example.com"
msg["Subject"] = "Grüße"
msg.set_content("Hallo\\n")
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="py.test") as smtp:
    smtp.set_debuglevel(1)
    print("refused", smtp.send_message(msg, mail_options=["SMTPUTF8"]))`,
      String(server.port),
    ]);
    // smtplib really sent the parameter twice (its debug output is on stderr).
    assertMatch(result.stderr, /mail FROM:<jörg@example\.org> size=\d+ SMTPUTF8 SMTPUTF8/);
    assertEquals(result.stdout.trim(), "refused {}");
    const [message] = await readMessages(server.maildir);
    assertStringIncludes(message, "Return-Path: <jörg@example.org>");
  } finally {
    await server.stop();
  }
});

Deno.test("a TLS 1.0-only client is told so with an alert, after STARTTLS and on the implicit-TLS port", async () => {
  const server = await startServer([], { tlsListener: true });
  try {
    const starttls = await sClient(server.port, ["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"], "");
    const implicit = await run("openssl", [
      "s_client",
      "-connect",
      `127.0.0.1:${server.tlsPort}`,
      "-tls1",
      "-cipher",
      "DEFAULT@SECLEVEL=0",
    ], { stdin: "" });
    for (const result of [starttls, implicit]) {
      assert(result.code !== 0, "handshake must fail");
      // A bare close reads "unexpected eof"; an alert names itself.
      assertMatch(result.stderr, /alert (handshake failure|protocol version)/, result.stderr);
    }
  } finally {
    await server.stop();
  }
});
