/**
 * Bad configuration: the real program prints one line on stderr and exits 2.
 */

import { REPO, run, serverPermissions } from "./_server.ts";
import { assertEquals, assertMatch } from "./_assert.ts";

async function letterbox(args: string[], env: Record<string, string> = {}) {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-config-" });
  try {
    return await run(Deno.execPath(), [
      "run",
      ...serverPermissions(dir),
      `${REPO}/main.ts`,
      "--maildir",
      dir,
      ...args,
    ], {
      env,
      cwd: REPO,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const CASES: [string, string[], Record<string, string>, RegExp][] = [
  [
    "a DNS server it may not ask",
    ["--dns-server", "192.0.2.53:53"],
    {},
    /^letterbox: Cannot authenticate senders: Letterbox may not connect to 192\.0\.2\.53:53; grant it with make run PERMISSIONS=--allow-net=192\.0\.2\.53:53, or build with make build DNS_SERVERS=192\.0\.2\.53:53 \(or --dns-server HOST:PORT, or --authentication off\)$/,
  ],
  [
    "the system's DNS server it may not ask",
    [],
    {},
    /^letterbox: Cannot authenticate senders: Letterbox may not connect to \S+:53; .*make build DNS_SERVERS=/,
  ],
  [
    "a bad --lmtp address",
    ["--lmtp", "dovecot"],
    {},
    /^letterbox: Cannot use --lmtp "dovecot": write HOST:PORT, \[V6\]:PORT or unix:\/path/,
  ],
  [
    "an LMTP server it may not reach",
    ["--authentication", "off", "--lmtp", "192.0.2.7:24"],
    {},
    /^letterbox: Cannot use --lmtp "192\.0\.2\.7:24": Letterbox may not connect to 192\.0\.2\.7:24; .*make build LMTP_HOSTS=192\.0\.2\.7:24$/,
  ],
  [
    "a bad --rspamd URL",
    ["--rspamd", "127.0.0.1:11333"],
    {},
    /^letterbox: Cannot use --rspamd "127\.0\.0\.1:11333": write the worker's http:\/\/ URL, e\.g\. http:\/\/127\.0\.0\.1:11333$/,
  ],
  [
    "an rspamd it may not reach",
    ["--authentication", "off", "--rspamd", "http://192.0.2.9:11333"],
    {},
    /^letterbox: Cannot use --rspamd "http:\/\/192\.0\.2\.9:11333": Letterbox may not connect to 192\.0\.2\.9:11333; .*make build RSPAMD_HOSTS=192\.0\.2\.9:11333$/,
  ],
  [
    "a bad --dns-server",
    ["--dns-server", "dns.example"],
    {},
    /^letterbox: Cannot use --dns-server "dns\.example": write an IP address and port/,
  ],
  [
    "a hook condition without authentication",
    ["--authentication", "off", "--hook", "a@x.test=https://127.0.0.1:1/h,auth=dmarc"],
    {},
    /^letterbox: Cannot use --hook "a@x\.test=https:\/\/127\.0\.0\.1:1\/h,auth=dmarc" with --authentication off/,
  ],
  [
    "an unknown hook condition",
    ["--hook", "a@x.test=https://127.0.0.1:1/h,auth=spf"],
    {},
    /^letterbox: Cannot use --hook "auth=spf": auth=spf is unknown: write auth=dmarc$/,
  ],
  [
    "an unknown flag",
    ["--colour"],
    {},
    /^letterbox: Cannot use "--colour": it is not an option; see --help$/,
  ],
  [
    "a bad listen address",
    ["--listen", "localhost"],
    {},
    /^letterbox: Cannot use --listen "localhost": write HOST:PORT/,
  ],
  [
    "a port out of range",
    ["--listen", "127.0.0.1:70000"],
    {},
    /^letterbox: Cannot use --listen "127\.0\.0\.1:70000"/,
  ],
  [
    "a bad environment value",
    [],
    { LETTERBOX_MAX_MESSAGE_SIZE: "huge" },
    /^letterbox: Cannot use LETTERBOX_MAX_MESSAGE_SIZE "huge"/,
  ],
  [
    "an unreadable certificate",
    ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
    {},
    /^letterbox: Cannot read --tls-cert "\/nonexistent\/cert\.pem": /,
  ],
  [
    "a certificate that is not PEM",
    ["--tls-cert", `${REPO}/deno.json`, "--tls-key", `${REPO}/deno.json`],
    {},
    /^letterbox: Cannot (read|use) --tls-cert/,
  ],
  [
    "a template that could escape its root",
    ["--maildir", "/tmp/../{user}"],
    {},
    /^letterbox: Cannot use --maildir "\/tmp\/\.\.\/\{user\}": it must not contain "\.\." segments$/,
  ],
  [
    "a template without a fixed root",
    ["--maildir", "{domain}/{user}"],
    {},
    /^letterbox: Cannot use --maildir "\{domain\}\/\{user\}": placeholders must come after a fixed root/,
  ],
  [
    "a key that does not belong to the certificate",
    ["--tls-cert", `${REPO}/certs/leaf.pem`, "--tls-key", `${REPO}/certs/ca-key.pem`],
    {},
    /^letterbox: Cannot use --tls-cert ".*leaf\.pem" with --tls-key ".*ca-key\.pem": the key does not belong to the certificate$/,
  ],
  [
    "a broken recipients file",
    ["--recipients", `${REPO}/certs/make-certs.sh`],
    {},
    /^letterbox: Cannot use --recipients ".*make-certs\.sh": line 6: "set -eu" is not an address such as alice@example\.com$/,
  ],
  [
    "a misspelt environment variable",
    [],
    { LETTERBOX_MAX_MESAGE_SIZE: "10M" },
    /^letterbox: Cannot use LETTERBOX_MAX_MESAGE_SIZE: it is not a setting; did you mean LETTERBOX_MAX_MESSAGE_SIZE\?$/,
  ],
  [
    "a bad log format",
    [],
    { LETTERBOX_LOG_FORMAT: "xml" },
    /^letterbox: Cannot use LETTERBOX_LOG_FORMAT "xml": use text or json$/,
  ],
];

for (const [what, args, env, expected] of CASES) {
  Deno.test(`bad configuration exits 2 with one line: ${what}`, async () => {
    const result = await letterbox(args, env);
    assertEquals(result.code, 2, result.stderr);
    const lines = result.stderr.split("\n").filter((line) => line !== "");
    assertEquals(lines.length, 1, result.stderr);
    assertMatch(lines[0], expected);
  });
}

Deno.test("bad configuration exits 2 with one line: a listen address already in use", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = (taken.addr as Deno.NetAddr).port;
    const result = await letterbox([
      "--listen",
      `127.0.0.1:${port}`,
      "--no-tls",
      "--authentication",
      "off",
    ]);
    assertEquals(result.code, 2, result.stderr);
    // Not the bare EADDRINUSE any more (issue 15): what holds it and what to do.
    assertEquals(
      result.stderr,
      `letterbox: Cannot listen on 127.0.0.1:${port}: another program holds the port ` +
        `(see which with: ss -ltnp 'sport = :${port}'); stop it (on a new VPS, usually the ` +
        "distribution's exim4 or postfix) or choose another --listen\n",
    );
  } finally {
    taken.close();
  }
});

Deno.test("--version prints the version and the Deno version", async () => {
  const result = await letterbox(["--version"]);
  assertEquals(result.code, 0);
  assertMatch(result.stdout, /^letterbox \d+\.\d+\.\d+ \(deno \d+\.\d+\.\d+\)\n$/);
});

Deno.test("--help lists every flag", async () => {
  const result = await letterbox(["--help"]);
  assertEquals(result.code, 0);
  for (
    const flag of [
      "--listen ",
      "--listen-tls",
      "--hostname",
      "--maildir",
      "--domain",
      "--tls-cert",
      "--tls-key",
      "--no-tls",
      "--require-tls",
      "--max-message-size",
      "--max-recipients",
      "--log-level",
      "--log-format",
    ]
  ) {
    assertMatch(result.stdout, new RegExp(flag));
  }
});

Deno.test("an exec hook Letterbox may not run stops the start, naming the permission to grant", async () => {
  const result = await letterbox(["--no-tls", "--hook", "*=exec:/bin/true"]);
  assertEquals(result.code, 2);
  assertEquals(
    result.stderr,
    'letterbox: Cannot use --hook "*=exec:/bin/true": Letterbox may not run /bin/true; grant it ' +
      "with make run PERMISSIONS=--allow-run=/bin/true, or build with make build HOOK_COMMANDS=/bin/true\n",
  );
});

Deno.test("an exec hook naming a missing or non-executable program stops the start", async () => {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-hook-" });
  try {
    await Deno.writeTextFile(`${dir}/not-executable`, "#!/bin/sh\n", { mode: 0o644 });
    for (
      const [command, problem] of [
        [`${dir}/missing`, "does not exist"],
        [`${dir}/not-executable`, "is not executable"],
      ]
    ) {
      const result = await run(Deno.execPath(), [
        "run",
        "-A",
        `${REPO}/main.ts`,
        "--no-tls",
        "--listen",
        "127.0.0.1:0",
        "--maildir",
        `${dir}/Maildir`,
        "--hook",
        `*=exec:${command}`,
      ]);
      assertEquals(result.code, 2, result.stderr);
      assertEquals(
        result.stderr,
        `letterbox: Cannot use --hook "*=exec:${command}": ${command} ${problem}\n`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a recipients file or certificate the permissions do not cover says how to grant it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-grant-" });
  try {
    await Deno.writeTextFile(`${dir}/recipients`, "alice@example.com\n");
    const recipients = await letterbox(["--no-tls", "--recipients", `${dir}/recipients`]);
    assertEquals(recipients.code, 2);
    assertEquals(
      recipients.stderr,
      `letterbox: Cannot use --recipients "${dir}/recipients": Letterbox may not read ` +
        `${dir}/recipients; grant it with make run PERMISSIONS=--allow-read=${dir}/recipients, ` +
        `or build with make build CERT_DIR=${dir}\n`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
