/**
 * Metrics: scraped over HTTP from the real program, the numbers move as mail
 * arrives; /healthz answers.
 */

import { CERTS, REPO, startServer, TestClient } from "./_server.ts";
import { assert, assertEquals, assertMatch } from "./_assert.ts";

function value(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

Deno.test("the metrics endpoint counts connections, messages by code, bytes and latency", async () => {
  const server = await startServer(["--metrics", "127.0.0.1:0", "--max-message-size", "2K"]);
  const line = server.logs.find((l) => String(l.message).startsWith("Metrics on"));
  const address = (line?.properties as Record<string, unknown> | undefined)?.address;
  const url = `http://${address}`;
  const scrape = async () => await (await fetch(`${url}/metrics`)).text();
  try {
    const health = await fetch(`${url}/healthz`);
    assertEquals([health.status, await health.text()], [200, "ok\n"]);
    const before = await scrape();
    assertMatch(before, /^# HELP letterbox_connections_open /m);
    assertEquals(value(before, 'letterbox_messages_total{code="250"}'), 0);

    const client = await TestClient.connect(server.port);
    try {
      await client.reply();
      await client.upgrade();
      await client.startMessage("a@b.test", ["x@example.com", "y@example.com"]);
      await client.send("Subject: counted\r\n\r\nhello\r\n.\r\n");
      assertEquals((await client.reply()).code, 250);
      await client.startMessage("a@b.test", ["x@example.com"], { ehlo: false });
      await client.send("x".repeat(3000) + "\r\n.\r\n");
      assertEquals((await client.reply()).code, 552);
      assertEquals((await client.command("BOGUS")).code, 500);
      const during = await scrape();
      assertEquals(value(during, "letterbox_connections_open"), 1);
      assertEquals(value(during, 'letterbox_connections_total{outcome="accepted"}'), 1);
      assertEquals(value(during, 'letterbox_tls_handshakes_total{result="ok"}'), 1);
      assertEquals(value(during, 'letterbox_messages_total{code="250"}'), 1);
      assertEquals(value(during, 'letterbox_messages_total{code="552"}'), 1);
      assertEquals(value(during, 'letterbox_rejected_commands_total{code="500"}'), 1);
      // Octets on the wire, the refused message's included.
      assertEquals(value(during, "letterbox_received_bytes_total"), 27 + 3002);
      assertEquals(value(during, "letterbox_delivery_seconds_count"), 1);
      assertEquals(value(during, 'letterbox_recipients_per_message_bucket{le="1"}'), 1);
      assertEquals(value(during, 'letterbox_recipients_per_message_bucket{le="2"}'), 2);
    } finally {
      client.close();
    }
    for (let i = 0; i < 50 && value(await scrape(), "letterbox_connections_open") !== 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assertEquals(value(await scrape(), "letterbox_connections_open"), 0);
    assertEquals(
      (await fetch(`${url}/other`).then(async (r) => [r.status, await r.text()]))[0],
      404,
    );
  } finally {
    await server.stop();
  }
});

Deno.test("metrics count hook jobs, early talkers and timeouts, and show the certificate expiry and the build", async () => {
  const target = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (r) => {
    await r.body?.cancel();
    return new Response("ok");
  });
  const server = await startServer([
    "--metrics",
    "127.0.0.1:0",
    "--hook",
    `*=http://127.0.0.1:${target.addr.port}/hook`,
    "--greet-delay",
    "0.3",
    "--command-timeout",
    "0.5",
  ]);
  const line = server.logs.find((l) => String(l.message).startsWith("Metrics on"));
  const url = `http://${(line?.properties as Record<string, unknown>).address}/metrics`;
  const scrape = async () => await (await fetch(url)).text();
  try {
    const text = await scrape();
    // The test certificate's notAfter, as Unix time.
    const notAfter = new Date(
      new (await import("node:crypto")).X509Certificate(await Deno.readTextFile(CERTS.cert))
        .validTo,
    ).getTime() / 1000;
    assertEquals(value(text, "letterbox_tls_certificate_expiry_timestamp_seconds"), notAfter);
    assertMatch(text, /^letterbox_build_info\{deno="[\d.]+",version="[\d.]+"\} 1$/m);

    // An early talker, an idle client timed out, a delivered hook job.
    const talker = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    await talker.write(new TextEncoder().encode("EHLO too.early\r\n"));
    const idle = await TestClient.connect(server.port);
    await idle.reply();
    const client = await TestClient.connect(server.port);
    try {
      await client.reply();
      await client.startMessage("a@b.test", ["x@example.com"]);
      await client.send("Subject: hooked\r\n\r\nx\r\n.\r\n");
      assertEquals((await client.reply()).code, 250);
      await client.command("QUIT");
      assertMatch(await idle.readToClose(3000), /^421 4\.4\.2 /m);
      let after = await scrape();
      for (
        let i = 0;
        i < 100 && value(after, 'letterbox_hook_jobs_total{result="delivered"}') < 1;
        i++
      ) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        after = await scrape();
      }
      assertEquals(value(after, 'letterbox_hook_jobs_total{result="queued"}'), 1);
      assertEquals(value(after, 'letterbox_hook_jobs_total{result="delivered"}'), 1);
      assertEquals(value(after, "letterbox_hook_jobs_pending"), 0);
      assertEquals(value(after, "letterbox_early_talkers_total"), 1);
      assertEquals(value(after, 'letterbox_timeouts_total{phase="command"}'), 1);
    } finally {
      talker.close();
      idle.close();
      client.close();
    }
  } finally {
    await server.stop();
    await target.shutdown();
  }
});

Deno.test("every metric the Grafana dashboard in deploy/ queries exists in a real scrape", async () => {
  const dashboard = JSON.parse(await Deno.readTextFile(`${REPO}/deploy/grafana-dashboard.json`));
  const expressions: string[] = dashboard.panels.flatMap((panel: { targets: { expr: string }[] }) =>
    panel.targets.map((target) => target.expr)
  );
  const queried = new Set(
    expressions.flatMap((expr) => expr.match(/letterbox_[a-z_]+/g) ?? [])
      .map((name) => name.replace(/_(bucket|sum|count)$/, "")),
  );
  const server = await startServer([
    "--metrics",
    "127.0.0.1:0",
    "--hook",
    "*=http://127.0.0.1:9/never-called",
  ]);
  try {
    const line = server.logs.find((l) => String(l.message).startsWith("Metrics on"));
    const text = await (await fetch(
      `http://${(line?.properties as Record<string, unknown>).address}/metrics`,
    )).text();
    assert(queried.size >= 10, [...queried].join(" "));
    for (const name of queried) assertMatch(text, new RegExp(`^# TYPE ${name} `, "m"), name);
  } finally {
    await server.stop();
  }
});
