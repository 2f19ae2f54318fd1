/**
 * A private rspamd 3.4 (Debian's package) for tests: the stock configuration
 * with overrides in a temporary LOCAL_CONFDIR, loopback ports, console
 * logging, the DNS-based modules off (there is no internet, and scores must
 * not drift), and a test rule: a message's `X-Test-Score: N` adds exactly N
 * points, so each action (greylist 4, add header 6, rewrite subject 8, soft
 * reject 12, reject 15) is reached by score as in production. Its first
 * start compiles regular expressions for 10-30 s: start one per test file.
 */

import { freePort } from "./_server.ts";

/** A running rspamd. */
export interface Rspamd extends AsyncDisposable {
  /** The worker's base URL. */
  readonly url: string;
}

const TEST_RULE = `
rspamd_config.TEST_SCORE = {
  callback = function(task)
    local v = task:get_header('X-Test-Score')
    local n = v and tonumber(v)
    if n then return true, n, tostring(n) end
    return false
  end,
  score = 1.0,
  description = 'test: adds X-Test-Score points',
  group = 'test',
}
`;

/** Starts rspamd and waits until it answers /ping (up to 90 s). */
export async function startRspamd(): Promise<Rspamd> {
  const dir = await Deno.makeTempDir({ prefix: "letterbox-rspamd-" });
  // rspamd's workers run as nobody: they must reach their folders.
  await Deno.chmod(dir, 0o755);
  const port = freePort();
  const controller = freePort();
  for (const sub of ["etc/local.d", "etc/override.d", "db", "run", "log"]) {
    await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
  }
  const files: Record<string, string> = {
    "override.d/worker-normal.inc": `bind_socket = "127.0.0.1:${port}";\n`,
    "override.d/worker-controller.inc": `bind_socket = "127.0.0.1:${controller}";\n`,
    "override.d/worker-proxy.inc": "enabled = false;\n",
    "override.d/worker-fuzzy.inc": "enabled = false;\n",
    "local.d/logging.inc": 'type = "console";\nlevel = "error";\n',
    // A closed port with a short timeout: nothing waits for the internet.
    "local.d/options.inc":
      `dns { nameserver = ["127.0.0.1:${freePort()}"]; timeout = 0.3s; retransmits = 1; }\n`,
    "local.d/actions.conf": 'rewrite_subject = 8;\nsoft_reject = 12;\nsubject = "[SPAM %d] %s";\n',
    // Headers rspamd asks us to add, also for loopback clients.
    "local.d/milter_headers.conf":
      'use = ["x-rspamd-server", "x-rspamd-queue-id"];\nextended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n',
    "rspamd.local.lua": TEST_RULE,
  };
  for (const module of ["rbl", "hfilter", "asn", "spf", "dkim", "dmarc", "arc", "fuzzy_check"]) {
    files[`local.d/${module}.conf`] = "enabled = false;\n";
  }
  for (const [name, text] of Object.entries(files)) {
    await Deno.writeTextFile(`${dir}/etc/${name}`, text);
  }
  for (const sub of ["db", "run", "log"]) {
    await new Deno.Command("chown", { args: ["-R", "nobody:nogroup", `${dir}/${sub}`] }).output();
  }
  // Its own process group (setsid), so that stopping it takes its workers too:
  // a SIGTERM to the main process alone has left workers running.
  const child = new Deno.Command("setsid", {
    args: [
      "rspamd",
      "-f",
      "-u",
      "nobody",
      "-g",
      "nogroup",
      "-c",
      "/etc/rspamd/rspamd.conf",
      "--var",
      `LOCAL_CONFDIR=${dir}/etc`,
      "--var",
      `DBDIR=${dir}/db`,
      "--var",
      `RUNDIR=${dir}/run`,
      "--var",
      `LOGDIR=${dir}/log`,
    ],
    stdout: "null",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let running = true;
  // At the end of a test file (which cannot wait for a promise): the whole group at once.
  const killNow = () => {
    if (!running) return;
    running = false;
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch { /* gone */ }
    Deno.removeSync(dir, { recursive: true });
  };
  globalThis.addEventListener("unload", killNow);
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 90_000;
  for (;;) {
    try {
      const response = await fetch(`${url}/ping`, { signal: AbortSignal.timeout(1000) });
      if ((await response.text()).includes("pong")) break;
    } catch { /* not yet */ }
    if (Date.now() > deadline) {
      killNow();
      throw new Error(`rspamd did not start:\n${await stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return {
    url,
    async [Symbol.asyncDispose]() {
      if (!running) return;
      Deno.kill(-child.pid, "SIGTERM");
      const late = setTimeout(() => {
        try {
          Deno.kill(-child.pid, "SIGKILL");
        } catch { /* gone */ }
      }, 5_000);
      await child.status;
      clearTimeout(late);
      // Workers may outlive the main process by a moment: none may stay.
      try {
        Deno.kill(-child.pid, "SIGKILL");
      } catch { /* all gone */ }
      await stderr;
      running = false;
      await Deno.remove(dir, { recursive: true });
    },
  };
}
