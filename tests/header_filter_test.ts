import { type FieldPredicate, HeaderFilter, JUDGE_BYTES } from "../src/pipeline/header_filter.ts";
import { assertEquals } from "./_assert.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Drops our own Authentication-Results and any X-Spam field, as the checks do.
const drop: FieldPredicate = (name, value) =>
  (name === "authentication-results" && /^mx\.example\.test\s*(;|$)/i.test(value)) ||
  name.startsWith("x-spam");

function filterInPieces(text: string, cuts: number[]): string {
  const bytes = encoder.encode(text);
  const filter = new HeaderFilter(drop);
  let output = "";
  let previous = 0;
  for (const cut of [...cuts, bytes.length]) {
    // A fresh buffer each time, overwritten after the call: the filter must copy what it holds.
    const piece = bytes.slice(previous, cut);
    for (const part of filter.push(piece)) output += decoder.decode(part);
    piece.fill(0x21);
    previous = cut;
  }
  for (const part of filter.end()) output += decoder.decode(part);
  return output;
}

const message = "Received: from a\n by b\n" +
  "Authentication-Results: mx.example.test; dmarc=pass header.from=example.com\n" +
  "Authentication-Results: other.example; spf=fail\n" +
  "X-Spam: No\n" +
  "X-Spam-Score:\n  -5\n" +
  "Subject: hello\n\tworld\n" +
  "Authentication-Results:\n mx.example.test;\n dkim=pass\n" +
  "\n" +
  "X-Spam: body lines are not fields\nAuthentication-Results: mx.example.test; none\n";

const expected = "Received: from a\n by b\n" +
  "Authentication-Results: other.example; spf=fail\n" +
  "Subject: hello\n\tworld\n" +
  "\n" +
  "X-Spam: body lines are not fields\nAuthentication-Results: mx.example.test; none\n";

Deno.test("header filter: drops the named fields, folded or not, and never touches the body", () => {
  assertEquals(filterInPieces(message, []), expected);
});

Deno.test("header filter: the same result however the content is split", () => {
  const length = encoder.encode(message).length;
  for (let cut = 1; cut < length; cut++) {
    assertEquals(filterInPieces(message, [cut]), expected, `one cut at ${cut}`);
  }
  for (let step = 1; step < 8; step++) {
    const cuts = [];
    for (let at = step; at < length; at += step) cuts.push(at);
    assertEquals(filterInPieces(message, cuts), expected, `a cut every ${step} bytes`);
  }
});

Deno.test("header filter: a field longer than the judging bound is judged on its start", () => {
  const long = "x".repeat(JUDGE_BYTES * 2);
  const text =
    `X-Spam-Report: ${long}\n ${long}\nX-Keep: ${long}\n folded ${long}\nSubject: s\n\nbody\n`;
  const cuts = [];
  for (let at = 1000; at < text.length; at += 1000) cuts.push(at);
  assertEquals(
    filterInPieces(text, cuts),
    `X-Keep: ${long}\n folded ${long}\nSubject: s\n\nbody\n`,
  );
});

Deno.test("header filter: a message without a body, and one without a final line end", () => {
  assertEquals(filterInPieces("Subject: a\nX-Spam: yes\n", [5]), "Subject: a\n");
  assertEquals(filterInPieces("Subject: a\nX-Spam: yes", [13]), "Subject: a\n");
  assertEquals(filterInPieces("no colon here\nX-Spam: y\n\nb", []), "no colon here\n\nb");
});
