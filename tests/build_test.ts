/**
 * `make build`: compile the single binary and run it. `deno compile` needs
 * Deno's runtime (denort), which it downloads; tests never reach the network,
 * so this runs only where DENORT_BIN names a local copy.
 */

import { REPO, run } from "./_server.ts";
import { assertEquals, assertMatch } from "./_assert.ts";

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
