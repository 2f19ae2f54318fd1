import { configure, getLogger, type LogRecord, reset } from "@logtape/logtape";
import { formatTextLine, logLine, LogTemplate } from "../src/log.ts";
import { assertEquals } from "./_assert.ts";

Deno.test("a pre-parsed template gives the record and line that LogTape's own parsing gives", async () => {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { capture: (record: LogRecord) => records.push(record) },
    loggers: [
      { category: ["t"], lowestLevel: "info", sinks: ["capture"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
    ],
  });
  try {
    const log = getLogger(["t", "smtp"]).with({ session: "s1" });
    const template = "Delivered {id} to {recipients}, {size} bytes, subject {subject}";
    const properties = { id: "Q1", recipients: ["a@example.com"], size: 12, subject: "a b" };
    log.info(template, properties);
    logLine(log, "info", new LogTemplate(template), properties);
    logLine(log, "debug", new LogTemplate(template), properties); // below the level: nothing
    assertEquals(records.length, 2);
    const [parsed, pre] = records;
    assertEquals(pre.message, parsed.message);
    assertEquals(pre.rawMessage, parsed.rawMessage);
    assertEquals(pre.category, parsed.category);
    assertEquals(pre.properties, parsed.properties);
    assertEquals(pre.properties.session, "s1");
    assertEquals(
      formatTextLine(pre).slice(25),
      'INFO    [s1] Delivered Q1 to ["a@example.com"], 12 bytes, subject "a b"\n',
    );
  } finally {
    await reset();
  }
});

Deno.test("a template without placeholders, and one that ends in a placeholder", () => {
  assertEquals(new LogTemplate("Stopped").message({}), ["Stopped"]);
  assertEquals(new LogTemplate("{a} and {b}").message({ a: 1, b: 2 }), ["", 1, " and ", 2, ""]);
});
