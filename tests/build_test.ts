/**
 * `make build`: compile the single binary and run it. `deno compile` needs
 * Deno's runtime (denort), which it downloads; tests never reach the network,
 * so this runs only where DENORT_BIN names a local copy.
 */

import { REPO, run } from "./_server.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./_assert.ts";

const denort = Deno.env.get("DENORT_BIN");
if (!denort) {
  // deno-lint-ignore no-console
  console.log(
    "build_test: skipped: DENORT_BIN is not set, and without it deno compile downloads denort " +
      "from the network, which the tests do not reach (set DENORT_BIN=/path/to/denort to run it)",
  );
}

Deno.test({
  name: "make build produces dist/letterbox, which prints its version and refuses bad flags",
  ignore: !denort,
  fn: async () => {
    const build = await run("make", ["build"], { cwd: REPO });
    assertEquals(build.code, 0, build.stderr);
    const version = await run(`${REPO}/dist/letterbox`, ["--version"]);
    assertMatch(version.stdout, /^letterbox \d+\.\d+\.\d+ \(deno 2\.9\.6\)\n$/);
    const bad = await run(`${REPO}/dist/letterbox`, ["--listen", "nope"]);
    assertEquals(bad.code, 2);
  },
});

Deno.test("make build refuses a result that is not Letterbox (a plain deno as DENORT_BIN), in one line", async () => {
  const build = await run("make", ["build"], {
    cwd: REPO,
    env: { DENORT_BIN: Deno.execPath() },
  });
  assertEquals(build.code, 2);
  assertStringIncludes(
    build.stderr,
    "make build: the result does not run Letterbox (is DENORT_BIN a denort binary for Deno 2.9.6, not deno?); removed it\n",
  );
  assertEquals(await exists(`${REPO}/dist/letterbox`), false);
});

Deno.test({
  name: "make build says in one line when the runtime cannot be downloaded",
  // With DENORT_BIN set, nothing is downloaded.
  ignore: !!denort,
  fn: async () => {
    // A proxy that refuses at once: no network is touched, and no download can succeed.
    const build = await run("make", ["build"], {
      cwd: REPO,
      env: { HTTPS_PROXY: "http://127.0.0.1:1", HTTP_PROXY: "http://127.0.0.1:1" },
    });
    assertEquals(build.code, 2);
    assertStringIncludes(
      build.stderr,
      "make build: deno compile could not download its runtime (denort) for Deno 2.9.6; set DENORT_BIN=/path/to/denort\n",
    );
    assert(!build.stderr.includes("Stack backtrace"), build.stderr);
  },
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
