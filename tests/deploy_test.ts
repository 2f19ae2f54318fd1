/**
 * The deployment kit: the systemd unit passes `systemd-analyze verify`, and
 * the example environment file configures a server that starts.
 */

import { have, REPO, run } from "./_server.ts";
import { assertEquals, assertStringIncludes } from "./_assert.ts";

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
