import { type Config, ConfigError, HELP, parseConfig, parseSize } from "../src/config/config.ts";
import { envName, type Setting, SETTINGS } from "../src/config/settings.ts";
import { assert, assertEquals, assertStringIncludes, assertThrows } from "./_assert.ts";

function config(args: string[], env: Record<string, string> = {}): Config {
  const invocation = parseConfig(args, (name) => env[name], () => "host.test");
  if (invocation.kind !== "run") throw new Error("not a run");
  return invocation.config;
}

function error(args: string[], env: Record<string, string> = {}): string {
  try {
    config(args, env);
  } catch (e) {
    if (e instanceof ConfigError) return e.message;
    throw e;
  }
  throw new Error("no error");
}

Deno.test("parseConfig() has safe local defaults", () => {
  const c = config([]);
  assertEquals(c.listen, [{ hostname: "127.0.0.1", port: 2525, proxy: false }]);
  assertEquals(c.maildir, "./Maildir");
  assertEquals(c.hostname, "host.test");
  assertEquals(c.tls, true);
  assertEquals(c.maxMessageSize, 26_214_400);
  assertEquals(c.maxRecipients, 100);
});

Deno.test("parseConfig(): flags beat the environment, which beats the defaults", () => {
  const env = {
    LETTERBOX_LISTEN: "0.0.0.0:25,[::]:25",
    LETTERBOX_MAX_MESSAGE_SIZE: "10M",
    LETTERBOX_NO_TLS: "1",
  };
  const fromEnv = config([], env);
  assertEquals(fromEnv.listen, [{ hostname: "0.0.0.0", port: 25, proxy: false }, {
    hostname: "::",
    port: 25,
    proxy: false,
  }]);
  assertEquals(fromEnv.maxMessageSize, 10 * 1024 * 1024);
  assertEquals(fromEnv.tls, false);
  const fromFlags = config(["--listen", "[::1]:2525", "--max-message-size", "512K"], env);
  assertEquals(fromFlags.listen, [{ hostname: "::1", port: 2525, proxy: false }]);
  assertEquals(fromFlags.maxMessageSize, 512 * 1024);
  assertEquals(config(["--domain", "A.example", "--domain", "b.example"]).domains, [
    "a.example",
    "b.example",
  ]);
});

Deno.test("parseConfig() explains each mistake in one sentence", () => {
  assertEquals(error(["--bogus"]), 'Cannot use "--bogus": it is not an option; see --help');
  assertEquals(
    error(["--listen", "a:b"]),
    'Cannot use --listen "a:b": write HOST:PORT with a port from 0 to 65535, e.g. 127.0.0.1:2525 or [::1]:2525',
  );
  assertEquals(
    error([], { LETTERBOX_MAX_RECIPIENTS: "many" }),
    'Cannot use LETTERBOX_MAX_RECIPIENTS "many": it must be a whole number from 1 to 100000',
  );
  assertEquals(
    error(["--tls-cert", "x.pem"]),
    "Cannot use --tls-cert without --tls-key: give both, or neither for a self-signed certificate",
  );
  assertEquals(
    error(["--no-tls", "--require-tls"]),
    "Cannot use --require-tls with --no-tls: choose one",
  );
  assertEquals(
    error(["--maildir", "/var/vmail/../{user}"]),
    'Cannot use --maildir "/var/vmail/../{user}": it must not contain ".." segments',
  );
  assertEquals(
    error(["--log-level", "loud"]),
    'Cannot use --log-level "loud": use one of trace, debug, info, warning, error, fatal',
  );
});

Deno.test("parseSize() takes octets and K, M, G suffixes", () => {
  assertEquals(parseSize("1024"), 1024);
  assertEquals(parseSize("25M"), 26_214_400);
  assertEquals(parseSize("1g"), 1024 ** 3);
  assertEquals(Number.isNaN(parseSize("1.5M")), true);
});

Deno.test("parseConfig() answers --help and --version without validating the rest", () => {
  assertEquals(parseConfig(["--help"], () => undefined, () => "h").kind, "help");
  assertEquals(parseConfig(["--version"], () => undefined, () => "h").kind, "version");
  assertThrows(() => parseConfig(["extra"], () => undefined, () => "h"));
});

Deno.test("parseConfig() marks PROXY listeners per address or all at once", () => {
  assertEquals(config(["--listen", "0.0.0.0:25,proxy,[::]:25"]).listen, [
    { hostname: "0.0.0.0", port: 25, proxy: true },
    { hostname: "::", port: 25, proxy: false },
  ]);
  assertEquals(config(["--proxy-protocol", "--listen-tls", "0.0.0.0:465"]).listenTls, [
    { hostname: "0.0.0.0", port: 465, proxy: true },
  ]);
  assertEquals(config(["--proxy-from", "10.0.0.0/8"]).proxyFrom.map((r) => r.text), ["10.0.0.0/8"]);
  assertEquals(config([]).proxyFrom.map((r) => r.text), ["127.0.0.0/8", "::1/128"]);
  assertEquals(
    error(["--proxy-from", "10.0.0.0/33"]),
    'Cannot use --proxy-from "10.0.0.0/33": write an address range such as 10.0.0.0/8 or 2001:db8::/32',
  );
});

Deno.test("--help is made from the settings table: every row, its placeholder and its default", () => {
  for (const setting of Object.values(SETTINGS) as Setting[]) {
    const line = HELP.split("\n").findIndex((l) => l.startsWith(`  --${setting.flag}`));
    assert(line !== -1, setting.flag);
    const text = HELP.split("\n").slice(line, line + 2).join(" ");
    if (setting.default !== undefined) assertStringIncludes(text, `(default ${setting.default})`);
  }
});

Deno.test("switches take =true and =false, and a flag beats the environment both ways", () => {
  assertEquals(config(["--require-tls=false"], { LETTERBOX_REQUIRE_TLS: "1" }).requireTls, false);
  assertEquals(config(["--require-tls"], { LETTERBOX_REQUIRE_TLS: "0" }).requireTls, true);
  assertEquals(config(["--no-tls=false"]).tls, true);
  assertEquals(config(["--no-tls=true"]).tls, false);
  assertEquals(
    error(["--no-tls=maybe"]),
    'Cannot use --no-tls "maybe": write true or false',
  );
});

Deno.test("values that look like flags or are empty are explained, not called unknown options", () => {
  assertEquals(
    error(["--greet-delay", "-1"]),
    'Cannot use --greet-delay "-1": it must be a number of seconds from 0 to 86400',
  );
  assertEquals(
    error(["--domain", ""]),
    'Cannot use --domain "": it must be a domain name such as example.com',
  );
  assertEquals(error(["--maildir"]), "Cannot use --maildir: it needs a value; see --help");
  assertEquals(
    error(["--maildir", "/var/vmail/{domain"]),
    'Cannot use --maildir "/var/vmail/{domain": a brace is not closed; placeholders are {domain}, {user} and {local}',
  );
});

Deno.test("every environment name is LETTERBOX_ and the flag; the old plural names still work", () => {
  assertEquals(config([], { LETTERBOX_DOMAIN: "a.example,b.example" }).domains, [
    "a.example",
    "b.example",
  ]);
  assertEquals(config([], { LETTERBOX_DOMAINS: "c.example" }).domains, ["c.example"]);
  assertEquals(config([], { LETTERBOX_HOOK: "*=https://h.example/" }).hooks.length, 1);
  assertEquals(config([], { LETTERBOX_HOOKS: "*=https://h.example/" }).hooks.length, 1);
  for (const setting of Object.values(SETTINGS) as Setting[]) {
    assertEquals(envName(setting), `LETTERBOX_${setting.flag.toUpperCase().replaceAll("-", "_")}`);
  }
});

Deno.test("an unknown LETTERBOX_ variable is refused like an unknown flag, with the nearest name", () => {
  const refused = (names: string[]) => {
    try {
      parseConfig([], () => undefined, () => "h", names);
    } catch (e) {
      if (e instanceof ConfigError) return e.message;
      throw e;
    }
    return "accepted";
  };
  assertEquals(
    refused(["LETTERBOX_MAX_MESAGE_SIZE"]),
    "Cannot use LETTERBOX_MAX_MESAGE_SIZE: it is not a setting; did you mean LETTERBOX_MAX_MESSAGE_SIZE?",
  );
  assertEquals(
    refused(["LETTERBOX_COLOUR_SCHEME"]),
    "Cannot use LETTERBOX_COLOUR_SCHEME: it is not a setting; see --help",
  );
  assertEquals(refused(["LETTERBOX_DOMAINS", "LETTERBOX_HOOK", "PATH", "HOME"]), "accepted");
});

Deno.test("--hook-secret and --hook-secret-file exclude each other", () => {
  assertEquals(
    error(["--hook-secret", "a", "--hook-secret-file", "/etc/letterbox/hook-secret"]),
    "Cannot use --hook-secret with --hook-secret-file: choose one",
  );
});
