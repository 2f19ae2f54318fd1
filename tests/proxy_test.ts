/**
 * PROXY protocol: the parser, address ranges, and real v1 and v2 headers
 * sent to the real program.
 */

import { inRanges, parseCidr } from "../src/net/cidr.ts";
import { parseProxyHeader, V2_SIGNATURE } from "../src/net/proxy_protocol.ts";
import { readMessages, startServer, TestClient } from "./_server.ts";
import { assert, assertEquals, assertStringIncludes } from "./_assert.ts";

const encode = (text: string) => new TextEncoder().encode(text);

/** A v2 PROXY header: command 1 = PROXY, 0 = LOCAL; family 0x11 TCP4, 0x21 TCP6. */
function v2(command: number, family: number, addresses: number[], extra = 0): Uint8Array {
  const body = [...addresses, ...new Array(extra).fill(0)];
  return Uint8Array.from([
    ...V2_SIGNATURE,
    0x20 | command,
    family,
    body.length >> 8,
    body.length & 0xff,
    ...body,
  ]);
}

const V2_TCP4 = v2(1, 0x11, [203, 0, 113, 9, 192, 0, 2, 1, 0x9c, 0x40, 0, 25]);
const V2_TCP6 = v2(1, 0x21, [
  ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07],
  ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01],
  0x9c,
  0x41,
  0,
  25,
]);

Deno.test("parseProxyHeader() reads v1 TCP4, TCP6 and UNKNOWN headers", () => {
  assertEquals(parseProxyHeader(encode("PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\nEHLO")), {
    kind: "ok",
    length: 43,
    source: { address: "203.0.113.7", port: 40000 },
  });
  const six = parseProxyHeader(encode("PROXY TCP6 2001:DB8::7 2001:db8::1 40001 25\r\n"));
  assertEquals(six.kind === "ok" && six.source, { address: "2001:db8::7", port: 40001 });
  assertEquals(parseProxyHeader(encode("PROXY UNKNOWN\r\n")), { kind: "ok", length: 15 });
});

Deno.test("parseProxyHeader() reads v2 PROXY and LOCAL headers", () => {
  assertEquals(parseProxyHeader(V2_TCP4), {
    kind: "ok",
    length: 28,
    source: { address: "203.0.113.9", port: 40000 },
  });
  const six = parseProxyHeader(V2_TCP6);
  assertEquals(six.kind === "ok" && six.source, { address: "2001:db8::7", port: 40001 });
  assertEquals(parseProxyHeader(v2(0, 0x00, [])), { kind: "ok", length: 16 });
});

Deno.test("parseProxyHeader() waits for truncated headers and refuses bad ones", () => {
  assertEquals(parseProxyHeader(encode("PROXY TCP4 203.0")).kind, "incomplete");
  assertEquals(parseProxyHeader(V2_TCP4.subarray(0, 20)).kind, "incomplete");
  assertEquals(parseProxyHeader(V2_SIGNATURE.subarray(0, 5)).kind, "incomplete");
  for (
    const bad of [
      encode("EHLO client.test\r\n"),
      encode("PROXY TCP4 999.0.113.7 192.0.2.1 40000 25\r\n"),
      encode("PROXY TCP4 203.0.113.7 192.0.2.1 70000 25\r\n"),
      encode("PROXY TCP4 203.0.113.7 192.0.2.1 40000\r\n"),
      encode("PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\n"),
      encode("PROXY TCP4 " + "1".repeat(120)),
      v2(1, 0x11, [], 2000),
      Uint8Array.from([...V2_SIGNATURE, 0x31, 0x11, 0, 0]),
    ]
  ) {
    assertEquals(parseProxyHeader(bad).kind, "invalid", new TextDecoder().decode(bad).slice(0, 40));
  }
});

Deno.test("inRanges() matches IPv4, IPv6 and IPv4-mapped addresses against ranges", () => {
  const ranges = ["10.0.0.0/8", "192.0.2.128/25", "2001:db8::/32"].map((t) => parseCidr(t)!);
  assert(inRanges("10.1.2.3", ranges));
  assert(inRanges("::ffff:10.1.2.3", ranges));
  assert(inRanges("192.0.2.200", ranges));
  assert(!inRanges("192.0.2.100", ranges));
  assert(inRanges("2001:db8:1::5", ranges));
  assert(!inRanges("2001:db9::5", ranges));
  assertEquals(parseCidr("10.0.0.0/33"), undefined);
});

async function deliverThrough(client: TestClient): Promise<void> {
  assertEquals((await client.reply()).code, 220);
  await client.startMessage("a@b.test", ["x@example.com"]);
  await client.send("Subject: proxied\r\n\r\nhi\r\n.\r\n");
  assertEquals((await client.reply()).code, 250);
  await client.command("QUIT");
}

Deno.test("the client address from v1 and v2 headers reaches Received and the logs", async () => {
  const server = await startServer(["--proxy-protocol"]);
  try {
    for (
      const header of [
        encode("PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n"),
        V2_TCP6,
        v2(0, 0x00, []),
      ]
    ) {
      const client = await TestClient.connectProxied(server.port, header);
      try {
        await deliverThrough(client);
      } finally {
        client.close();
      }
    }
    const received = (await readMessages(server.maildir)).map((m) =>
      /^Received: from \S+ \(unknown \[([^\]]+)\]\)/m.exec(m)?.[1]
    ).sort();
    // v2 LOCAL (a health check) keeps the connection's own address; IPv6 is an
    // RFC 5321 address literal.
    assertEquals(received, ["127.0.0.1", "203.0.113.7", "IPv6:2001:db8::7"]);
    assert(
      server.logs.some((l) => String(l.message).startsWith('Connection from "203.0.113.7:40000"')),
    );
  } finally {
    await server.stop();
  }
});

Deno.test("a PROXY header works in front of implicit TLS", async () => {
  const server = await startServer(["--proxy-protocol"], { tlsListener: true });
  const client = await TestClient.connectProxied(server.tlsPort!, V2_TCP4, true);
  try {
    await deliverThrough(client);
    const [message] = await readMessages(server.maildir);
    assertStringIncludes(message, "(unknown [203.0.113.9])");
    assertStringIncludes(message, "with ESMTPS id");
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("missing, truncated, oversized or untrusted PROXY headers are closed without a greeting", async () => {
  const server = await startServer(["--proxy-protocol"]);
  try {
    const cases: [string, Uint8Array, boolean][] = [
      ["missing", encode("EHLO client.test\r\n"), false],
      ["malformed", encode("PROXY TCP4 nonsense\r\n"), false],
      ["oversized v1", encode("PROXY TCP4 " + "9".repeat(200)), false],
      ["oversized v2", v2(1, 0x11, [203, 0, 113, 9, 192, 0, 2, 1, 0x9c, 0x40, 0, 25], 4000), false],
      ["truncated, then the client gives up", V2_TCP4.subarray(0, 20), true],
    ];
    for (const [what, bytes, halfClose] of cases) {
      const client = await TestClient.connectProxied(server.port, bytes);
      try {
        if (halfClose) await client.closeWrite();
        assertEquals(await client.readToClose(15_000), "", what);
      } finally {
        client.close();
      }
    }
  } finally {
    await server.stop();
  }
  const untrusted = await startServer(["--proxy-protocol", "--proxy-from", "10.0.0.0/8"]);
  const client = await TestClient.connectProxied(untrusted.port, V2_TCP4);
  try {
    assertEquals(await client.readToClose(), "");
    assert(untrusted.logs.some((l) => String(l.message).includes("not an allowed proxy")));
  } finally {
    client.close();
    await untrusted.stop();
  }
});

Deno.test("per-IP limits count the proxied client, not the proxy", async () => {
  const server = await startServer(["--proxy-protocol", "--max-connections-per-ip", "1"]);
  const first = await TestClient.connectProxied(
    server.port,
    encode("PROXY TCP4 198.51.100.1 192.0.2.1 1000 25\r\n"),
  );
  const other = await TestClient.connectProxied(
    server.port,
    encode("PROXY TCP4 198.51.100.2 192.0.2.1 1000 25\r\n"),
  );
  const again = await TestClient.connectProxied(
    server.port,
    encode("PROXY TCP4 198.51.100.1 192.0.2.1 1001 25\r\n"),
  );
  try {
    assertEquals((await first.reply()).code, 220);
    assertEquals((await other.reply()).code, 220);
    assertEquals(
      await again.readToClose(),
      "421 4.7.0 Error: too many connections from your address, try again later\r\n",
    );
  } finally {
    for (const client of [first, other, again]) client.close();
    await server.stop();
  }
});
