import { DnsError, parseNameServer, Resolver } from "../src/dns/resolver.ts";
import { startDns } from "./_dns.ts";
import { assert, assertEquals } from "./_assert.ts";

async function dnsFailure(query: () => Promise<unknown>): Promise<DnsError> {
  try {
    await query();
  } catch (error) {
    if (error instanceof DnsError) return error;
    throw error;
  }
  throw new Error("the query did not fail");
}

const long = "v=DKIM1; k=rsa; p=" + "A".repeat(400);

Deno.test("the resolver answers in Node's shapes from a real DNS server, and caches", async () => {
  await using dns = await startDns({
    txt: { "example.test": "v=spf1 ip4:127.0.0.1 -all", "sel._domainkey.example.test": long },
    a: { "mx.example.test": "127.0.0.1" },
    mx: { "example.test": "mx.example.test" },
  });
  const resolver = new Resolver({ ipAddr: "127.0.0.1", port: dns.port }, 1000);
  assertEquals(await resolver.resolve("example.test", "TXT"), [["v=spf1 ip4:127.0.0.1 -all"]]);
  // A long TXT record comes as its character-strings, which mailauth joins.
  const [key] = await resolver.resolve("sel._domainkey.example.test", "TXT") as string[][];
  assertEquals(key.join(""), long);
  assert(key.length > 1);
  assertEquals(await resolver.resolve("example.test", "MX"), [{
    exchange: "mx.example.test",
    priority: 10,
  }]);
  assertEquals(await resolver.resolve("mx.example.test", "A"), ["127.0.0.1"]);
  const error = await dnsFailure(() => resolver.resolve("nothing.test", "TXT"));
  assertEquals(error.code, "ENOTFOUND");
  const sent = resolver.queries;
  await resolver.resolve("EXAMPLE.test", "txt");
  await dnsFailure(() => resolver.resolve("nothing.test", "TXT"));
  assertEquals(resolver.queries, sent, "answers and NXDOMAIN come from the cache");
});

Deno.test("a dead DNS server is ETIMEOUT within the query timeout, and is not cached", async () => {
  await using dns = await startDns({ txt: { "example.test": "v=spf1 -all" } });
  await dns.stop();
  const resolver = new Resolver({ ipAddr: "127.0.0.1", port: dns.port }, 500);
  const started = Date.now();
  const error = await dnsFailure(() => resolver.resolve("example.test", "TXT"));
  assertEquals(error.code, "ETIMEOUT");
  assert(Date.now() - started < 2000, `took ${Date.now() - started} ms`);
  await dns.start();
  assertEquals(await resolver.resolve("example.test", "TXT"), [["v=spf1 -all"]]);
});

Deno.test("--dns-server takes HOST:PORT, [V6]:PORT and a bare address", () => {
  assertEquals(parseNameServer("127.0.0.1:5353"), { ipAddr: "127.0.0.1", port: 5353 });
  assertEquals(parseNameServer("[::1]:53"), { ipAddr: "::1", port: 53 });
  assertEquals(parseNameServer("192.0.2.1"), { ipAddr: "192.0.2.1", port: 53 });
  assertEquals(typeof parseNameServer("dns.example:53"), "string");
  assertEquals(typeof parseNameServer("127.0.0.1:70000"), "string");
});
