/**
 * The deployment kit: the systemd unit passes `systemd-analyze verify`, and
 * the example environment file configures a server that starts.
 */

import { have, REPO, run } from "./_server.ts";
import { assert, assertEquals, assertStringIncludes } from "./_assert.ts";

Deno.test({
  name: "deploy/letterbox.service passes systemd-analyze verify",
  ignore: !(await have("systemd-analyze")),
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      // verify checks that ExecStart exists: point it at a real executable.
      const unit = (await Deno.readTextFile(`${REPO}/deploy/letterbox.service`))
        .replace("ExecStart=/usr/local/bin/letterbox", "ExecStart=/bin/true");
      await Deno.writeTextFile(`${dir}/letterbox.service`, unit);
      const result = await run("systemd-analyze", ["verify", `${dir}/letterbox.service`]);
      const complaints = result.stderr.split("\n").filter((line) =>
        line.includes("letterbox.service")
      );
      assertEquals(complaints, [], result.stderr);
      for (
        const directive of [
          "AmbientCapabilities=CAP_NET_BIND_SERVICE",
          "ProtectSystem=strict",
          "ReadWritePaths=/var/vmail",
          "NoNewPrivileges=yes",
          "EnvironmentFile=",
          "ExecReload=/bin/kill -HUP $MAINPID",
        ]
      ) {
        assertStringIncludes(unit, directive);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("deploy/letterbox.env names only variables Letterbox knows", async () => {
  const env = await Deno.readTextFile(`${REPO}/deploy/letterbox.env`);
  const help = (await run(Deno.execPath(), [
    "run",
    "--allow-env=LETTERBOX_*",
    "--allow-sys=hostname",
    `${REPO}/main.ts`,
    "--help",
  ])).stdout;
  for (const line of env.split("\n").filter((l) => /^#? ?LETTERBOX_/.test(l))) {
    const name = line.replace(/^# ?/, "").split("=")[0];
    const flag = "--" +
      name.replace("LETTERBOX_", "").toLowerCase().replaceAll("_", "-").replace(
        /^domains$/,
        "domain",
      );
    assertStringIncludes(help, flag, name);
  }
});

const IS_ROOT = Deno.uid() === 0 && await have("unshare") && await have("ip");

Deno.test({
  name: "the shipped LETTERBOX_LISTEN (0.0.0.0:25,[::]:25) starts and answers on IPv4 and IPv6",
  // Wildcard addresses on port 25 only in a network namespace of our own, with only loopback.
  ignore: !IS_ROOT,
  fn: async () => {
    const env = await Deno.readTextFile(`${REPO}/deploy/letterbox.env`);
    const listen = /^LETTERBOX_LISTEN=(.+)$/m.exec(env)?.[1];
    assertEquals(listen, "0.0.0.0:25,[::]:25");
    const dir = await Deno.makeTempDir({ prefix: "letterbox-netns-" });
    try {
      const script = `
set -e
ip link set lo up
LETTERBOX_LISTEN='${listen}' "$1" run -A "$2/main.ts" --maildir "$3" --no-tls --hostname mx.test 2> "$3/log" &
pid=$!
for i in $(seq 100); do grep -q ready "$3/log" 2>/dev/null && break; sleep 0.1; done
python3 - <<'PY'
import socket
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    s = socket.socket(family)
    s.settimeout(5)
    s.connect((host, 25))
    print(host, s.recv(100).decode().strip())
    s.close()
PY
kill $pid
wait $pid || true
`;
      const result = await run("unshare", [
        "-n",
        "sh",
        "-c",
        script,
        "sh",
        Deno.execPath(),
        REPO,
        dir,
      ]);
      const log = await Deno.readTextFile(`${dir}/log`).catch(() => "");
      assertEquals(result.stdout.trim().split("\n"), [
        "127.0.0.1 220 mx.test ESMTP Letterbox",
        "::1 220 mx.test ESMTP Letterbox",
      ], `${result.stderr}\n${log}`);
      assertStringIncludes(log, "served by the IPv6 wildcard listener (dual-stack)");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("the certbot deploy hook reloads Letterbox, and Dovecot when it serves the same certificate", async () => {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-certbot-" });
  try {
    // Stand-ins on PATH record what the hook runs; the copy goes under dir, not /etc.
    const bin = `${dir}/bin`;
    await Deno.mkdir(bin);
    const record = (name: string, body = "") =>
      Deno.writeTextFile(
        `${bin}/${name}`,
        `#!/bin/sh\necho "${name} $*" >> "${dir}/calls"\n${body}`,
        { mode: 0o755 },
      );
    await record("install");
    await record("systemctl", 'case "$*" in "is-active --quiet dovecot") exit 0;; esac\n');
    await record("doveconf", `echo "<${dir}/live/mx.test/fullchain.pem"\n`);
    const hook = `${REPO}/deploy/certbot-deploy-hook.sh`;
    const env = { PATH: `${bin}:/usr/bin:/bin`, RENEWED_LINEAGE: `${dir}/live/mx.test` };
    assertEquals((await run("sh", [hook], { env })).code, 0);
    const calls = (await Deno.readTextFile(`${dir}/calls`)).trim().split("\n");
    assert(calls.includes("systemctl reload letterbox"), calls.join("\n"));
    assert(calls.includes("systemctl reload dovecot"), calls.join("\n"));
    // A Dovecot with a certificate of its own is left alone.
    await Deno.remove(`${dir}/calls`);
    await record("doveconf", "echo '</etc/ssl/other/cert.pem'\n");
    assertEquals((await run("sh", [hook], { env })).code, 0);
    assert(!(await Deno.readTextFile(`${dir}/calls`)).includes("reload dovecot"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
