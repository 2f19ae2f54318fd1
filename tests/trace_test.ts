import { parseMailbox } from "../src/protocol/address.ts";
import type { Envelope } from "../src/pipeline/envelope.ts";
import {
  addressLiteral,
  formatMailDate,
  heloForHeader,
  traceHeaders,
  withProtocol,
} from "../src/pipeline/trace.ts";
import { assert, assertEquals } from "./_assert.ts";

function address(text: string) {
  const parsed = parseMailbox(text, true);
  assert(parsed.ok);
  return parsed.value;
}

const envelope: Envelope = {
  id: "ID1",
  sender: address("bob@sender.test"),
  routes: [],
  clientAddress: "192.0.2.7",
  heloName: "client.test",
  extended: true,
  tls: { protocol: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384" },
  smtpUtf8: false,
  receivedAt: new Date(Date.UTC(2026, 10, 29, 8, 5, 9)),
};

Deno.test("traceHeaders() writes Return-Path, Delivered-To and one Received header", () => {
  assertEquals(
    traceHeaders(envelope, "mx.test", ["alice@example.com"], [address("alice@example.com")]),
    "Return-Path: <bob@sender.test>\nDelivered-To: alice@example.com\n" +
      "Received: from client.test (unknown [192.0.2.7])\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\n" +
      "\tby mx.test (Letterbox) with ESMTPS id ID1\n\tfor <alice@example.com>; Sun, 29 Nov 2026 08:05:09 +0000\n",
  );
});

Deno.test("traceHeaders() keeps client text from breaking a header line", () => {
  const text = traceHeaders({ ...envelope, heloName: "evil\r\nX-Injected: 1" }, "mx.test", [], []);
  assert(!text.includes("\nX-Injected"));
  assertEquals(text.split("\n").filter((line) => /^\S/.test(line)).length, 2);
});

Deno.test("withProtocol() names the protocol as RFC 3848 and RFC 6531 do", () => {
  assertEquals(withProtocol({ extended: false, smtpUtf8: false }), "SMTP");
  assertEquals(withProtocol({ extended: true, smtpUtf8: false }), "ESMTP");
  assertEquals(withProtocol({ extended: true, smtpUtf8: false, tls: envelope.tls }), "ESMTPS");
  assertEquals(withProtocol({ extended: true, smtpUtf8: true, tls: envelope.tls }), "UTF8SMTPS");
});

Deno.test("formatMailDate() writes RFC 5322 dates", () => {
  assertEquals(
    formatMailDate(new Date(Date.UTC(2027, 0, 3, 23, 59, 1))),
    "Sun, 3 Jan 2027 23:59:01 +0000",
  );
});

Deno.test("addressLiteral() writes IPv6 clients as RFC 5321 address literals", () => {
  assertEquals(addressLiteral("192.0.2.7"), "[192.0.2.7]");
  assertEquals(addressLiteral("::1"), "[IPv6:::1]");
  assertEquals(addressLiteral("2001:db8::25"), "[IPv6:2001:db8::25]");
});

Deno.test("heloForHeader() keeps 7-bit mail 7-bit: A-labels for U-label names, escapes otherwise", () => {
  assertEquals(heloForHeader("ünïcödé.example", false), "xn--ncd-dma1a7bzb.example");
  assertEquals(heloForHeader("ünïcödé.example", true), "ünïcödé.example");
  assertEquals(heloForHeader("bad_näme!", false), "bad_n\\u00e4me!");
  assertEquals(heloForHeader("client.test", false), "client.test");
});
