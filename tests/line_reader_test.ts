import { SMUGGLING_SEQUENCES } from "./_smuggling.ts";
import { ChunkDecoder, DataDecoder, LineReader } from "../src/protocol/line_reader.ts";
import { assert, assertEquals } from "./_assert.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A source that yields the given chunks, then end of stream. */
function source(...chunks: (string | Uint8Array)[]) {
  const queue = chunks.map((c) => typeof c === "string" ? encoder.encode(c) : c);
  return { read: () => Promise.resolve(queue.shift() ?? null) };
}

/** Splits text into chunks of `size` bytes, to test every boundary. */
function chunked(text: string, size: number): Uint8Array[] {
  const bytes = encoder.encode(text);
  const chunks = [];
  for (let i = 0; i < bytes.length; i += size) chunks.push(bytes.slice(i, i + size));
  return chunks;
}

async function readAllData(reader: LineReader, max = 1 << 20) {
  let content = "";
  const result = await reader.readData((bytes) => {
    content += decoder.decode(bytes, { stream: true });
  }, max);
  return { content, result };
}

Deno.test("readLine() splits CRLF lines across reads", async () => {
  const reader = new LineReader(source("EH", "LO a\r", "\nNOOP\r\n"));
  const first = await reader.readLine(512);
  assertEquals(first.kind === "line" && decoder.decode(first.line), "EHLO a");
  const second = await reader.readLine(512);
  assertEquals(second.kind === "line" && decoder.decode(second.line), "NOOP");
  assertEquals((await reader.readLine(512)).kind, "eof");
});

Deno.test("readLine() accepts a bare LF line end for commands", async () => {
  const reader = new LineReader(source("NOOP\nQUIT\n"));
  const first = await reader.readLine(512);
  assertEquals(first.kind === "line" && decoder.decode(first.line), "NOOP");
  assertEquals(reader.buffered, 5);
});

Deno.test("readLine() reports a line over the limit and resumes at the next line", async () => {
  const reader = new LineReader(source("x".repeat(300), "x".repeat(300), "\r\nNOOP\r\n"));
  assertEquals((await reader.readLine(512)).kind, "too-long");
  const next = await reader.readLine(512);
  assertEquals(next.kind === "line" && decoder.decode(next.line), "NOOP");
});

Deno.test("readLine() counts the CRLF in the limit", async () => {
  const fits = new LineReader(source("x".repeat(510) + "\r\n"));
  assertEquals((await fits.readLine(512)).kind, "line");
  const over = new LineReader(source("x".repeat(511) + "\r\n"));
  assertEquals((await over.readLine(512)).kind, "too-long");
});

Deno.test("discardBuffered() drops pipelined input", async () => {
  const reader = new LineReader(source("STARTTLS\r\nEHLO evil\r\n"));
  await reader.readLine(512);
  assertEquals(reader.buffered, 11);
  reader.discardBuffered();
  assertEquals(reader.buffered, 0);
  assertEquals((await reader.readLine(512)).kind, "eof");
});

Deno.test("readData() unstuffs dots and stores LF line ends", async () => {
  const reader = new LineReader(
    source("Subject: x\r\n\r\n..leading dot\r\n...\r\nend\r\n.\r\nQUIT\r\n"),
  );
  const { content, result } = await readAllData(reader);
  assertEquals(content, "Subject: x\n\n.leading dot\n..\nend\n");
  assertEquals(result.kind, "end");
  const next = await reader.readLine(512);
  assertEquals(next.kind === "line" && decoder.decode(next.line), "QUIT");
});

Deno.test("readData() gives the same content however the input is split", async () => {
  const text = "a\r\n.b\r\n\r\n..\r\nc\rd\ne\r\r\n.\rx\r\n.\r\n";
  // "e<CR><CR><LF>": the bare CR before the line end is stored as a space (issue 18: stored as
  // CR it read as CRLF, so W= and the header end moved); the bare CR and LF elsewhere are kept.
  const expected = "a\nb\n\n.\nc\rd\ne \n\rx\n";
  for (let size = 1; size <= text.length; size++) {
    const { content } = await readAllData(new LineReader(source(...chunked(text, size))));
    assertEquals(content, expected, `chunk size ${size}`);
  }
});

Deno.test("readData() ends only at CRLF.CRLF, never at bare LF or CR variants", async () => {
  const smuggling = SMUGGLING_SEQUENCES;
  for (const marker of smuggling) {
    const reader = new LineReader(source(`a${marker}MAIL FROM:<x@y>\r\n`, "\r\n.\r\n"));
    const { content, result } = await readAllData(reader);
    assertEquals(result.kind, "end", JSON.stringify(marker));
    assertEquals(content.includes("MAIL FROM:<x@y>"), true, JSON.stringify(marker));
    assertEquals(reader.buffered, 0);
  }
});

Deno.test("readData() takes an empty message", async () => {
  const { content, result } = await readAllData(new LineReader(source(".\r\n")));
  assertEquals(content, "");
  assertEquals(result, { kind: "end", wireBytes: 0, tooBig: false });
});

Deno.test("readData() reads an oversized message to its end and says it was too big", async () => {
  const reader = new LineReader(source("x".repeat(5000) + "\r\n", "y\r\n.\r\nNOOP\r\n"));
  const { content, result } = await readAllData(reader, 1000);
  assertEquals(result.kind === "end" && result.tooBig, true);
  assertEquals(content.length <= 5002, true);
  const next = await reader.readLine(512);
  assertEquals(next.kind === "line" && decoder.decode(next.line), "NOOP");
});

Deno.test("readData() reports end of stream inside DATA", async () => {
  const { result } = await readAllData(new LineReader(source("half a message\r\n")));
  assertEquals(result.kind, "eof");
});

Deno.test("DataDecoder keeps bytes exact, NUL and 8-bit included", () => {
  const bytes = new Uint8Array([0x00, 0xff, 0xc3, 0xa9, 0x0d, 0x0a, 0x2e, 0x0d, 0x0a]);
  const { output, end } = new DataDecoder().decode(bytes);
  assertEquals([...output], [0x00, 0xff, 0xc3, 0xa9, 0x0a]);
  assertEquals(end, 9);
});

Deno.test("DataDecoder keeps a CR held across chunks that turns out bare, in place or not", () => {
  const encoder = new TextEncoder();
  const decoder = new DataDecoder();
  const pieces = ["line one\r\nends in CR\r", "bare\r\n.\r", "x\r\n.\r\n"];
  const outputs = pieces.map((piece) => {
    const { output, end } = decoder.decode(encoder.encode(piece));
    return { text: new TextDecoder().decode(output), end };
  });
  assertEquals(outputs, [
    { text: "line one\nends in CR", end: -1 },
    { text: "\rbare\n", end: -1 },
    // ".<CR>x": a stuffed line that starts with a bare CR.
    { text: "\rx\n", end: 6 },
  ]);
});

// Byte at a time, as RFC 5321 reads: the reference for the decoder's jumps.
function referenceDecode(bytes: Uint8Array): { output: number[]; end: number } {
  const output: number[] = [];
  let lineStart = true;
  for (let i = 0; i < bytes.length; i++) {
    if (lineStart && bytes[i] === 0x2e) {
      if (bytes[i + 1] === 0x0d && bytes[i + 2] === 0x0a) return { output, end: i + 3 };
      i++; // the stuffing dot
      if (i === bytes.length) break;
    }
    lineStart = false;
    if (bytes[i] === 0x0d && bytes[i + 1] === 0x0a) {
      output.push(0x0a);
      i++;
      lineStart = true;
    } else if (bytes[i] === 0x0d && bytes[i + 1] === 0x0d && bytes[i + 2] === 0x0a) {
      output.push(0x20); // a bare CR right before a line end is stored as a space
    } else {
      output.push(bytes[i]);
    }
  }
  return { output, end: -1 };
}

Deno.test("DataDecoder matches a byte-at-a-time decoder on random input in random chunks, lines included", () => {
  let seed = 5321;
  const random = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
    return (seed >>> 16) % n;
  };
  const alphabet = [0x61, 0x0d, 0x0a, 0x2e, 0x0d];
  for (let round = 0; round < 6000; round++) {
    const input = Uint8Array.from({ length: random(40) }, () => alphabet[random(alphabet.length)]);
    const expected = referenceDecode(input);
    const decoder = new DataDecoder();
    const output: number[] = [];
    let lines = 0;
    let offset = 0;
    let end = -1;
    while (offset < input.length && end === -1) {
      const size = 1 + random(8);
      // A copy: the decoder works in place.
      const chunk = input.slice(offset, offset + size);
      const result = decoder.decode(chunk);
      output.push(...result.output);
      lines += result.lines;
      end = result.end === -1 ? -1 : offset + result.end;
      offset += chunk.length;
    }
    const what = JSON.stringify([...input]);
    assertEquals(end, expected.end, what);
    if (end !== -1) {
      assertEquals(output, expected.output, what);
    } else {
      // A CR or dot still held back at the end is not output yet.
      assertEquals(output, expected.output.slice(0, output.length), what);
    }
    assertEquals(lines, output.filter((byte) => byte === 0x0a).length, what);
    // Stored, CR LF would read as a line end that the wire did not have.
    assert(!output.some((byte, i) => byte === 0x0d && output[i + 1] === 0x0a), what);
  }
});

Deno.test("a header line holding only a bare CR stays a non-empty line however the input is split", async () => {
  const text = "A: 1\r\n\r\r\nB: 2\r\n.\r\r\n\r\nbody\r\n.\r\n";
  // The CR-only line and the dot-stuffed ".<CR>" line become a space: the header still ends at
  // the empty line, as it does on the wire.
  const expected = "A: 1\n \nB: 2\n \n\nbody\n";
  for (let size = 1; size <= text.length; size++) {
    const { content } = await readAllData(new LineReader(source(...chunked(text, size))));
    assertEquals(content, expected, `chunk size ${size}`);
  }
});

Deno.test("readExact() reads a chunk's octets exactly, pipelined commands left for the next read", async () => {
  const reader = new LineReader(source("BDAT 5\r\nab", "c\r\nBDAT 0 LAST\r\n"));
  assertEquals((await reader.readLine(512)).kind, "line");
  const parts: string[] = [];
  assertEquals(await reader.readExact(5, (part) => void parts.push(decoder.decode(part))), "done");
  assertEquals(parts.join(""), "abc\r\n");
  const next = await reader.readLine(512);
  assertEquals(next.kind === "line" && decoder.decode(next.line), "BDAT 0 LAST");
  assertEquals(await new LineReader(source("ab")).readExact(5, () => {}), "eof");
});

Deno.test("ChunkDecoder: text chunks get DATA's line rules without dots; BINARYMIME stays byte-exact", () => {
  const text = new ChunkDecoder(false);
  const out: string[] = [];
  let lines = 0;
  for (const piece of ["..no dot-stuffing\r", "\n.\r\nx\r\r", "\ny\r"]) {
    const decoded = text.decode(new TextEncoder().encode(piece));
    out.push(decoder.decode(decoded.output));
    lines += decoded.lines;
  }
  out.push(decoder.decode(text.flush().output));
  assertEquals(out.join(""), "..no dot-stuffing\n.\nx \ny\r");
  assertEquals(lines, 3);
  const binary = new ChunkDecoder(true);
  const bytes = new Uint8Array([0x61, 0x0d, 0x0a, 0x00, 0x0a, 0xff, 0x0d]);
  const first = binary.decode(bytes.subarray(0, 7));
  assertEquals([...first.output], [...bytes]);
  // One LF without a CR before it; the CRLF counts once in the file already.
  assertEquals(first.lines, 1);
  assertEquals(binary.decode(new Uint8Array([0x0a])).lines, 0, "a CR ended the previous piece");
});
