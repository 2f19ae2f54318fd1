// deno-lint-ignore-file no-console -- a command-line benchmark prints its results
/**
 * What one trip to Deno's blocking thread pool costs on this machine: an
 * fdatasync awaited (the call runs on a pool thread, the main thread waits
 * for its completion) against the same call made synchronously, on a file
 * with nothing to write back. On tmpfs the call itself is free, so the
 * difference is the trip: a thread woken, the result handed back, the main
 * thread woken. Each delivery makes two such trips in a row (the file's
 * fdatasync, then the directory's fsync), which is why they are the floor of
 * latency at one connection, beside the disk's own two flushes.
 *
 * Run: deno run -A bench/trip_bench.ts [directory, on tmpfs for the trip alone]
 *
 * @module
 */

const dir = Deno.args[0] ?? await Deno.makeTempDir({ prefix: "letterbox-trip-" });
const ROUNDS = 3;
const CALLS = 2000;

await Deno.mkdir(dir, { recursive: true });
const path = `${dir}/trip-${Deno.pid}`;
const file = await Deno.open(path, { write: true, create: true });
file.writeSync(new Uint8Array(1024));
file.syncDataSync();
try {
  for (let round = 0; round < ROUNDS; round++) {
    let started = performance.now();
    for (let i = 0; i < CALLS; i++) await file.syncData();
    const pooled = (performance.now() - started) / CALLS * 1000;
    started = performance.now();
    for (let i = 0; i < CALLS; i++) file.syncDataSync();
    const direct = (performance.now() - started) / CALLS * 1000;
    console.log(
      `fdatasync awaited ${pooled.toFixed(1)} us, synchronous ${direct.toFixed(1)} us: ` +
        `the trip ${(pooled - direct).toFixed(1)} us`,
    );
  }
} finally {
  file.close();
  await Deno.remove(path);
  if (!Deno.args[0]) await Deno.remove(dir);
}
